"""StopMatcher and IncrementalDecoder (runtime/engine/text.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.engine.text import IncrementalDecoder, StopMatcher

PROPS = settings(max_examples=400, deadline=None, database=None)

# A small alphabet makes stop strings occur in the text and overlap each other; the text is also built
# from the stop strings themselves and their fragments so that near-misses and hits are common.
ALPHABET = "ab<>/é🙂"
stop_lists = st.lists(st.text(alphabet=ALPHABET, max_size=5), max_size=4)


def run(stops: list[str], pieces: list[str]) -> tuple[str, bool, list[str]]:
    m = StopMatcher(stops)
    emitted = [m.feed(p) for p in pieces]
    emitted.append(m.flush())
    return "".join(emitted), m.stopped, emitted


def split(draw, text: str) -> list[str]:
    """A split of ``text`` into consecutive pieces (empty pieces included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=8)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


@st.composite
def cases(draw):
    """(stops, text, pieces) where the text is made of stop strings, fragments of them and noise."""
    stops = draw(stop_lists)
    frags = [f for s in stops for i in range(len(s) + 1) for f in (s[:i], s[i:])]
    atoms = st.one_of(st.text(alphabet=ALPHABET, max_size=3), *([st.sampled_from(frags)] if frags else []))
    text = "".join(draw(st.lists(atoms, max_size=8)))
    return stops, text, split(draw, text)


def earliest_cut(text: str, stops: list[str]) -> str | None:
    """``text`` cut before the stop occurrence that ends first (ties: the one starting first), or None."""
    hits = [(i + len(s), i) for s in stops if s for i in [text.find(s)] if i >= 0]
    return text[: min(hits)[1]] if hits else None


# -- StopMatcher: properties ------------------------------------------------------------------------


@PROPS
@given(cases())
def test_stream_equals_text_cut_before_first_completed_stop(case):
    """Any stop list, nested and overlapping ones included, any split into pieces: the output is the
    whole text cut before the stop occurrence that ends first — independent of the split."""
    stops, text, pieces = case
    out, stopped, _ = run(stops, pieces)
    expected = earliest_cut(text, stops)
    if expected is None:
        assert (out, stopped) == (text, False)
    else:
        assert (out, stopped) == (expected, True)
        assert any(s and text[len(out):].startswith(s) for s in stops)
    assert run(stops, [text])[0] == out  # same as fed in one piece



@PROPS
@given(cases())
def test_nothing_is_emitted_after_a_stop(case):
    stops, _, pieces = case
    m = StopMatcher(stops)
    for p in pieces:
        m.feed(p)
        if m.stopped:
            assert m.feed(p + "more") == ""
            assert m.feed("x") == ""
            assert m.flush() == ""
            break


@PROPS
@given(cases())
def test_single_piece_is_cut_before_earliest_stop(case):
    stops, text, _ = case
    out, stopped, _ = run(stops, [text])
    expected = earliest_cut(text, stops)
    assert out == (text if expected is None else expected)
    assert stopped == (expected is not None)


# -- StopMatcher: examples --------------------------------------------------------------------------


def test_stop_spanning_several_pieces_is_held_back_then_dropped():
    m = StopMatcher(["</s>"])
    assert m.feed("Hello <") == "Hello "
    assert m.feed("/") == ""
    assert m.feed("s>tail") == ""
    assert m.stopped
    assert m.flush() == ""


def test_held_back_prefix_is_released_when_it_turns_out_not_to_be_a_stop():
    m = StopMatcher(["</s>"])
    assert m.feed("a </") == "a "
    assert m.feed("b>") == "</b>"
    assert not m.stopped


def test_flush_releases_held_back_text_at_end_of_generation():
    m = StopMatcher(["STOP"])
    assert m.feed("done ST") == "done "
    assert m.flush() == "ST"
    assert not m.stopped
    assert m.flush() == ""


def test_text_before_stop_in_same_piece_is_emitted():
    m = StopMatcher(["\n\n"])
    assert m.feed("line one\n\nline two") == "line one"
    assert m.stopped


def test_stop_at_the_very_start_emits_nothing():
    out, stopped, _ = run(["###"], ["###", "rest"])
    assert (out, stopped) == ("", True)


def test_no_stops_passes_text_straight_through():
    m = StopMatcher([])
    assert m.feed("abc<") == "abc<"
    assert m.flush() == ""
    assert not m.stopped


def test_empty_stop_strings_are_ignored():
    m = StopMatcher(["", "x"])
    assert m.stops == ["x"]
    assert m.feed("ab") == "ab"
    m2 = StopMatcher([""])
    assert m2.feed("anything") == "anything"
    assert not m2.stopped


def test_earliest_of_several_stops_wins():
    out, stopped, _ = run(["END", "!"], ["Hi! and END"])
    assert (out, stopped) == ("Hi", True)


def test_hold_back_keeps_longest_partial_match_only():
    m = StopMatcher(["abc", "bd"])
    # "xab" ends with "ab" (prefix of "abc") and "b" (prefix of "bd"): hold the longer one.
    assert m.feed("xab") == "x"
    assert m.feed("d") == "a"  # "abd" contains "bd" at 1
    assert m.stopped


def test_nested_stops_do_not_depend_on_the_split():
    # 'b' lies inside 'abc' and completes first, whether the text arrives whole or as 'ab' + 'c'.
    assert run(["abc", "b"], ["abc"])[0] == "a"
    assert run(["abc", "b"], ["ab", "c"])[0] == "a"
    assert run(["abc", "b"], ["a", "b", "c"])[0] == "a"


# -- IncrementalDecoder -----------------------------------------------------------------------------


@st.composite
def split_bytes(draw):
    text = draw(st.text(max_size=40))
    data = text.encode("utf-8")
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return text, [data[a:b] for a, b in zip(bounds, bounds[1:])]


@PROPS
@given(split_bytes())
def test_decoder_reassembles_any_byte_split(split):
    text, chunks = split
    d = IncrementalDecoder()
    out = "".join(d.feed(c) for c in chunks) + d.flush()
    assert out == text


def test_multibyte_character_split_across_chunks():
    d = IncrementalDecoder()
    emoji = "🙂".encode()  # 4 bytes
    assert len(emoji) == 4
    assert d.feed(b"hi " + emoji[:1]) == "hi "
    assert d.feed(emoji[1:3]) == ""
    assert d.feed(emoji[3:] + "é".encode()[:1]) == "🙂"
    assert d.feed("é".encode()[1:]) == "é"
    assert d.flush() == ""


def test_each_byte_alone_of_cjk_text():
    text = "日本語のテキスト"
    d = IncrementalDecoder()
    pieces = [d.feed(bytes([b])) for b in text.encode()]
    assert "".join(pieces) + d.flush() == text
    assert all(p == "" or len(p) == 1 for p in pieces)


def test_truncated_sequence_at_end_becomes_replacement_char_on_flush():
    d = IncrementalDecoder()
    assert d.feed("a€".encode()[:-1]) == "a"
    assert d.flush() == "\ufffd"


def test_invalid_bytes_are_replaced_not_raised():
    d = IncrementalDecoder()
    assert d.feed(b"ok\xffok") == "ok\ufffdok"
    assert d.flush() == ""
