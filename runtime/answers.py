"""Answering a generation request: on this node's engine, or on mesh peers when they serve the model
and this node does not (or is full). Either way the caller gets an ``Answer``: the same events
(runtime/engine/events.py) whoever produces them, so the API formats both with the same code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from .engine.events import Failed, GenEvent, Started
from .errors import NodeError, invalid
from .generation import Answer, fingerprint
from .mesh.directory import Peer
from .mesh.requester import MeshUnavailable
from .mesh.router import route, with_feature
from .node import Node
from .validation import GenerationParams, parse_prompts

MeshGenerate = Callable[[str, dict, str, int | None, list[Peer]], AsyncIterator[GenEvent]]


class MeshAnswer(Answer):
    """An answer from the mesh: every choice runs on a peer, failing over to the next one when its peer
    is lost (runtime/mesh/requester.py); the client sees one unbroken answer or an explicit error."""

    def __init__(self, generate: MeshGenerate, kind: str, body: dict, gp: GenerationParams, peers: list[Peer]) -> None:
        super().__init__(gp.n)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(generate, i, kind, body, gp, peers)) for i in range(gp.n)]

    async def _run(
        self, generate: MeshGenerate, i: int, kind: str, body: dict, gp: GenerationParams, peers: list[Peer]
    ) -> None:
        b = dict(body)
        if i and gp.sampling.seed is not None:
            b["seed"] = (gp.sampling.seed + i) & 0xFFFFFFFF
        try:
            async for ev in generate(kind, b, gp.model, gp.max_tokens, list(peers) if i == 0 else []):
                if isinstance(ev, Started) and ev.fingerprint is None:  # a peer speaking protocol 2
                    ev = replace(ev, fingerprint=fingerprint("mesh", gp.model))
                self.put(i, ev)
        except NodeError as e:
            self.put(i, Failed.of(e))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never a silent end
            self.put(i, Failed.of(MeshUnavailable(f"The mesh request failed: {e}", True)))

    def _stop(self) -> None:
        for t in self._tasks:
            t.cancel()  # a client that went away cancels the work on the serving peers


# What each feature a request can need is, in words for an error message (mesh/protocol.py FEATURES).
FEATURE_NAMES = {"tools": "tool calling", "logprobs": "log probabilities"}


def needed_features(gp: GenerationParams) -> list[str]:
    """The announced features a peer needs to answer this request: tool calls are rendered and parsed by
    the serving peer, and log probabilities computed by its engine."""
    out = []
    if gp.tools is not None and gp.tools.active:
        out.append("tools")
    if gp.sampling.logprobs is not None:
        out.append("logprobs")
    return out


def peers_for(node: Node, gp: GenerationParams) -> list[Peer] | None:
    """None: run here. Otherwise the peers to try, best first (runtime/mesh/router.py ``route``). A request
    that needs a feature goes only to peers announcing it; when only peers without it serve the model,
    it is a 400 naming the feature (never an answer without it)."""
    mesh = node.mesh
    if not mesh.connected:
        return None
    peers = mesh.candidates(gp.model, gp.max_tokens)
    m = node.find(gp.model)
    for feature in needed_features(gp):
        able = with_feature(peers, feature)
        if peers and not able and m is None:
            raise invalid(
                f"The peers serving '{gp.model}' do not support '{feature}' ({FEATURE_NAMES[feature]}), and this "
                f"node does not serve the model itself. Send the request without '{feature}', or to a node that "
                f"supports it.",
                feature,
                "mesh_unsupported",
            )
        peers = able
    return route(
        gp.model,
        peers,
        mesh.candidates(gp.model, None) if not peers else [],
        known_here=m is not None,
        served_here=m is not None and m in node.manager.routable(),
        here=m.engine.counts() if m is not None and m.engine is not None else None,
        peer_has_room=lambda p: mesh.peer_has_room(p, gp.model),
    )


async def answer(node: Node, kind: str, body: dict, gp: GenerationParams) -> Answer:
    """Start answering a request (``kind`` "chat" or "completion", its body and parsed parameters). Raises
    NodeError for a request that cannot start; later failures arrive as ``Failed`` events."""
    peers = peers_for(node, gp)
    if peers:
        if kind == "completion" and (len(parse_prompts(body)) > 1 or body.get("echo")):
            raise invalid(
                f"'{gp.model}' is served by mesh peers, which take one prompt per request and no "
                f"echo; send the prompts as separate requests.",
                "prompt",
                "mesh_unsupported",
            )
        return MeshAnswer(node.mesh.generate, kind, body, gp, peers)
    prep = await node.generation.prepare(kind, body, gp)
    return node.generation.start(prep)
