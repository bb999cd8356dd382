"""Listen, Attend and Spell: shapes and masks with padded batches, gradients, scheduled sampling, greedy and beam
search on hand-built step functions (beam 1 = greedy, sorted n-best, KenLM shallow fusion on a toy ARPA),
attention pictures, and an overfit run through `fit` and the CLI on four real recordings."""

from __future__ import annotations

import importlib.util
import itertools
import math
import shutil
import struct
import zlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FSDD_ASSETS
from typer.testing import CliRunner

from asrkit.cli import app
from asrkit.config import build_config
from asrkit.data.tokenizer import CharTokenizer, Tokenizer
from asrkit.errors import AsrkitError
from asrkit.lm import SPACE_WORD, UnitLM, load_fusion_lm, unit_sentence
from asrkit.models import MODELS, build_model
from asrkit.models.attention_plot import plot_attention, token_labels
from asrkit.models.las import LAS, Listener, concat_pairs
from asrkit.models.las_search import EOS, CTCScorer, LMScorer, State, beam_search, ctc_length_caps, greedy_search
from asrkit.records import Batch, Hypothesis
from asrkit.search import SearchOptions, describe

N_MELS = 20
TOK = CharTokenizer.train(["abcdefghij "])  # blank/EOS 0, ' ' 1, a-j 2-11
VOCAB = len(TOK.vocab)

SMALL = {"listener_layers": 2, "pyramid_layers": 2, "listener_hidden": 16, "attention_dim": 16, "embedding_dim": 8,
         "speller_layers": 2, "speller_hidden": 24, "location_channels": 4, "location_kernel": 5, "dropout": 0.0,
         "label_smoothing": 0.0, "sampling_rate": 0.0}
SEARCH = SearchOptions(max_len_ratio=1.0)  # the [decode] of these tests (beam_size 0: the attention default, 4)

VARIANTS = [
    {},
    {"attention": "dot"},
    {"attention": "additive", "attention_heads": 4},
    {"attention": "location", "attention_heads": 4, "ctc_weight": 0.3},
    {"conv_layers": 2, "pyramid_layers": 1, "listener_layers": 1},
    {"pyramid_layers": 0},
    {"attention": "dot", "ctc_weight": 0.3, "decode": {"ctc_weight": 0.4}},  # joint CTC/attention decoding
]


def variant_id(v: dict) -> str:
    return ",".join(f"{k}={x}" for k, x in v.items()) or "location"


def make_las(decode: dict[str, Any] | None = None, **las: object) -> LAS:
    """A small LAS; `decode`: its config's [decode] (checked against the model when it is built)."""
    torch.manual_seed(0)
    cfg = build_config({"model": {"family": "las"}, "las": {**SMALL, **las}, "features": {"n_mels": N_MELS},
                        "decode": decode or {}})
    model = build_model(cfg, N_MELS, VOCAB)
    assert isinstance(model, LAS)
    return model


def search_of(variant: dict, **settings: Any) -> SearchOptions:
    """SEARCH with a variant's [decode] settings and `settings`."""
    return replace(SEARCH, **variant.get("decode", {}), **settings)


def make_batch(lens: Sequence[int], target_lens: Sequence[int], seed: int = 0, pad_value: float = 0.0) -> Batch:
    """Random features and targets, padded with `pad_value` (real collate pads with 0; anything must do)."""
    gen = torch.Generator().manual_seed(seed)
    feats = torch.full((len(lens), max(lens), N_MELS), pad_value)
    targets = torch.full((len(lens), max(target_lens)), 3)
    for i, (n, u) in enumerate(zip(lens, target_lens, strict=True)):
        feats[i, :n] = torch.randn(n, N_MELS, generator=gen)
        targets[i, :u] = torch.randint(1, VOCAB, (u,), generator=gen)
    return Batch([f"u{i}" for i in range(len(lens))], feats, torch.tensor(lens), targets, torch.tensor(target_lens),
                 [""] * len(lens))


def pick(batch: Batch, i: int) -> Batch:
    n, u = int(batch.feat_lens[i]), int(batch.target_lens[i])
    return Batch([batch.ids[i]], batch.feats[i : i + 1, :n], batch.feat_lens[i : i + 1],
                 batch.targets[i : i + 1, :u], batch.target_lens[i : i + 1], [""])


# --- shapes and masks ---------------------------------------------------------------------------------------


