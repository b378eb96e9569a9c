"""The throughput catalog of a real node with the real model, through the official `openai` SDK: every
answer that ended with its usage adds one end-to-end ("measured") sample and one engine ("native")
sample; refused, failed and abandoned answers add none (docs/entry.md, "Status catalog")."""

from __future__ import annotations

import httpx
import openai
import pytest

from runtime.models.embedded import FILENAME
from tests.conftest import seed_home, start_node, wait_for

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"
EOS_BAN = {"0": -100, "2": -100, "4": -100}  # SmolLM2's end tokens: the answer cannot end by itself


@pytest.fixture(scope="module")
def cnode(tmp_path_factory, model_path):
    """A node of its own: sample counts start from zero."""
    home = tmp_path_factory.mktemp("catalog-node")
    seed_home(home, model_path)
    n = start_node(home, "--model", str(home / "data" / "models" / FILENAME), "--slots", "2",
                   "--ctx-per-slot", "1024", "--keepalive", "0.5")
    yield n
    assert n.stop() == 0


def status(node) -> dict:
    return httpx.get(node.base_url + "/api/status", timeout=30).json()


def figures(node) -> tuple[dict | None, dict | None]:
    m = status(node)["catalog"]["models"][MODEL]
    return m["measured"], m["native"]


def counts(node) -> tuple[int, int]:
    measured, native = figures(node)
    return (measured or {}).get("samples", 0), (native or {}).get("samples", 0)


def test_answers_with_usage_feed_the_catalog_and_nothing_else_does(cnode):
    client = openai.OpenAI(base_url=cnode.v1, api_key="unused", timeout=300, max_retries=0)
    st = status(cnode)
    assert st["catalog"]["window"] == {"max_samples": 200, "max_age_seconds": 3600}
    assert st["catalog"]["models"][MODEL] == {"served_here": True, "peers": 0, "context_length": 1024,
                                              "measured": None, "native": None, "mesh": None}
    for name in ("measured_tps_p50_by_model", "measured_ttft_ms_p50_by_model", "native_tps_p50_by_model",
                 "native_ttft_ms_p50_by_model"):
        assert st[name] == {}, name  # not measured yet: absent, not 0

    # refused before any work: nothing recorded
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=-1)
    # abandoned in the middle of a stream: nothing recorded
    with httpx.stream("POST", cnode.v1 + "/chat/completions", timeout=120,
                      json={"model": MODEL, "messages": [{"role": "user", "content": "Count to 500."}],
                            "max_tokens": 400, "stream": True, "logit_bias": EOS_BAN}) as r:
        for line in r.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # the first real token: hang up
    wait_for(lambda: status(cnode)["requests"]["in_flight"] == 0, 60, what="the abandoned stream to be cancelled")
    assert counts(cnode) == (0, 0)

    # three answers that end with usage: plain, streamed with the usage chunk, streamed without it
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                       max_tokens=24, temperature=0, logit_bias=EOS_BAN)
    assert r.usage.completion_tokens == 24
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to five."}], max_tokens=24, temperature=0,
        logit_bias=EOS_BAN, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 24
    assert list(client.completions.create(model=MODEL, prompt="The sky is", max_tokens=24, stream=True,
                                          logit_bias=EOS_BAN))
    assert counts(cnode) == (3, 3)

    st = status(cnode)
    measured, native = figures(cnode)
    for fig in (measured, native):
        assert 0 < fig["ttft_ms_p50"] < 60_000 and 0 < fig["tps_p50"] < 10_000
    # end to end includes the HTTP hop and the queue: never faster to the first token than the engine
    assert measured["ttft_ms_p50"] >= native["ttft_ms_p50"] * 0.9
    assert st["measured_tps_p50_by_model"] == {MODEL: measured["tps_p50"]}
    assert st["measured_ttft_ms_p50_by_model"] == {MODEL: measured["ttft_ms_p50"]}
    assert st["native_tps_p50_by_model"] == {MODEL: native["tps_p50"]}
    assert st["native_ttft_ms_p50_by_model"] == {MODEL: native["ttft_ms_p50"]}
    assert st["throughput"][MODEL]["samples"] == 3  # the older per-engine summary is still there

    # /v1/models carries the same figures, each named for its statistic
    ext = client.models.retrieve(MODEL).model_extra["closedmesh"]
    assert ext["served_by"] == "local" and ext["peers"] == 0 and ext["context_length"] == 1024
    assert ext["measured_tps_p50"] == measured["tps_p50"] and ext["measured_samples"] == 3
    assert ext["native_ttft_ms_p50"] == native["ttft_ms_p50"] and ext["native_samples"] == 3
    assert ext["mesh_tps_p50_median"] is None and ext["mesh_peers_measured"] == 0
    print(f"\nmeasured p50: {measured['tps_p50']} tok/s, TTFT {measured['ttft_ms_p50']} ms; "
          f"native p50: {native['tps_p50']} tok/s, TTFT {native['ttft_ms_p50']} ms")
