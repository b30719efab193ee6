"""Incremental detokenization and stop strings, including stops that span tokens."""

from __future__ import annotations

import pytest

from rbee.worker.text import Detokenizer, StopMatcher
from tests.worker.fakes import FakeTokenizer


def test_detokenizer_never_cuts_a_utf8_character() -> None:
    detok = Detokenizer(FakeTokenizer())
    pieces = [detok.push(t) for t in [0, 26, 27, 1]]
    assert pieces == ["a", "", "é", "b"]
    assert detok.flush() == ""


def test_detokenizer_flush_gives_a_cut_character_as_replacement() -> None:
    detok = Detokenizer(FakeTokenizer())
    assert detok.push(26) == ""
    assert detok.flush() == "\ufffd"


def feed_all(stops: list[str], pieces: list[str]) -> tuple[str, bool, list[str]]:
    matcher = StopMatcher(stops)
    emitted = [matcher.feed(p) for p in pieces]
    return "".join(emitted) + matcher.flush(), matcher.stopped, emitted


def test_stop_string_inside_one_piece() -> None:
    assert feed_all(["END"], ["abcENDdef"])[:2] == ("abc", True)


def test_stop_string_spanning_pieces_is_never_emitted() -> None:
    text, stopped, emitted = feed_all(["END"], ["ab", "cE", "N", "Dxyz"])
    assert (text, stopped) == ("abc", True)
    assert emitted == ["ab", "c", "", ""]


def test_held_text_that_is_not_a_stop_is_released() -> None:
    text, stopped, emitted = feed_all(["END"], ["xE", "N", "o more"])
    assert (text, stopped) == ("xENo more", False)
    assert emitted == ["x", "", "ENo more"]


def test_held_text_is_released_at_the_end() -> None:
    assert feed_all(["END"], ["abEN"]) == ("abEN", False, ["ab"])


def test_earliest_of_several_stops_wins() -> None:
    assert feed_all(["zz", "b"], ["azzb"])[:2] == ("a", True)
    assert feed_all(["\n\n", "Question:"], ["A\n", "\nQuestion:"])[:2] == ("A", True)


@pytest.mark.parametrize("split", range(1, 9))
def test_any_split_gives_the_same_text(split: int) -> None:
    full = "hello STOP world"
    assert feed_all(["STOP"], [full[:split], full[split:]])[:2] == ("hello ", True)