def test_registry_and_time_reduction() -> None:
    assert "las" in MODELS
    assert make_las().time_reduction == 4
    assert make_las(pyramid_layers=2, conv_layers=1).time_reduction == 8
    assert build_model(build_config({"model": {"family": "las"}}), N_MELS, VOCAB).time_reduction == 8  # the paper's


def test_concat_pairs_zero_pads_odd_lengths() -> None:
    x = torch.arange(1, 11, dtype=torch.float).view(1, 5, 2).repeat(2, 1, 1)  # frames (1,2) (3,4) ... (9,10)
    x[1, 3:] = 99.0  # padding of a 3-frame utterance
    out, lens = concat_pairs(x, torch.tensor([5, 3]))
    assert out.shape == (2, 3, 4) and lens.tolist() == [3, 2]
    assert out[0, 2].tolist() == [9, 10, 0, 0]
    assert out[1, 1].tolist() == [5, 6, 0, 0]  # the padding never enters a real frame


@pytest.mark.parametrize("conv,pyramid,layers", [(0, 0, 1), (0, 2, 2), (0, 3, 3), (1, 1, 2), (2, 2, 3)])
def test_listener_lengths(conv: int, pyramid: int, layers: int) -> None:
    listener = Listener(N_MELS, 8, layers, pyramid, conv_layers=conv, conv_channels=2).eval()
    lens = [37, 50, 1, 8]
    batch = make_batch(lens, [1] * 4)
    out, out_lens = listener(batch.feats, batch.feat_lens)
    expect = lens
    for _ in range(conv + pyramid):
        expect = [math.ceil(n / 2) for n in expect]
    assert out_lens.tolist() == expect
    assert out.shape == (4, max(expect), 16)
    for b, n in enumerate(expect):
        assert (out[b, n:] == 0).all()


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_attention_weights_are_distributions_over_real_frames(variant: dict) -> None:
    model = make_las(**variant).eval()
    batch = make_batch([40, 23, 9], [5, 3, 2])
    with torch.no_grad():
        results, lens = model._search(batch.feats, batch.feat_lens, model.resolve_search(search_of(variant)), None,
                                      [])
    assert model.attention is not None
    heads = model.attention.heads
    for found, n in zip(results, lens, strict=True):
        w = found[0].weights  # (U', H, T'max)
        assert w.shape[1] == heads
        assert torch.allclose(w.sum(-1), torch.ones(w.shape[:2]), atol=1e-5)
        assert (w[:, :, n:] == 0).all()


# --- loss, gradients, padding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_gradients_reach_every_parameter(variant: dict) -> None:
    model = make_las(**variant).train()
    loss = model.loss(make_batch([48, 30, 17], [6, 4, 2]))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_padding_does_not_change_loss_or_decoding(variant: dict) -> None:
    model = make_las(**variant).eval()
    search = search_of(variant, beam_size=3, nbest=3)
    batch = make_batch([61, 23, 40], [7, 2, 5], pad_value=5.0)
    with torch.no_grad():
        together = model.loss(batch)
        alone = sum(model.loss(pick(batch, i)) for i in range(3))
        assert together.item() * 3 == pytest.approx(float(alone), rel=1e-5)
        nbest = model.decode(batch.feats, batch.feat_lens, search, tokenizer=TOK)
        for i in range(3):
            single = model.decode(pick(batch, i).feats, pick(batch, i).feat_lens, search, tokenizer=TOK)[0]
            assert [h.tokens for h in nbest[i]] == [h.tokens for h in single]
            assert [h.score for h in nbest[i]] == pytest.approx([h.score for h in single], abs=1e-4)


def test_loss_is_cross_entropy_of_tokens_then_eos() -> None:
    """With no smoothing or sampling: the teacher-forced log-likelihood the greedy search would score."""
    model = make_las().eval()
    batch = make_batch([30], [4])
    with torch.no_grad():
        _, _, memory, state = model._start(batch.feats, batch.feat_lens)
        total, prev = 0.0, torch.tensor([EOS])
        for tok in [*batch.targets[0].tolist(), EOS]:
            logits, state = model.speller.step(prev, state, model.attention, memory)
            total -= float(torch.log_softmax(logits, -1)[0, tok])
            prev = torch.tensor([tok])
        assert model.loss(batch).item() == pytest.approx(total, rel=1e-5)


