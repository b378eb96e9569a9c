"""The throughput catalog and the open status document (runtime/catalog.py) and the end-to-end clock and
per-model windows behind them (runtime/stats.py). Pure functions: called directly."""

from __future__ import annotations

import json
import math

import pytest

from runtime.catalog import build_catalog, mesh_figures, model_extension, open_status_document, public_maps
from runtime.stats import AnswerClock, ModelStatsBook, RequestSample, RollingStats


def summary(*samples: tuple[float | None, float]) -> dict:
    s = RollingStats()
    for tps, ttft in samples:
        s.add(RequestSample(tps, ttft))
    return s.summary()


# -- stats ---------------------------------------------------------------------------------------------


def test_window_drops_samples_older_than_its_age():
    s = RollingStats(window_seconds=60)
    s.add(RequestSample(10.0, 100.0, at=0.0))
    s.add(RequestSample(30.0, 300.0, at=50.0))
    assert s.summary(now=55.0)["samples"] == 2
    got = s.summary(now=100.0)  # the first is 100 s old
    assert got["samples"] == 1 and got["tokens_per_second_p50"] == 30.0 and got["total_requests"] == 2
    assert s.summary(now=200.0)["tokens_per_second_p50"] is None


def test_clock_times_first_token_and_rate_after_it():
    c = AnswerClock(started=100.0)
    c.token(now=100.25)
    c.token(now=100.5)  # only the first counts
    s = c.sample(completion_tokens=11, now=101.25)
    assert s is not None
    assert s.ttft_ms == pytest.approx(250.0)
    assert s.tokens_per_second == pytest.approx(10.0)  # 10 tokens after the first in 1 s


def test_clock_without_tokens_records_nothing_and_one_token_has_no_rate():
    assert AnswerClock(started=0.0).sample(5, now=1.0) is None  # no token ever reached this node
    c = AnswerClock(started=0.0)
    c.token(now=0.1)
    assert c.sample(0, now=0.2) is None
    one = c.sample(1, now=0.2)
    assert one is not None and one.tokens_per_second is None and one.ttft_ms == pytest.approx(100.0)


def test_clock_rate_over_several_choices_counts_each_first_token():
    c = AnswerClock(started=0.0)
    c.token(now=1.0)
    s = c.sample(completion_tokens=22, choices=2, now=3.0)
    assert s is not None and s.tokens_per_second == pytest.approx(10.0)


def test_book_keeps_a_window_per_model_and_is_bounded():
    book = ModelStatsBook(max_models=2)
    book.record("a", RequestSample(10.0, 1.0))
    book.record("a", None)  # an answer without usage: nothing
    book.record("b", RequestSample(20.0, 2.0))
    assert set(book.summaries()) == {"a", "b"} and book.summaries()["a"]["samples"] == 1
    book.record("a", RequestSample(30.0, 3.0))  # a is now the most recent
    book.record("c", RequestSample(40.0, 4.0))
    assert set(book.summaries()) == {"a", "c"}
    assert book.summaries()["a"]["tokens_per_second_p50"] == 20.0


# -- the mesh figure -----------------------------------------------------------------------------------


def peer(tps=None, ttft=None, samples=None, ctx=2048, free=1, window=3600.0) -> dict:
    return {"id": "m", "tokens_per_second_p50": tps, "ttft_ms_p50": ttft, "samples": samples,
            "context_length": ctx, "free_slots": free, "window_seconds": window}


def test_mesh_figure_is_the_median_of_peers_and_the_best_ttft():
    f = mesh_figures([peer(10, 300, 5), peer(100, 50, 7, ctx=4096), peer(40, 90, 1), peer(None, None, 0)])
    assert f["peers"] == 4 and f["peers_measured"] == 3
    assert f["tps_p50_median"] == 40.0  # not the highest (100): one fast peer does not speak for the mesh
    assert f["ttft_ms_p50_best"] == 50.0
    assert f["samples"] == 13 and f["window_seconds"] == 3600.0
    assert f["context_length"] == 2048 and f["free_slots"] == 4
    assert mesh_figures([peer(10, 1), peer(20, 2)])["tps_p50_median"] == 15.0  # even count: the middle two


@pytest.mark.parametrize("bad", ["x", math.inf, -math.inf, math.nan, -1, 1e300, True, [1], {"a": 1}, None])
def test_hostile_peer_figures_count_as_not_announced(bad):
    f = mesh_figures([peer(20, 100, 3), {"tokens_per_second_p50": bad, "ttft_ms_p50": bad, "samples": bad,
                                         "context_length": bad, "free_slots": bad, "window_seconds": bad}])
    assert f["peers"] == 2 and f["peers_measured"] == 1
    assert f["tps_p50_median"] == 20.0 and f["ttft_ms_p50_best"] == 100.0
    assert f["samples"] == 3 and f["context_length"] == 2048 and f["free_slots"] == 1
    json.dumps(f, allow_nan=False)  # always serialisable as strict JSON


# -- the catalog ---------------------------------------------------------------------------------------


