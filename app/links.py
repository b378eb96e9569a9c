"""The addresses the app shows and opens: the node's OpenAI API and its chat page.

Both follow the port the node serves on now (it changes when the node restarts elsewhere), which the
owner of the node answers through ``port``; ``open_url`` opens an address (the desktop's browser, or
a recorder in tests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QUrl


class Links:
    def __init__(self, port: Callable[[], int | None], open_url: Callable[[QUrl], Any]) -> None:
        self._port = port
        self._open_url = open_url

    @property
    def port(self) -> int | None:
        """The port the node serves on now; None while it is not running."""
        return self._port()

    def api_url(self) -> str | None:
        """The OpenAI API base URL apps on this computer use."""
        port = self.port
        return f"http://localhost:{port}/v1" if port else None

    def chat_url(self) -> str | None:
        port = self.port
        return f"http://localhost:{port}/" if port is not None else None

    def open_chat(self) -> None:
        """Open the node's chat page (nothing while the node is not running)."""
        url = self.chat_url()
        if url is not None:
            self._open_url(QUrl(url))
