"""DeepSpeech2 via build_model (shapes, loss, gradients, padding invariance) and CTC greedy decoding."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch
from conftest import losses_of_steps

from asrkit.config import Config, build_config
from asrkit.data.tokenizer import BLANK, CharTokenizer
from asrkit.decoding import ctc_greedy, word_timings
from asrkit.errors import AsrkitError
from asrkit.models import MODELS, build_model
from asrkit.records import Batch, Emissions, Hypothesis
from asrkit.search import SearchOptions

N_MELS = 40
VOCAB = 12


def small_cfg(**model: object) -> Config:
    base: dict[str, object] = {"rnn_hidden": 32, "rnn_layers": 2, "conv_channels": 4}
    base.update(model)
    return build_config({"model": base, "features": {"n_mels": N_MELS}})


def make_model(**model: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(small_cfg(**model), N_MELS, VOCAB)


def random_batch(lens: Sequence[int], seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    feat_lens = torch.tensor(lens)
    feats = torch.randn(len(lens), max(lens), N_MELS, generator=gen)
    for i, n in enumerate(lens):
        feats[i, n:] = 0.0
    target_lens = torch.tensor([max(1, n // 8) for n in lens])
    targets = torch.randint(1, VOCAB, (len(lens), int(target_lens.max())), generator=gen)
    for i, u in enumerate(target_lens.tolist()):
        targets[i, u:] = 0
    return Batch([f"u{i}" for i in range(len(lens))], feats, feat_lens, targets, target_lens,
                 ["x"] * len(lens))


def warm_up_norms(model: torch.nn.Module) -> None:
    """A few train-mode forwards so BatchNorm running statistics are not the identity."""
    model.train()
    with torch.no_grad():
        for seed in range(3):
            b = random_batch([60, 45, 30], seed=seed)
            model(b.feats * 2 + 0.5, b.feat_lens)
    model.eval()


VARIANTS = [
    {"conv_layers": 1},
    {"conv_layers": 2},
    {"conv_layers": 3},
    {"rnn_type": "lstm"},
    {"bidirectional": False},
    {"norm": "layer"},
    {"rnn_type": "lstm", "bidirectional": False, "norm": "layer", "conv_layers": 3},
]


# --- shapes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()))
def test_output_shapes_and_lengths(variant: dict) -> None:
    model = make_model(**variant)
    assert model.time_reduction == 2
    model.eval()
    batch = random_batch([37, 50, 21])
    with torch.no_grad():
        log_probs, lengths = model(batch.feats, batch.feat_lens)
    assert log_probs.shape == (3, math.ceil(50 / 2), VOCAB)
    assert log_probs.dtype == torch.float32
    assert lengths.tolist() == [math.ceil(n / 2) for n in (37, 50, 21)]
    # log-probabilities: each real frame sums to one
    for b, n in enumerate(lengths.tolist()):
        assert torch.allclose(log_probs[b, :n].exp().sum(-1), torch.ones(n), atol=1e-5)
    assert torch.isfinite(log_probs).all()


@pytest.mark.parametrize("n", [1, 2, 3, 10, 11])
def test_short_inputs(n: int) -> None:
    model = make_model(conv_layers=3).eval()
    with torch.no_grad():
        log_probs, lengths = model(torch.randn(1, n, N_MELS), torch.tensor([n]))
    assert lengths.tolist() == [math.ceil(n / 2)]
    assert log_probs.shape[1] == math.ceil(n / 2)


# --- loss and gradients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()))
def test_loss_finite_and_gradients_reach_every_parameter(variant: dict) -> None:
    model = make_model(**variant)
    model.train()
    batch = random_batch([64, 40, 52, 33])
    loss = model.loss(batch)
    assert loss.ndim == 0
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_training_step_reduces_loss() -> None:
    losses = losses_of_steps(make_model().train(), random_batch([32, 24], seed=3), 4)
    assert losses[-1] < losses[0]


# --- padding invariance ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()))
def test_padding_does_not_change_results_in_eval_mode(variant: dict) -> None:
    model = make_model(**variant)
    warm_up_norms(model)
    short_len, long_len = 23, 61
    gen = torch.Generator().manual_seed(11)
    short = torch.randn(1, short_len, N_MELS, generator=gen)
    long = torch.randn(1, long_len, N_MELS, generator=gen)
    with torch.no_grad():
        alone, alone_lens = model(short, torch.tensor([short_len]))
        padded = torch.zeros(2, long_len, N_MELS)
        padded[0] = long[0]
        padded[1, :short_len] = short[0]
        both, both_lens = model(padded, torch.tensor([long_len, short_len]))
    n = int(alone_lens[0])
    assert int(both_lens[1]) == n
    assert torch.allclose(both[1, :n], alone[0, :n], atol=1e-5), (both[1, :n] - alone[0, :n]).abs().max()
    # and the long one is unaffected by sharing the batch
    with torch.no_grad():
        long_alone, _ = model(long, torch.tensor([long_len]))
    assert torch.allclose(both[0], long_alone[0], atol=1e-5)


def test_model_decode_returns_hypotheses() -> None:
    tok = CharTokenizer.train(["abcdefghij "])
    model = build_model(small_cfg(), N_MELS, len(tok.vocab))
    torch.manual_seed(1)
    model.eval()
    batch = random_batch([40, 25])
    nbests = model.decode(batch.feats, batch.feat_lens, SearchOptions(), tokenizer=tok, frame_shift=0.01)
    assert [len(n) for n in nbests] == [1, 1]  # the default: greedy
    hyps = [n[0] for n in nbests]
    with torch.no_grad():
        best_paths = ctc_greedy(model.ctc_emissions(batch.feats, batch.feat_lens, 0.01), tok)  # type: ignore[arg-type]
    assert [h.tokens for h in hyps] == [h.tokens for h in best_paths]
    for hyp, n in zip(hyps, (40, 25), strict=True):
        assert isinstance(hyp, Hypothesis)
        assert hyp.text == tok.decode(list(hyp.tokens))
        assert hyp.score <= 0
        out_frames = math.ceil(n / 2)
        for w in hyp.words:
            assert 0 <= w.start < w.end <= out_frames * 0.02 + 1e-9
    em = model.ctc_emissions(batch.feats, batch.feat_lens, 0.01)
    assert em is not None
    assert em.frame_shift == pytest.approx(0.02)


# --- build_model errors ---------------------------------------------------------------------------------


def test_registry() -> None:
    assert "deepspeech2" in MODELS


def test_unknown_family() -> None:
    with pytest.raises(AsrkitError) as info:  # when the config is built, before any work
        build_config({"model": {"family": "wav2vec"}})
    msg = str(info.value)
    assert "'wav2vec'" in msg and "deepspeech2" in msg


@pytest.mark.parametrize("model,fragment", [
    ({"conv_layers": 4}, "conv_layers must be 1-3"),
    ({"conv_layers": 0}, "conv_layers must be 1-3"),
    ({"rnn_type": "rnn"}, "unknown model.rnn_type 'rnn'; valid: gru, lstm"),
    ({"norm": "group"}, "unknown model.norm 'group'; valid: batch, layer"),
])
def test_invalid_model_config(model: dict, fragment: str) -> None:
    with pytest.raises(AsrkitError) as info:
        build_model(small_cfg(**model), N_MELS, VOCAB)
    assert fragment in str(info.value)


# --- ctc_greedy on hand-built emissions -----------------------------------------------------------------


def emissions_from_paths(paths: Sequence[Sequence[int]], vocab_size: int, frame_shift: float,
                         lengths: Sequence[int] | None = None) -> Emissions:
    t = max(len(p) for p in paths)
    logits = torch.full((len(paths), t, vocab_size), -5.0)
    for b, path in enumerate(paths):
        for i, tok in enumerate(path):
            logits[b, i, tok] = 5.0
    log_probs = torch.log_softmax(logits, dim=-1)
    lens = torch.tensor(lengths if lengths is not None else [len(p) for p in paths])
    return Emissions(log_probs, lens, frame_shift)


@pytest.fixture
def tok() -> CharTokenizer:
    return CharTokenizer([" ", "a", "b", "c"])  # ids: blank 0, ' ' 1, a 2, b 3, c 4


def test_greedy_collapses_repeats_and_drops_blanks(tok: CharTokenizer) -> None:
    assert tok.vocab == [BLANK, " ", "a", "b", "c"]
    # a a _ a b b _ _ ' ' ' ' c _ c
    path = [2, 2, 0, 2, 3, 3, 0, 0, 1, 1, 4, 0, 4]
    (hyp,) = ctc_greedy(emissions_from_paths([path], 5, 0.04), tok)
    assert hyp.tokens == (2, 2, 3, 1, 4, 4)
    assert hyp.text == "aab cc"
    per_frame = float(torch.log_softmax(torch.tensor([5.0] + [-5.0] * 4), 0)[0])
    assert hyp.score == pytest.approx(per_frame * 13, abs=1e-6)


def test_greedy_word_timings(tok: CharTokenizer) -> None:
    #       0  1  2  3  4  5  6  7  8  9
    path = [0, 2, 2, 3, 0, 1, 0, 4, 4, 0]
    (hyp,) = ctc_greedy(emissions_from_paths([path], 5, 0.04), tok)
    assert hyp.text == "ab c"
    assert [w.word for w in hyp.words] == ["ab", "c"]
    ab, c = hyp.words
    assert ab.start == pytest.approx(1 * 0.04) and ab.end == pytest.approx(4 * 0.04)
    assert c.start == pytest.approx(7 * 0.04) and c.end == pytest.approx(8 * 0.04)


def test_greedy_respects_lengths_and_timings_stay_inside_audio(tok: CharTokenizer) -> None:
    paths = [[2, 0, 1, 3, 3, 1, 4, 4, 2, 2], [3, 1, 2, 2, 4, 4, 4, 4, 4, 4]]
    em = emissions_from_paths(paths, 5, 0.02, lengths=[10, 4])
    hyps = ctc_greedy(em, tok)
    assert hyps[0].text == "a b ca"
    assert hyps[1].text == "b a"  # frames past length 4 are ignored
    for hyp, n in zip(hyps, [10, 4], strict=True):
        prev_end = 0.0
        for w in hyp.words:
            assert prev_end <= w.start < w.end <= n * 0.02 + 1e-9
            prev_end = w.end
        assert [w.word for w in hyp.words] == hyp.text.split()


def test_greedy_all_blank_and_empty(tok: CharTokenizer) -> None:
    hyps = ctc_greedy(emissions_from_paths([[0, 0, 0], [0]], 5, 0.01, lengths=[3, 0]), tok)
    assert [h.text for h in hyps] == ["", ""]
    assert [h.tokens for h in hyps] == [(), ()]
    assert [h.words for h in hyps] == [(), ()]
    assert hyps[1].score == 0.0


def test_greedy_leading_and_double_spaces(tok: CharTokenizer) -> None:
    (hyp,) = ctc_greedy(emissions_from_paths([[1, 2, 0, 1, 0, 1, 3, 1]], 5, 0.1), tok)
    assert [w.word for w in hyp.words] == ["a", "b"]
    assert hyp.words[0].start == pytest.approx(0.1)
    assert hyp.words[1].start == pytest.approx(0.6)


class PieceTokenizer:
    """A stand-in sentencepiece-like tokenizer with '▁' word starts."""

    kind = "bpe"
    vocab = [BLANK, "▁on", "e", "▁tw", "o", "▁"]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.vocab[i] for i in ids if i).replace("▁", " ").strip()


def test_greedy_sentencepiece_word_starts() -> None:
    #       0  1  2  3  4  5  6  7
    path = [1, 1, 2, 0, 3, 4, 0, 1]
    (hyp,) = ctc_greedy(emissions_from_paths([path], 6, 0.03), PieceTokenizer())  # type: ignore[arg-type]
    assert hyp.text == "one two on"
    assert [(w.word, round(w.start, 4), round(w.end, 4)) for w in hyp.words] == [
        ("one", 0.0, 0.09), ("two", 0.12, 0.18), ("on", 0.21, 0.24)]


def test_word_timings_bare_marker_piece() -> None:
    words = word_timings([1, 5, 2], [0, 2, 4], PieceTokenizer.vocab, 0.1)
    assert [(w.word, w.start, w.end) for w in words] == [("on", 0.0, 0.1), ("e", 0.4, 0.5)]


def test_zero_rnn_layers_is_a_config_error() -> None:
    with pytest.raises(AsrkitError, match="rnn_layers"):
        build_model(small_cfg(rnn_layers=0), N_MELS, VOCAB)
