"""What every route module shares: the node an application serves (no route module imports another)."""

from __future__ import annotations

from aiohttp import web

from ..node import Node

NODE_KEY = web.AppKey("node", Node)
# Request key: callable(prompt_tokens, completion_tokens), set by an entry node's gate (runtime/entry/gate.py)
# and called once by the answering route with what the answer cost.
USAGE_SINK = "closedmesh.usage_sink"


def node_of(request: web.Request) -> Node:
    return request.app[NODE_KEY]
