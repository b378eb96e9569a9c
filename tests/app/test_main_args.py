"""closedmesh-app's command line: the options of `closedmesh serve` reach the node, plus --minimized."""

from __future__ import annotations

import argparse
from dataclasses import fields

from app.main import parse_args
from runtime.cli import build_parser
from runtime.config import ServeSettings


def test_serve_options_reach_the_node():
    own, s, port = parse_args(["--minimized", "--port", "9444", "--slots", "3", "--model", "a.gguf", "--model", "b",
                               "--ctx-per-slot", "1024", "--memory-budget", "2", "--keepalive", "0.5",
                               "--allow-host", "box.lan", "--allow-origin", "http://x:3000", "--kv-type", "q8_0"])
    assert own.minimized and port == 9444
    assert (s.slots, s.models, s.ctx_per_slot, s.kv_type) == (3, ["a.gguf", "b"], 1024, "q8_0")
    assert s.memory_budget_bytes == 2 * 2**30 and s.keepalive_seconds == 0.5
    assert s.allowed_hosts == ("box.lan",) and s.allowed_origins == ("http://x:3000",)


def test_defaults_are_the_nodes():
    own, s, port = parse_args([])
    assert not own.minimized and port is None  # the port then comes from the app's settings
    assert s == ServeSettings()


def test_every_serve_option_has_a_home_in_the_node_settings():
    """A new `closedmesh serve` option reaches the app's node too (same name as its ServeSettings field,
    or listed in app.main's renamed options)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    dests = {a.dest for a in sub.choices["serve"]._actions} - {"help"}
    known = {f.name for f in fields(ServeSettings)} | {"model", "keepalive", "memory_budget", "allow_host",
                                                        "allow_origin"}
    assert dests <= known, f"options the app does not pass to the node: {sorted(dests - known)}"
