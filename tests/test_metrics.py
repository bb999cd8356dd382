"""Edit distance (known values and metric properties) and WER / CER."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asrkit.metrics import ErrorRate, cer, edit_distance, wer

seqs = st.lists(st.sampled_from("abcd"), max_size=12)


@pytest.mark.parametrize("ref,hyp,expected", [
    ("", "", 0),
    ("abc", "", 3),
    ("", "abc", 3),
    ("abc", "abc", 0),
    ("kitten", "sitting", 3),
    ("flaw", "lawn", 2),
    ("intention", "execution", 5),
    ("abc", "acb", 2),
    ("abcdef", "azced", 3),
    ("a", "b", 1),
])
def test_known_distances(ref: str, hyp: str, expected: int) -> None:
    assert edit_distance(ref, hyp) == expected
    assert edit_distance(list(ref), list(hyp)) == expected


def test_word_sequences() -> None:
    assert edit_distance("the cat sat".split(), "the cat sat down".split()) == 1
    assert edit_distance("the cat sat".split(), "a cat".split()) == 2
    assert edit_distance([1, 2, 3], (1, 3)) == 1


@settings(max_examples=200, deadline=None)
@given(seqs, seqs)
def test_symmetry(a: list[str], b: list[str]) -> None:
    assert edit_distance(a, b) == edit_distance(b, a)


@settings(max_examples=200, deadline=None)
@given(seqs, seqs, seqs)
def test_triangle_inequality(a: list[str], b: list[str], c: list[str]) -> None:
    assert edit_distance(a, c) <= edit_distance(a, b) + edit_distance(b, c)


@settings(max_examples=100, deadline=None)
@given(seqs)
def test_distance_to_self_is_zero(a: list[str]) -> None:
    assert edit_distance(a, a) == 0
    assert edit_distance(a, []) == len(a)


@settings(max_examples=200, deadline=None)
@given(seqs, seqs)
def test_bounds(a: list[str], b: list[str]) -> None:
    d = edit_distance(a, b)
    assert abs(len(a) - len(b)) <= d <= max(len(a), len(b))
    assert (d == 0) == (a == b)


@settings(max_examples=100, deadline=None)
@given(seqs, seqs, st.sampled_from("abcd"))
def test_one_edit_changes_distance_by_at_most_one(a: list[str], b: list[str], x: str) -> None:
    assert abs(edit_distance(a, b + [x]) - edit_distance(a, b)) <= 1


def test_wer_examples() -> None:
    assert wer("the cat sat", "the cat sat") == 0.0
    assert wer("the cat sat", "the bat sat") == pytest.approx(1 / 3)
    assert wer("the cat sat on the mat", "the cat sat on mat") == pytest.approx(1 / 6)
    assert wer("a b", "c d e f") == pytest.approx(2.0)  # can exceed 1
    assert wer("  the   cat ", "the cat") == 0.0  # whitespace does not count


def test_cer_examples() -> None:
    assert cer("abc", "abc") == 0.0
    assert cer("kitten", "sitting") == pytest.approx(3 / 6)
    assert cer("a b", "ab") == pytest.approx(1 / 3)  # spaces are characters


def test_error_rate_accumulates_over_utterances() -> None:
    acc = ErrorRate()
    assert acc.rate == 0.0
    assert acc.add("a b c".split(), "a x c".split()) == 1
    assert acc.add("d e".split(), "".split()) == 2
    assert (acc.errors, acc.total) == (3, 5)
    assert acc.rate == pytest.approx(3 / 5)


def test_empty_reference_and_hypothesis() -> None:
    assert wer("", "") == 0.0
    assert cer("", "") == 0.0


def test_insertions_against_empty_reference_are_not_perfect() -> None:
    # regression: the rate used to be 0.0 whenever the reference was empty, hiding every insertion
    assert wer("", "a b") > 0
    assert cer("", "x") > 0
