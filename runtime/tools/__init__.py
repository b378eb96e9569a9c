"""Tool calling: the request's tools (spec), the model family's tool format (formats), the grammars that
hold calls to their schemas (grammar) and the prompt that offers the tools (prompt). Pure logic shared by
/v1/chat/completions and /v1/responses, locally and on a mesh peer that serves the model."""