def test_catalog_merges_local_measured_and_mesh_by_model():
    cat = build_catalog(
        local={"SmolLM2": 2048, "OnDisk": None},
        native={"SmolLM2": summary((100.0, 20.0), (110.0, 30.0), (None, 40.0))},
        measured={"smollm2": summary((90.0, 25.0)), "Qwen3-8B": summary((12.0, 900.0))},
        mesh={"SMOLLM2": [peer(50, 60, 4, ctx=8192)], "Qwen3-8B": [peer(10, 800, 2), peer(14, 700, 3)]},
    )
    assert cat["window"] == {"max_samples": 200, "max_age_seconds": 3600.0}
    assert list(cat["models"]) == ["OnDisk", "Qwen3-8B", "SmolLM2"]  # this node's spelling wins
    smol = cat["models"]["SmolLM2"]
    assert smol["served_here"] and smol["peers"] == 1 and smol["context_length"] == 2048
    assert smol["native"] == {"tps_p50": 105.0, "ttft_ms_p50": 30.0, "samples": 3}
    assert smol["measured"] == {"tps_p50": 90.0, "ttft_ms_p50": 25.0, "samples": 1}
    assert smol["mesh"]["tps_p50_median"] == 50.0
    qwen = cat["models"]["Qwen3-8B"]
    assert not qwen["served_here"] and qwen["native"] is None and qwen["peers"] == 2
    assert qwen["mesh"]["tps_p50_median"] == 12.0 and qwen["mesh"]["ttft_ms_p50_best"] == 700.0
    assert qwen["mesh"]["samples"] == 5
    on_disk = cat["models"]["OnDisk"]
    assert on_disk == {"served_here": True, "peers": 0, "context_length": None, "measured": None, "native": None,
                       "mesh": None}

    maps = public_maps(cat)
    assert maps == {
        "measured_tps_p50_by_model": {"Qwen3-8B": 12.0, "SmolLM2": 90.0},
        "measured_ttft_ms_p50_by_model": {"Qwen3-8B": 900.0, "SmolLM2": 25.0},
        "native_tps_p50_by_model": {"SmolLM2": 105.0},
        "native_ttft_ms_p50_by_model": {"SmolLM2": 30.0},
    }  # a model without a figure is absent, never 0

    ext = model_extension(qwen)
    assert ext["mesh_tps_p50_median"] == 12.0 and ext["mesh_ttft_ms_p50_best"] == 700.0
    assert ext["measured_tps_p50"] == 12.0 and ext["measured_samples"] == 1
    assert ext["native_tps_p50"] is None and ext["native_samples"] == 0
    assert model_extension({})["mesh_peers_measured"] == 0


def test_open_status_holds_only_ids_and_numbers():
    cat = build_catalog(local={}, native={}, measured={"Qwen3-8B": summary((12.0, 900.0))},
                        mesh={"Qwen3-8B": [peer(10, 800, 2), peer(14, 700, 3)], "Phi-4": [peer()]})
    doc = open_status_document(cat, ready=True, mesh_connected=True)
    assert doc["entry"] is True and doc["mesh"] == {"connected": True, "models": 2}
    assert doc["measured_tps_p50_by_model"] == {"Qwen3-8B": 12.0} and doc["native_tps_p50_by_model"] == {}
    q = doc["catalog"]["models"]["Qwen3-8B"]
    assert q["peers"] == 2 and q["free_slots"] == 2 and q["context_length"] == 2048
    assert q["mesh"]["tps_p50_median"] == 12.0 and q["measured"]["samples"] == 1

    def leaves(x):
        if isinstance(x, dict):
            for k, v in x.items():
                yield k
                yield from leaves(v)
        elif isinstance(x, list):
            for v in x:
                yield from leaves(v)
        else:
            yield x

    strings = {v for v in leaves(doc) if isinstance(v, str)}
    allowed_keys = {"object", "version", "entry", "ready", "mesh", "connected", "models", "catalog", "window",
                    "max_samples", "max_age_seconds", "peers", "context_length", "free_slots", "measured", "native",
                    "tps_p50", "ttft_ms_p50", "samples", "peers_measured", "tps_p50_median", "ttft_ms_p50_best",
                    "window_seconds", "measured_tps_p50_by_model", "measured_ttft_ms_p50_by_model",
                    "native_tps_p50_by_model", "native_ttft_ms_p50_by_model"}
    from runtime import __version__

    assert strings <= allowed_keys | {"Qwen3-8B", "Phi-4", "closedmesh.status", __version__}, strings


# -- what peers announce for the catalog: checked on arrival ---------------------------------------------


def _announcement(**model) -> dict:
    m = {"id": "m", "state": "ready", "context_length": 4096, "slots": 4, "free_slots": 2, "queued": 0,
         "tokens_per_second_p50": 31.5, "ttft_ms_p50": 180.2, "samples": 12, "window_seconds": 3600.0}
    m.update(model)
    return {"name": "n", "ttl": 15, "models": [m]}


def test_announced_sample_counts_and_windows_are_kept():
    from runtime.mesh import protocol as P
    from runtime.mesh.identity import Identity

    me = Identity.generate()
    got = P.open_announcement(me.public, P.sign_announcement(me, _announcement()))["models"][0]
    assert got["samples"] == 12 and got["window_seconds"] == 3600.0
    older = P.open_announcement(me.public, P.sign_announcement(me, _announcement(samples=None, window_seconds=None)))
    assert older["models"][0]["samples"] is None  # a peer of an earlier version: no count, still a peer


@pytest.mark.parametrize("field, bad", [("samples", "x"), ("samples", -1), ("samples", 10**7), ("samples", True),
                                        ("samples", 1.5), ("window_seconds", math.inf), ("window_seconds", "1h"),
                                        ("window_seconds", -5), ("window_seconds", 1e12)])
def test_hostile_announced_counts_are_refused(field, bad):
    from runtime.mesh import protocol as P
    from runtime.mesh.identity import Identity

    me = Identity.generate()
    with pytest.raises(P.BadAnnouncement, match=field):
        P.open_announcement(me.public, P.sign_announcement(me, _announcement(**{field: bad})))
