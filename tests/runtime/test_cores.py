"""Sharing the node's decode threads among its engines that generate at once (runtime/engine/cores.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from runtime.engine.cores import CoreShare, split


@given(st.integers(1, 256), st.integers(1, 64))
def test_split_is_even_gives_everyone_a_thread_and_never_more_than_there_are(threads, n):
    shares = split(threads, n)
    assert len(shares) == n and min(shares) >= 1
    assert max(shares) - min(shares) <= 1
    assert sum(shares) == max(threads, n)  # oversubscribed only when there are more engines than threads
    assert shares == sorted(shares, reverse=True)  # the first ones get the remainder


def test_split_examples():
    assert split(2, 1) == [2] and split(2, 2) == [1, 1] and split(2, 3) == [1, 1, 1]
    assert split(8, 3) == [3, 3, 2] and split(4, 0) == []


def test_busy_engines_share_the_threads_and_a_lone_one_gets_them_back():
    share = CoreShare()
    told: list[tuple[str, int]] = []

    def tell(name):
        return lambda n: told.append((name, n))

    share.busy("a", 4, tell("a"))
    assert told == [] and share.given("a") is None  # alone: the threads it was set up with, nothing to say
    share.busy("b", 4, tell("b"))
    assert told == [("a", 2), ("b", 2)]
    share.busy("b", 4, tell("b"))  # already busy: nothing changes
    share.busy("c", 4, tell("c"))
    assert told[2:] == [("b", 1), ("c", 1)]  # a keeps the remainder (4 = 2 + 1 + 1)
    assert (share.given("a"), share.given("b"), share.given("c")) == (2, 1, 1)
    share.idle("a")
    assert told[4:] == [("b", 2), ("c", 2)]
    share.idle("b")
    assert told[6:] == [("c", 4)]
    share.idle("c")
    share.idle("c")  # idle twice: nothing more
    assert len(told) == 7
    # b was last told 2; busy again alone it gets all 4 back
    share.busy("b", 4, tell("b"))
    assert told[7:] == [("b", 4)]


def test_a_restarted_worker_starts_with_every_thread_and_leaves_the_others_more():
    share = CoreShare()
    told: list[tuple[str, int]] = []
    share.busy("a", 2, lambda n: told.append(("a", n)))
    share.busy("b", 2, lambda n: told.append(("b", n)))
    assert told == [("a", 1), ("b", 1)]
    share.forget("b")  # b's worker crashed: its requests are over, a new worker has 2 threads
    assert told[2:] == [("a", 2)] and share.given("b") is None
    share.busy("b", 2, lambda n: told.append(("b", n)))
    assert told[3:] == [("a", 1), ("b", 1)]


def test_an_engine_set_up_with_fewer_threads_is_never_given_more():
    share = CoreShare()
    told: list[tuple[str, int]] = []
    share.busy("big", 8, lambda n: told.append(("big", n)))
    share.busy("small", 2, lambda n: told.append(("small", n)))
    assert told == [("big", 4)]  # small's share (4) is capped at its own 2: nothing to tell it