def test_label_smoothing_and_ctc_change_the_loss() -> None:
    batch = make_batch([30, 20], [4, 3])
    plain = make_las().eval().loss(batch).item()
    assert make_las(label_smoothing=0.2).eval().loss(batch).item() != pytest.approx(plain)
    assert make_las(ctc_weight=0.5).eval().loss(batch).item() != pytest.approx(plain)


def test_scheduled_sampling_ramp() -> None:
    model = make_las(sampling_rate=0.4, sampling_start_step=100, sampling_end_step=300)
    rates = []
    for step in (0, 100, 200, 300, 1000):
        model.on_step(step)
        rates.append(model.sampling)
    assert rates == pytest.approx([0.0, 0.0, 0.2, 0.4, 0.4])
    batch = make_batch([40, 30], [8, 6])
    model.train()
    torch.manual_seed(0)
    sampled = model.loss(batch).item()
    model.on_step(0)
    teacher = model.loss(batch).item()
    assert teacher == pytest.approx(model.eval().loss(batch).item(), rel=1e-6)  # rate 0: pure teacher forcing
    assert sampled != pytest.approx(teacher)


@pytest.mark.parametrize("las,fragment", [
    ({"attention": "cosine"}, "unknown las.attention 'cosine'; valid: dot, additive, location"),
    ({"attention_heads": 3}, "las.attention_heads 3 must divide"),
    ({"pyramid_layers": 5}, "las.pyramid_layers must be 0-2"),
    ({"decode": {"nbest": 5, "beam_size": 4}}, "config [decode]: nbest 5 is larger than the beam size 4"),
    ({"location_kernel": 4}, "must be odd"),
    ({"decode": {"ctc_weight": 0.3}}, "config [decode]: ctc_weight 0.3 (joint CTC decoding) needs the CTC head"),
    ({"beam_size": 4}, "config las.beam_size: the search settings of every model are in [decode] now; set "
                       "decode.beam_size instead"),
    ({"ctc_decode_weight": 0.3}, "set decode.ctc_weight instead"),
    ({"decode": {"max_symbols": 4}}, "decode setting(s) max_symbols set, but a model with the attention objective "
                                     "does not read them (they apply to transducer models)"),
])
def test_config_errors(las: dict, fragment: str) -> None:
    """Choices fail when the config is built; sizes that do not fit together when the model is."""
    with pytest.raises(AsrkitError) as info:
        make_las(**las)
    assert fragment in str(info.value)


# --- search on hand-built step functions ----------------------------------------------------------------------


