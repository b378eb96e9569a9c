"""The llama.cpp engine: model handle, sampling, templates, grammars and the batching scheduler."""
