"""ClosedMesh runtime: the headless node (OpenAI-compatible server on llama.cpp).

Nothing under this package imports Qt; the desktop app is a client of it.
"""

__version__ = "0.1.0"
