"""HTTP API: the OpenAI surface (/v1), node status (/health, /api) and their security."""