def table_step(table: dict[tuple[int, ...], dict[int, float]], vocab: int = 4):
    """A step function whose next-token probabilities depend on the prefix (unlisted prefixes: EOS)."""
    def step(prev: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        hist, n = state[0], int(state[1][0, 0])
        if n > 0:
            hist = torch.cat([hist, prev[:, None].float()], 1)
        rows = []
        for h in hist.long().tolist():
            probs = torch.full((vocab,), 1e-9)
            for tok, p in table.get(tuple(h), {EOS: 1.0}).items():
                probs[tok] = p
            rows.append((probs / probs.sum()).log())
        weights = torch.full((len(rows), 1, 3), 1 / 3)
        return torch.stack(rows), (hist, state[1] + 1, state[2], weights)
    return step


def table_state(b: int) -> State:
    return torch.zeros(b, 0), torch.zeros(b, 1), torch.zeros(b, 1), torch.full((b, 1, 3), 1 / 3)


# a=1, b=2, c=3. Greedy takes "a" (0.55) then "a c" or "a b" (0.5 each); "b" then EOS (0.95) is likelier overall.
GARDEN = {(): {1: 0.55, 2: 0.45}, (1,): {3: 0.5, 2: 0.5}, (2,): {EOS: 0.95, 3: 0.05}}


def test_beam_search_beats_greedy_on_a_garden_path() -> None:
    (greedy,) = greedy_search(table_step(GARDEN), table_state(1), [5])
    assert greedy.tokens in ((1, 3), (1, 2)) and greedy.score == pytest.approx(math.log(0.55 * 0.5), abs=1e-5)
    (found,) = beam_search(table_step(GARDEN), table_state(2), [5], beam=2)
    best = max(found, key=lambda f: f.score)
    assert best.tokens == (2,) and best.score == pytest.approx(math.log(0.45 * 0.95), abs=1e-5)
    assert best.weights.shape == (2, 1, 3)  # one row per step: "b" and EOS


def test_beam_one_is_greedy_on_a_table() -> None:
    (greedy,) = greedy_search(table_step(GARDEN), table_state(1), [5])
    ((beam1,),) = beam_search(table_step(GARDEN), table_state(1), [5], beam=1)
    assert (beam1.tokens, beam1.score) == (greedy.tokens, pytest.approx(greedy.score))


def test_search_stops_at_max_length() -> None:
    forever = {(1,) * n: {1: 1.0} for n in range(20)}
    (greedy,) = greedy_search(table_step(forever), table_state(1), [6])
    (found,) = beam_search(table_step(forever), table_state(3), [6], beam=3)
    assert greedy.tokens == (1,) * 6 and greedy.weights.shape[0] == 6
    assert max(len(f.tokens) for f in found) == 6


def test_ctc_length_caps_count_the_best_path() -> None:
    path = [0, 3, 3, 0, 4, 4, 0, 5, 2]  # 7 real frames, best path "b c" (2 tokens), then 2 padded frames
    logits = torch.nn.functional.one_hot(torch.tensor([path, path]), 6).float()
    assert ctc_length_caps([50, 5], logits, torch.tensor([7, 7])) == [math.ceil(1.5 * 2) + 4, 5]
    assert ctc_length_caps([50], logits[:1], torch.tensor([9])) == [math.ceil(1.5 * 4) + 4]  # padding not counted


@pytest.mark.parametrize("ctc_weight", [0.0, 0.3])
def test_a_decoder_that_never_ends_stops_near_the_ctc_length(ctc_weight: float, monkeypatch: Any) -> None:
    """An attention decoder that loops (never EOS) runs to max_len_ratio x T' tokens, or, with a CTC head, to
    the cap that the head's best path sets: greedy dev WER stays meaningful for choosing best.pt."""
    model = make_las(ctc_weight=ctc_weight).eval()
    batch = make_batch([40, 33], [3, 3])

    def loop(prev: torch.Tensor, state: State, memory: Any) -> tuple[torch.Tensor, State]:
        logits, state = LAS._step(model, prev, state, memory)
        return logits + 100.0 * torch.nn.functional.one_hot(torch.tensor(5), VOCAB), state  # always "d"

    monkeypatch.setattr(model, "_step", loop)
    search = replace(SEARCH, max_len_ratio=4.0, beam_size=1)
    out = model.decode(batch.feats, batch.feat_lens, search, tokenizer=TOK)
    enc, lens = model.listener(batch.feats, batch.feat_lens)
    limits = [math.ceil(4.0 * n) for n in lens.tolist()]
    if model.ctc is not None:
        limits = ctc_length_caps(limits, model.ctc(enc), lens)
        assert all(x < math.ceil(4.0 * n) for x, n in zip(limits, lens.tolist(), strict=True))
    assert [len(h.tokens) for (h,) in out] == limits


def brute_force_ctc(x: torch.Tensor, prefix: tuple[int, ...], whole: bool) -> float:
    """log P(the CTC output starts with `prefix`) (or is exactly it, `whole`), summing every alignment."""
    t, v = x.shape
    total = 0.0
    for path in itertools.product(range(v), repeat=t):
        out = [c for i, c in enumerate(path) if c != 0 and (i == 0 or c != path[i - 1])]
        if (tuple(out) == prefix) if whole else (tuple(out[: len(prefix)]) == prefix):
            total += math.exp(sum(float(x[i, c]) for i, c in enumerate(path)))
    return math.log(total) if total > 0 else float("-inf")


@pytest.mark.parametrize("length", [5, 4])
def test_ctc_prefix_scores_match_brute_force(length: int) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.log_softmax(torch.randn(1, 5, 3, generator=gen), -1)  # blank, a, b
    x[0, length:] = 7.0  # padding: must not count
    scorer = CTCScorer(x, torch.tensor([length]), weight=1.0)
    state = scorer.start(1, 1)
    cands = torch.tensor([[[1, 2, EOS]]])
    alive = torch.ones(1, 1, dtype=torch.bool)
    real = x[0, :length]
    prefix_score = 0.0
    for prefix in [(), (1,), (1, 1), (1, 1, 2)][: 3 if length == 5 else 2]:
        delta, new = scorer.score(state, cands, alive)
        expect = [brute_force_ctc(real, (*prefix, 1), False), brute_force_ctc(real, (*prefix, 2), False),
                  brute_force_ctc(real, prefix, True)]
        assert (delta[0, 0] + prefix_score).tolist() == pytest.approx(expect, abs=1e-4)
        nxt = 1 if len(prefix) < 2 else 2  # follow a a b
        state = scorer.select(new, torch.tensor([[0]]), torch.tensor([[nxt - 1]]))
        prefix_score = expect[nxt - 1]


TOY_ARPA = """\\data\\
ngram 1=6
ngram 2=1

\\1-grams:
-1.0\t<unk>\t0
-99\t<s>\t0
-0.3\t</s>\t0
-0.1\ta\t0
-2.0\tb\t0
-0.1\tc\t0

\\2-grams:
-0.05\ta c

\\end\\
"""


@pytest.fixture
def toy_lm(tmp_path: Path) -> UnitLM:
    pytest.importorskip("kenlm")
    path = tmp_path / "units.arpa"
    path.write_text(TOY_ARPA)
    return UnitLM(path, ["<blank>", "a", "b", "c"])


def test_shallow_fusion_flips_the_garden_path(toy_lm: UnitLM) -> None:
    (plain,) = beam_search(table_step(GARDEN), table_state(2), [5], beam=2)
    assert max(plain, key=lambda f: f.score).tokens == (2,)
    (fused,) = beam_search(table_step(GARDEN), table_state(2), [5], beam=2, scorers=[LMScorer(toy_lm, 1.0)])
    best = max(fused, key=lambda f: f.score)
    assert best.tokens == (1, 3)
    lm_logp = (-0.1 - 0.05 - 0.3) * math.log(10)  # a, c after a, </s>
    assert best.score == pytest.approx(math.log(0.55 * 0.5) + lm_logp, abs=1e-4)


def test_unit_lm_words(toy_lm: UnitLM, tmp_path: Path) -> None:
    assert unit_sentence(TOK, "ab c") == f"a b {SPACE_WORD} c"
    assert toy_lm.words == ["</s>", "a", "b", "c"]
    state = toy_lm.start()
    logp, _ = toy_lm.score(state, 1)
    assert logp == pytest.approx(-0.1 * math.log(10))
    with pytest.raises(AsrkitError, match="none of the model's tokens"):
        UnitLM(toy_lm.path, ["<blank>", "x", "y"])


# --- trained on four real recordings: overfit, beam = greedy, n-best, plots, CLI ------------------------------

WORDS = ["zero", "one", "two", "three"]
TINY: dict[str, dict[str, Any]] = {
    "model": {"family": "las"},
    "las": {**SMALL, "listener_hidden": 32, "attention_dim": 32, "embedding_dim": 16, "speller_layers": 1,
            "speller_hidden": 64},
    "decode": {"beam_size": 2, "max_len_ratio": 1.0},
    "features": {"n_mels": 40, "spec_augment": False},
    "train": {"epochs": 30, "lr": 8e-3, "warmup_steps": 5, "anneal": 1.0, "batch_seconds": 10.0, "grad_clip": 5.0,
              "num_workers": 0, "save_every_steps": 0, "seed": 7},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from asrkit.prepare.folder import prepare
    from asrkit.train import fit

    corpus = tmp_path_factory.mktemp("corpus")
    for digit, word in enumerate(WORDS):
        shutil.copy(FSDD_ASSETS / f"{digit}_jackson_5.wav", corpus / f"{word}.wav")
        (corpus / f"{word}.txt").write_text(word + "\n")
    data, exp = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("exp")
    prepare(corpus, data, name="train", workers=1)
    fit(build_config(TINY), data, exp, progress=False)
    return corpus, data, exp


TRAINED = SearchOptions(**TINY["decode"])  # the search of the trained model's checkpoint


def loaded_batch(data: Path, exp: Path) -> tuple[LAS, Tokenizer, torch.Tensor, torch.Tensor]:
    """The trained model, its tokenizer and its four training utterances as one padded batch."""
    from asrkit.checkpoint import load_checkpoint
    from asrkit.data.manifest import read_manifest
    from asrkit.inference import load_batches

    loaded = load_checkpoint(exp / "last.pt")
    assert loaded.config.decode.search_options() == TRAINED
    ((_, batch),) = list(load_batches(loaded, read_manifest(data / "train.jsonl"), 8, torch.device("cpu"), None))
    assert isinstance(loaded.model, LAS) and batch is not None
    return loaded.model, loaded.tokenizer, batch.feats, batch.feat_lens


@pytest.mark.slow
def test_overfits_and_cli_transcribes(trained: tuple[Path, Path, Path]) -> None:
    corpus, data, exp = trained
    runner = CliRunner()
    wavs = [str(corpus / f"{w}.wav") for w in WORDS]
    result = runner.invoke(app, ["transcribe", str(exp / "last.pt"), *wavs])
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[1] for line in result.stdout.strip().splitlines()] == WORDS
    result = runner.invoke(app, ["evaluate", str(exp / "last.pt"), str(data / "train.jsonl")])
    assert result.exit_code == 0, result.output
    assert "WER 0.00%" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_one_equals_greedy_on_the_trained_model(trained: tuple[Path, Path, Path], length_penalty: float) -> None:
    _, data, exp = trained
    model, tok, feats, lens = loaded_batch(data, exp)
    search = replace(TRAINED, beam_size=1, nbest=1, length_penalty=length_penalty)
    greedy = [h for (h,) in model.decode(feats, lens, search, tokenizer=tok)]
    assert sorted(h.text for h in greedy) == sorted(WORDS)
    beam1 = beam_search_hyps(model, tok, feats, lens, search)
    assert [h.tokens for h in beam1] == [h.tokens for h in greedy]
    assert [h.score for h in beam1] == pytest.approx([h.score for h in greedy], abs=1e-4)


def beam_search_hyps(model: LAS, tok: Tokenizer, feats: torch.Tensor, lens: torch.Tensor,
                     search: SearchOptions) -> list[Hypothesis]:
    """The beam-search code path with a beam of one (LAS.decode would take greedy_search)."""
    with torch.no_grad():
        _, enc_lens, memory, state = model._start(feats, lens)

        def step(prev: torch.Tensor, st: State) -> tuple[torch.Tensor, State]:
            logits, st = model.speller.step(prev, st, model.attention, memory)
            return torch.log_softmax(logits.float(), -1), st

        n = enc_lens.tolist()
        found = beam_search(step, state, [math.ceil(search.max_len_ratio * x) for x in n], beam=1)
    return [Hypothesis(tok.decode(f[0].tokens), f[0].tokens, model.rank(f[0], x, search))
            for f, x in zip(found, n, strict=True)]


@pytest.mark.slow
def test_nbest_sorted_by_score(trained: tuple[Path, Path, Path]) -> None:
    _, data, exp = trained
    model, tok, feats, lens = loaded_batch(data, exp)
    for lp, cov in [(0.0, 0.0), (0.6, 0.0), (0.0, 0.5)]:
        search = replace(TRAINED, beam_size=4, nbest=4, length_penalty=lp, coverage_penalty=cov)
        for nbest in model.decode(feats, lens, search, tokenizer=tok):
            scores = [h.score for h in nbest]
            assert len(nbest) == 4 and scores == sorted(scores, reverse=True)
            assert len({h.tokens for h in nbest}) == 4
            assert nbest[0].text in WORDS


@pytest.mark.slow
def test_fusion_through_the_model(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("kenlm")
    _, data, exp = trained
    model, tok, feats, lens = loaded_batch(data, exp)
    arpa = tmp_path / "chars.arpa"
    letters = sorted({c for w in WORDS for c in w})
    unigrams = "".join(f"-1\t{w}\t0\n" for w in ["<unk>", "</s>", *letters]) + "-99\t<s>\t0\n"
    arpa.write_text(f"\\data\\\nngram 1={len(letters) + 3}\nngram 2=1\n\n\\1-grams:\n{unigrams}\n"
                    "\\2-grams:\n-0.1\tz e\n\n\\end\\\n")
    fused = replace(TRAINED, lm=str(arpa), lm_weight=0.1)
    lm = load_fusion_lm(fused.lm, model.fusion_units(fused), tok.vocab)  # loaded once, outside the model
    assert isinstance(lm, UnitLM) and lm.path == arpa
    assert sorted(h.text for (h,) in model.decode(feats, lens, fused, lm, tokenizer=tok)) == sorted(WORDS)
    with pytest.raises(ValueError, match="pass its LM loaded"):  # the model opens no file
        model.decode(feats, lens, fused, tokenizer=tok)
    assert not any(isinstance(v, UnitLM) for v in vars(model).values())
    result = CliRunner().invoke(app, ["evaluate", str(exp / "last.pt"), str(data / "train.jsonl"), "--lm", str(arpa),
                                      "--set", "decode.lm_weight=0.1", "--report", str(tmp_path / "fused.json")])
    assert result.exit_code == 0 and "WER 0.00%" in result.stdout, result.output
    assert "beam 2 + LM 0.1" in result.stdout  # loaded once by inference, passed to decode


@pytest.mark.slow
def test_align_and_plot(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, data, exp = trained
    model, tok, feats, lens = loaded_batch(data, exp)
    aligned = model.attention_weights(feats, lens, TRAINED, tokenizer=tok)
    assert aligned is not None
    for i, (hyp, weights) in enumerate(aligned):
        frames = math.ceil(int(lens[i]) / model.time_reduction)
        assert weights.shape == (len(hyp.tokens) + 1, frames)
        assert torch.allclose(weights.sum(1), torch.ones(weights.shape[0]), atol=1e-5)
        labels = token_labels(hyp.tokens, tok)
        png = plot_attention(weights, labels, tmp_path / f"{i}.png")
        if importlib.util.find_spec("matplotlib") is not None:
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            continue
        width, height, pixels = read_gray_png(png.read_bytes())
        assert height == 14 * len(labels) and width > frames
        assert min(pixels) == 0 and max(pixels) == 255


def test_plot_rejects_mismatched_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one row per token"):
        plot_attention(torch.rand(3, 5), ["a", "b"], tmp_path / "x.png")


def read_gray_png(data: bytes) -> tuple[int, int, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    width = height = 0
    while pos < len(data):
        (n,), tag = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])[0] == zlib.crc32(tag + body)
        if tag == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert (depth, colour) == (8, 0)
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    assert len(raw) == height * (width + 1)
    return width, height, b"".join(raw[y * (width + 1) + 1 : (y + 1) * (width + 1)] for y in range(height))


def test_beam_size_option_sets_the_las_search(trained: tuple[Path, Path, Path]) -> None:
    """`asrkit evaluate --beam-size K` on LAS: its own search with a beam of K, the other settings kept."""
    from asrkit.checkpoint import load_checkpoint
    from asrkit.inference import DecodeRequest, choose_search

    corpus, data, exp = trained
    model, tok, feats, lens = loaded_batch(data, exp)
    beam1 = choose_search(load_checkpoint(exp / "last.pt"), DecodeRequest(settings={"beam_size": 1}))
    assert beam1 == replace(TRAINED, beam_size=1)  # the checkpoint's other [decode] settings kept
    assert sorted(h.text for (h,) in model.decode(feats, lens, beam1, tokenizer=tok)) == sorted(WORDS)
    result = CliRunner().invoke(app, ["evaluate", str(exp / "last.pt"), str(data / "train.jsonl"), "--beam-size", "2",
                                      "--report", str(corpus / "beam2.json")])
    assert result.exit_code == 0 and "WER 0.00%" in result.stdout and "beam 2" in result.stdout, result.output


def test_search_name_says_what_decode_does() -> None:
    model = make_las()
    assert describe(model.resolve_search(SearchOptions(beam_size=1)), model.objective) == "greedy"
    assert describe(model.resolve_search(SearchOptions()), model.objective) == "beam 4"  # the attention default
    search = model.resolve_search(SearchOptions(beam_size=3, nbest=2))
    assert describe(search, model.objective) == "beam 3" and search.nbest == 2
    joint = make_las(ctc_weight=0.5).resolve_search(SearchOptions(ctc_weight=0.3))
    assert describe(joint, "attention") == "beam 4 + CTC 0.3"
    assert describe(replace(joint, beam_size=1), "attention") == "beam 1 + CTC 0.3"  # CTC scores: not greedy
    with pytest.raises(AsrkitError, match="needs the CTC head that las.ctc_weight > 0 trains"):
        model.resolve_search(SearchOptions(ctc_weight=0.3))
    with pytest.raises(AsrkitError, match="shallow fusion needs both an LM"):
        model.resolve_search(SearchOptions(lm_weight=0.3))
