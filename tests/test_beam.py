"""CTC beam search with an n-gram LM on hand-built emissions and a tiny hand-written ARPA (pyctcdecode's test
idea: the LM turns "bunny bunny" into "bugs bunny" at alpha > 0 and not at alpha = 0)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_kenlm

from asrkit.beam_search import PrefixBeamSearch
from asrkit.data.tokenizer import CharTokenizer
from asrkit.decoding import (
    CTCBeamDecoder,
    DecoderPool,
    collapse_blank_frames,
    ctc_beam_search,
    ctc_greedy,
)
from asrkit.errors import AsrkitError
from asrkit.records import Emissions
from asrkit.search import SearchOptions

CHARS = [" ", "b", "g", "n", "s", "u", "y"]
TOKENIZER = CharTokenizer(CHARS)
VOCAB = TOKENIZER.vocab  # blank first
FRAME_SHIFT = 0.02
HAVE_FLASHLIGHT = __import__("asrkit.lm").lm.flashlight_available()
needs_flashlight = pytest.mark.skipif(not HAVE_FLASHLIGHT, reason="flashlight-text not installed")
needs_pyctcdecode = pytest.mark.skipif(__import__("importlib").util.find_spec("pyctcdecode") is None,
                                       reason="pyctcdecode not installed")
BACKENDS = ["asrkit", pytest.param("pyctcdecode", marks=needs_pyctcdecode),
            pytest.param("flashlight", marks=needs_flashlight)]
# With an n-gram LM: the asrkit and pyctcdecode backends read it through the kenlm module, flashlight on its own.
LM_BACKENDS = [pytest.param("asrkit", marks=needs_kenlm),
               pytest.param("pyctcdecode", marks=[needs_pyctcdecode, needs_kenlm]),
               pytest.param("flashlight", marks=needs_flashlight)]

# log10 probabilities: "bugs bunny" is far likelier than "bunny bunny"
ARPA = """
\\data\\
ngram 1=5
ngram 2=5

\\1-grams:
-99\t<s>\t-0.3
-1.0\t</s>
-2.0\t<unk>
-0.7\tbugs\t-0.3
-0.7\tbunny\t-0.3

\\2-grams:
-0.1\t<s> bugs
-1.0\t<s> bunny
-0.1\tbugs bunny
-2.0\tbunny bunny
-0.2\tbunny </s>

\\end\\
"""


def frames(*rows: dict[str, float]) -> np.ndarray:
    """(T, V) log-probs from {token: probability} rows; the rest of each row's mass spread over the others."""
    out = np.zeros((len(rows), len(VOCAB)), dtype=np.float64)
    for t, row in enumerate(rows):
        rest = (1.0 - sum(row.values())) / (len(VOCAB) - len(row))
        for v, tok in enumerate(VOCAB):
            key = "" if v == 0 else tok
            out[t, v] = row.get(key, rest)
    return np.log(out).astype(np.float32)


def bunny_emissions() -> np.ndarray:
    """Acoustically "bunny bunny" (b u n _ n y) wins narrowly over "bugs bunny" (b u g s _ _)."""
    sure = 0.97
    return frames(
        {"b": sure}, {"u": sure},
        {"n": 0.52, "g": 0.46},
        {"": 0.50, "s": 0.48},
        {"n": 0.50, "": 0.48},
        {"y": 0.50, "": 0.48},
        {" ": sure},
        {"b": sure}, {"u": sure}, {"n": sure}, {"": sure}, {"n": sure}, {"y": sure}, {"": sure},
    )


@pytest.fixture()
def arpa(tmp_path: Path) -> Path:
    path = tmp_path / "bunny.arpa"
    path.write_text(ARPA.lstrip(), encoding="utf-8")
    return path


def options(lm: Path | str = "", **kw: object) -> SearchOptions:
    return replace(SearchOptions(lm=str(lm)), **kw)  # type: ignore[arg-type]


def decode(opts: SearchOptions, log_probs: np.ndarray | None = None) -> list:
    lp = bunny_emissions() if log_probs is None else log_probs
    return CTCBeamDecoder(VOCAB, opts).decode(lp, FRAME_SHIFT)


