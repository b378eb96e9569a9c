"""What every route module shares: the node an application serves (no route module imports another)."""

from __future__ import annotations

from aiohttp import web

from ..node import Node

NODE_KEY = web.AppKey("node", Node)


def node_of(request: web.Request) -> Node:
    return request.app[NODE_KEY]