def test_greedy_reads_bunny_bunny() -> None:
    lp = torch.from_numpy(bunny_emissions())[None]
    hyp = ctc_greedy(Emissions(lp, torch.tensor([lp.shape[1]]), FRAME_SHIFT), TOKENIZER)[0]
    assert hyp.text == "bunny bunny"


@pytest.mark.parametrize("backend", LM_BACKENDS)
def test_lm_flips_the_answer_only_when_alpha_is_positive(arpa: Path, backend: str) -> None:
    assert decode(options(arpa, alpha=0.0, beta=0.0, backend=backend))[0].text == "bunny bunny"
    assert decode(options(arpa, alpha=0.5, beta=0.0, backend=backend))[0].text == "bugs bunny"
    assert decode(options(arpa, alpha=1.0, beta=1.0, backend=backend))[0].text == "bugs bunny"


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_lm_beam_search_agrees_with_greedy(backend: str) -> None:
    assert decode(options(backend=backend))[0].text == "bunny bunny"


@pytest.mark.parametrize("backend", BACKENDS)
def test_hotword_boosts_a_word(backend: str) -> None:
    plain = decode(options(backend=backend))[0].text
    boosted = decode(options(backend=backend, hotwords=("bugs",), hotword_weight=5.0))[0].text
    assert (plain, boosted) == ("bunny bunny", "bugs bunny")


@needs_kenlm
def test_nbest_lists_distinct_hypotheses_best_first(arpa: Path) -> None:
    hyps = decode(options(arpa, alpha=0.5, beta=0.0, nbest=3, beam_size=8))  # the asrkit backend: see below
    texts = [h.text for h in hyps]
    assert texts[0] == "bugs bunny" and "bunny bunny" in texts
    assert len(set(texts)) == len(texts) and 2 <= len(texts) <= 3
    scores = [h.score for h in hyps]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("backend", LM_BACKENDS)
def test_word_timings_are_monotonic_and_inside_the_audio(arpa: Path, backend: str) -> None:
    lp = bunny_emissions()
    hyp = decode(options(arpa, alpha=0.5, backend=backend), lp)[0]
    assert [w.word for w in hyp.words] == hyp.text.split()
    duration = lp.shape[0] * FRAME_SHIFT
    last_end = 0.0
    for w in hyp.words:
        assert last_end <= w.start < w.end <= duration + 1e-9
        last_end = w.end
    assert hyp.words[0].start == 0.0  # "b" in frame 0
    assert math.isclose(hyp.words[1].start, 7 * FRAME_SHIFT)  # the second word's "b" is frame 7
    assert math.isclose(hyp.words[1].end, 13 * FRAME_SHIFT)  # its "y" is frame 12


def test_blank_frame_collapse_is_exact() -> None:
    """Dropping the 2nd.. frames of blank-only runs changes neither the result nor (with the offset) its score."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (60, len(VOCAB)))
    logits[rng.random(60) < 0.6, 0] += 12.0  # many confident blank frames
    lp = (logits - np.log(np.exp(logits).sum(1, keepdims=True))).astype(np.float32)
    kept, index, offset = collapse_blank_frames(lp, -5.0)
    assert len(kept) < len(lp) and index[0] == 0 and np.all(np.diff(index) > 0)
    search = PrefixBeamSearch(VOCAB, options(beam_size=8))
    full, short = search.search(lp)[0], search.search(kept)[0]
    assert full[0] == short[0]
    assert math.isclose(full[1], short[1] + offset, rel_tol=1e-6, abs_tol=1e-4)


@pytest.mark.parametrize("backend", [pytest.param("asrkit", marks=needs_kenlm),
                                     pytest.param("flashlight", marks=needs_flashlight)])
def test_batch_decoding_and_worker_pool_agree(arpa: Path, backend: str) -> None:
    lp = bunny_emissions()
    em = Emissions(torch.from_numpy(np.stack([lp, lp]))[:, :], torch.tensor([len(lp), 7]), FRAME_SHIFT)
    opts = options(arpa, alpha=0.5, backend=backend)
    batch = ctc_beam_search(em, TOKENIZER, opts)
    assert batch[0][0].text == "bugs bunny" and len(batch[1][0].text.split()) == 1  # lengths respected
    many = [lp, lp[:7], lp] * 4
    with DecoderPool(VOCAB, opts, workers=1) as local:
        expected = [h[0].text for h in local.decode(many, FRAME_SHIFT)]
    with DecoderPool(VOCAB, opts, workers=2) as pool:
        assert [h[0].text for h in pool.decode(many, FRAME_SHIFT)] == expected
        assert [h[0].text for h in pool.decode(many, FRAME_SHIFT, alpha=0.0, beta=0.0)][0] == "bunny bunny"


@needs_kenlm
def test_empty_emissions_give_an_empty_hypothesis(arpa: Path) -> None:
    assert decode(options(arpa), np.zeros((0, len(VOCAB)), dtype=np.float32))[0].text == ""
    silence = frames(*[{"": 0.99}] * 5)
    for backend in ("asrkit", "flashlight"):
        assert decode(options(arpa, backend=backend), silence)[0].text == ""


# ------------------------------------------------------------------------------------------- backends


@needs_flashlight
@needs_kenlm
def test_flashlight_is_the_default_and_keeps_alpha_and_beta_meaning(arpa: Path) -> None:
    """The same objective as the prefix search: a hypothesis' score is its best path + alpha ln p_LM + beta per
    word (the prefix search sums its paths, so it scores a little higher)."""
    opts = options(arpa, alpha=0.5, beta=1.0)
    decoder = CTCBeamDecoder(VOCAB, opts)
    assert decoder.backend == "flashlight"
    best = decoder.decode(bunny_emissions(), FRAME_SHIFT)[0]
    lm = 0.5 * math.log(10) * (-0.1 - 0.1 - 0.2)  # <s> bugs, bugs bunny, bunny </s>
    path = float(np.log([0.97, 0.97, 0.46, 0.48, 0.48, 0.48] + [0.97] * 8).sum())  # b u g s _ _ " " b u n _ n y _
    assert best.text == "bugs bunny" and best.score == pytest.approx(path + lm + 2 * 1.0, abs=1e-3)
    prefix = CTCBeamDecoder(VOCAB, replace(opts, backend="asrkit")).decode(bunny_emissions(), FRAME_SHIFT)[0]
    assert prefix.text == best.text and best.score <= prefix.score < best.score + 0.5
    decoder.set_weights(0.0, 0.0)
    assert decoder.decode(bunny_emissions(), FRAME_SHIFT)[0].text == "bunny bunny"


@needs_flashlight
@needs_kenlm
def test_flashlight_spells_only_the_words_of_the_lm(arpa: Path) -> None:
    """A closed vocabulary: "bugs buny" comes out as known words, where the prefix search keeps "buny"."""
    lp = frames(*[{c: 0.97} for c in "bugs"], {" ": 0.97}, *[{c: 0.97} for c in "buny"])
    assert decode(options(arpa, backend="asrkit", alpha=0.1, beta=0.0), lp)[0].text == "bugs buny"
    text = decode(options(arpa, backend="flashlight", alpha=0.1, beta=0.0), lp)[0].text
    assert text.startswith("bugs ") and set(text.split()) <= {"bugs", "bunny"}


@needs_flashlight
@needs_kenlm
def test_requests_flashlight_cannot_serve_fall_back_with_a_notice(arpa: Path, capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from asrkit import decoding

    monkeypatch.setattr(decoding, "_NOTICES", set())
    assert CTCBeamDecoder(VOCAB, options(arpa, hotwords=("bugs",))).backend == "asrkit"
    assert CTCBeamDecoder(VOCAB, options(arpa, hotwords=("bugs",))).backend == "asrkit"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "asrkit backend: the flashlight backend does not do hotwords" in err
    assert CTCBeamDecoder(VOCAB, options(arpa, nbest=2)).backend == "asrkit"
    assert "does not do n-best lists" in capsys.readouterr().err
    pieces = ["<blank>", "<unk>", "\u2581bugs", "\u2581bu", "nny"]
    assert CTCBeamDecoder(pieces, options(arpa)).backend == "asrkit"
    assert "word pieces" in capsys.readouterr().err
    monkeypatch.setattr("asrkit.lm.flashlight_available", lambda: False)
    assert CTCBeamDecoder(VOCAB, options(arpa)).backend == "asrkit"
    assert "flashlight-text is not installed" in capsys.readouterr().err
    assert CTCBeamDecoder(VOCAB, options(arpa, backend="pyctcdecode")).backend == "pyctcdecode"


# ------------------------------------------------------------------------------------------- bad input


def test_beam_size_below_one_is_refused() -> None:
    with pytest.raises(AsrkitError, match="beam size -1 must be at least 1, or 0 for the model's default"):
        SearchOptions(beam_size=-1)
    assert CTCBeamDecoder(VOCAB, SearchOptions(beam_size=0, backend="asrkit")).options.beam_size == 32
    with pytest.raises(AsrkitError, match="nbest 5 is larger than the beam size 2"):
        SearchOptions(beam_size=2, nbest=5)
    with pytest.raises(AsrkitError, match="unknown decoding backend 'fast'"):
        SearchOptions(backend="fast")


def test_missing_lm_names_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(AsrkitError, match=r"nothing\.bin not found; build one with `asrkit lm build"):
        CTCBeamDecoder(VOCAB, options(tmp_path / "nothing.bin"))


def test_corrupt_lm_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.bin"
    bad.write_bytes(b"\x00garbage, not a KenLM model" * 10)
    (tmp_path / "broken.unigrams.txt").write_text("bugs\nbunny\n")
    with pytest.raises(AsrkitError, match=r"broken\.bin: not a readable KenLM model.*asrkit lm build"):
        CTCBeamDecoder(VOCAB, options(bad))


def test_truncated_arpa_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "cut.arpa"
    bad.write_text(ARPA.lstrip()[:120], encoding="utf-8")
    with pytest.raises(AsrkitError, match=r"cut\.arpa"):
        CTCBeamDecoder(VOCAB, options(bad))


def test_lm_whose_words_the_tokenizer_cannot_spell_is_refused(tmp_path: Path) -> None:
    upper = tmp_path / "upper.arpa"
    upper.write_text(ARPA.lstrip().replace("bugs", "BUGS").replace("bunny", "BUNNY"), encoding="utf-8")
    with pytest.raises(AsrkitError, match=r"upper\.arpa: 2 of 2 words .* \('B', 'G', 'N', 'S', 'U', 'Y'; "
                                          r"e\.g\. BUGS, BUNNY\).*rebuild it with `asrkit lm build`"):
        CTCBeamDecoder(VOCAB, options(upper))


def test_binary_lm_without_its_word_list_says_what_is_missing(tmp_path: Path, arpa: Path) -> None:
    lone = tmp_path / "lone.bin"
    lone.write_bytes(b"whatever")
    with pytest.raises(AsrkitError, match=r"lone\.bin: its word list was not found \(lone\.unigrams\.txt or "
                                          r"lone\.arpa"):
        CTCBeamDecoder(VOCAB, options(lone))


@needs_kenlm
def test_lm_look_ahead_scores_a_word_being_spelt_by_its_best_completion(arpa: Path) -> None:
    from asrkit.lm import WordLM

    lm = WordLM(arpa, VOCAB)
    assert lm.words == ["bugs", "bunny"] and lm.order == 2
    assert lm.lookahead("bu") == pytest.approx(-0.7) and lm.lookahead("bunny") == pytest.approx(-0.7)
    assert lm.lookahead("bx") is None and lm.lookahead("bxy") is None and not lm.is_prefix("g")
    assert decode(options(arpa, alpha=0.5, beta=0.0, lm_lookahead=False))[0].text == "bugs bunny"
