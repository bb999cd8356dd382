"""RNN-Transducer: the loss against a slow reference (values and gradients), memory-capped sub-batches, encoder
shapes and padding, greedy and beam search (exact n-best scores on a tiny model), streaming encoder state, and a
tiny real corpus that the model overfits through `fit` (the `asrkit train` loop)."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FSDD_ASSETS, losses_of_steps
from hypothesis import given, settings
from hypothesis import strategies as st

from asrkit.config import build_config
from asrkit.data.tokenizer import CharTokenizer
from asrkit.errors import AsrkitError
from asrkit.models import MODELS, build_model
from asrkit.models.transducer import Encoder, Transducer, plan_sub_batches
from asrkit.models.transducer_search import BeamSearch
from asrkit.records import Batch
from asrkit.search import SearchOptions, describe

N_MELS = 20
VOCAB = 7


pytestmark = pytest.mark.usefixtures("one_torch_thread")


GREEDY = SearchOptions(beam_size=1)
SMALL = {"encoder_layers": 2, "encoder_hidden": 16, "predictor_embed": 8, "predictor_hidden": 16, "joint_dim": 12,
         "dropout": 0.0, "input_stack": 2, "time_reduction": 2, "reduction_after": 1}


def make_model(vocab: int = VOCAB, seed: int = 0, **overrides: object) -> Transducer:
    torch.manual_seed(seed)
    cfg = build_config({"model": {"family": "transducer"}, "features": {"n_mels": N_MELS},
                        "transducer": {**SMALL, **overrides}})
    model = build_model(cfg, N_MELS, vocab)
    assert isinstance(model, Transducer)
    return model


def random_batch(lens: list[int], target_lens: list[int], vocab: int = VOCAB, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(len(lens), max(lens), N_MELS, generator=gen)
    for i, n in enumerate(lens):
        feats[i, n:] = 0.0
    targets = torch.randint(1, vocab, (len(lens), max(target_lens)), generator=gen)
    for i, u in enumerate(target_lens):
        targets[i, u:] = 0
    return Batch([f"u{i}" for i in range(len(lens))], feats, torch.tensor(lens), targets, torch.tensor(target_lens),
                 ["x"] * len(lens))


def reference_rnnt_loss(logits: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """-log p(y|x) by the forward recursion of Graves (2012), one utterance: logits (T, U+1, V), blank = 0."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    t_len, u_len = logits.shape[0], len(targets)
    alpha: dict[tuple[int, int], torch.Tensor] = {(0, 0): logp.new_zeros(())}
    for t in range(t_len):
        for u in range(u_len + 1):
            if t == u == 0:
                continue
            terms = []
            if t > 0:
                terms.append(alpha[t - 1, u] + logp[t - 1, u, 0])
            if u > 0:
                terms.append(alpha[t, u - 1] + logp[t, u - 1, targets[u - 1]])
            alpha[t, u] = torch.logsumexp(torch.stack(terms), dim=0)
    return -(alpha[t_len - 1, u_len] + logp[t_len - 1, u_len, 0])


# --- the loss -------------------------------------------------------------------------------------------


def test_torchaudio_rnnt_loss_matches_reference_values_and_gradients() -> None:
    import torchaudio.functional as taf

    gen = torch.Generator().manual_seed(3)
    t_lens, u_lens, vocab = [4, 6, 3], [2, 3, 0], 5
    logits = torch.randn(3, 6, 4, vocab, generator=gen, dtype=torch.float32, requires_grad=True)
    targets = torch.tensor([[1, 4, 0], [2, 2, 3], [0, 0, 0]])
    loss = taf.rnnt_loss(logits, targets.int(), torch.tensor(t_lens).int(), torch.tensor(u_lens).int(), blank=0,
                         reduction="none", fused_log_softmax=True)
    loss.sum().backward()
    ref_logits = logits.detach().double().requires_grad_(True)
    ref = torch.stack([reference_rnnt_loss(ref_logits[b, : t_lens[b], : u_lens[b] + 1],
                                           targets[b, : u_lens[b]].tolist()) for b in range(3)])
    ref.sum().backward()
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    assert logits.grad is not None
    torch.testing.assert_close(logits.grad.double(), ref_logits.grad, rtol=1e-4, atol=1e-5)


def full_joint_reference(model: Transducer, batch: Batch) -> torch.Tensor:
    """The model's loss the slow way: the whole (B, T', U+1, V) joint, the reference recursion per utterance."""
    enc, enc_lens = model.encoder(batch.feats, batch.feat_lens)
    pred = model.predictor(batch.targets)
    logits = model.joiner(model.joiner.enc_proj(enc)[:, :, None], model.joiner.pred_proj(pred)[:, None])
    losses = []
    for b in range(len(batch.ids)):
        t, u = int(enc_lens[b]), int(batch.target_lens[b])
        losses.append(reference_rnnt_loss(logits[b, :t, : u + 1], batch.targets[b, :u].tolist()))
    return torch.stack(losses).sum() / len(batch.ids)


@pytest.mark.parametrize("cap", [1, 2_000, 10**9], ids=["one-utterance-each", "some-grouped", "one-sub-batch"])
def test_model_loss_and_gradients_match_reference_at_any_memory_cap(cap: int) -> None:
    batch = random_batch([23, 40, 17, 31], [3, 5, 1, 4], seed=1)
    model = make_model(joint_max_elements=cap).train()
    loss = model.loss(batch)
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref = full_joint_reference(model, batch)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    for name, param in model.named_parameters():
        assert torch.isfinite(got[name]).all(), name
        assert got[name].abs().sum() > 0, f"{name} has an all-zero gradient"
        torch.testing.assert_close(got[name], param.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_loss_without_gradients_is_the_same_value() -> None:
    batch = random_batch([30, 21], [4, 2], seed=2)
    model = make_model(joint_max_elements=1).eval()
    with_grad = model.loss(batch)
    with torch.no_grad():
        without = model.loss(batch)
    torch.testing.assert_close(with_grad.detach(), without)


@given(enc_lens=st.lists(st.integers(1, 60), min_size=1, max_size=12), data=st.data(),
       cap=st.integers(1, 200_000), width=st.integers(2, 50))
@settings(max_examples=60, deadline=None)
def test_sub_batches_cover_every_utterance_once_within_the_cap(enc_lens: list[int], data: st.DataObject, cap: int,
                                                               width: int) -> None:
    target_lens = data.draw(st.lists(st.integers(0, 20), min_size=len(enc_lens), max_size=len(enc_lens)))
    groups = plan_sub_batches(enc_lens, target_lens, width, cap)
    assert sorted(i for g in groups for i in g) == list(range(len(enc_lens)))
    for g in groups:
        size = len(g) * max(enc_lens[i] for i in g) * (max(target_lens[i] for i in g) + 1) * width
        assert size <= cap or len(g) == 1


def test_training_steps_reduce_the_loss() -> None:
    losses = losses_of_steps(make_model().train(), random_batch([32, 24], [3, 2], seed=3), 5)
    assert losses[-1] < losses[0]


def test_auxiliary_ctc_head_mixes_the_losses_and_trains_the_encoder() -> None:
    batch = random_batch([30, 21], [4, 2], seed=4)
    plain, mixed = make_model(seed=5), make_model(seed=5, ctc_weight=0.3)
    assert plain.ctc is None and "ctc.weight" not in plain.state_dict()  # old checkpoints keep loading
    assert mixed.ctc is not None
    mixed.load_state_dict({**plain.state_dict(), **{f"ctc.{k}": v for k, v in mixed.ctc.state_dict().items()}})
    plain.eval(), mixed.eval()
    rnnt = plain.loss(batch)
    enc, enc_lens = mixed.encoder(batch.feats, batch.feat_lens)
    log_probs = torch.log_softmax(mixed.ctc(enc), -1).transpose(0, 1)
    ctc = torch.nn.functional.ctc_loss(log_probs, batch.targets, enc_lens, batch.target_lens, reduction="sum") / 2
    torch.testing.assert_close(mixed.loss(batch), 0.7 * rnnt + 0.3 * ctc)
    mixed.train().loss(batch).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mixed.ctc.parameters())
    # decoding never reads the head: the same weights decode the same with or without it
    tok = CharTokenizer(list("abcdef"))
    assert [n[0].tokens for n in plain.decode(batch.feats, batch.feat_lens, GREEDY, tokenizer=tok)] == \
        [n[0].tokens for n in mixed.eval().decode(batch.feats, batch.feat_lens, GREEDY, tokenizer=tok)]


# --- encoder --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack,reduction,after,bidir", [(1, 1, 0, False), (3, 2, 1, False), (2, 2, 0, True),
                                                         (1, 3, 2, False), (4, 1, 1, True)])
def test_encoder_lengths_and_padding_invariance(stack: int, reduction: int, after: int, bidir: bool) -> None:
    torch.manual_seed(0)
    enc = Encoder(N_MELS, layers=2, hidden=8, bidirectional=bidir, input_stack=stack, time_reduction=reduction,
                  reduction_after=after).eval()
    assert enc.time_reduction == stack * reduction
    lens = [37, 50, 5]
    batch = random_batch(lens, [1, 1, 1])
    with torch.no_grad():
        out, out_lens = enc(batch.feats, batch.feat_lens)
        assert out_lens.tolist() == [math.ceil(n / enc.time_reduction) for n in lens]
        assert out.shape == (3, math.ceil(50 / enc.time_reduction), enc.out_dim)
        for b, n in enumerate(lens):
            alone, _ = enc(batch.feats[b : b + 1, :n], torch.tensor([n]))
            torch.testing.assert_close(out[b, : int(out_lens[b])], alone[0], atol=1e-5, rtol=1e-4)


@given(n=st.integers(1, 90), cuts=st.lists(st.integers(0, 90), max_size=6), stack=st.integers(1, 3),
       reduction=st.integers(1, 3), after=st.integers(0, 2))
@settings(max_examples=40, deadline=None)
def test_streaming_encoder_equals_whole_utterance(n: int, cuts: list[int], stack: int, reduction: int,
                                                  after: int) -> None:
    torch.manual_seed(1)
    enc = Encoder(N_MELS, layers=2, hidden=8, input_stack=stack, time_reduction=reduction, reduction_after=after).eval()
    feats = torch.randn(1, n, N_MELS)
    with torch.no_grad():
        whole, lens = enc(feats, torch.tensor([n]))
        state, pieces = enc.init_stream(torch.device("cpu")), []
        bounds = [0, *sorted(c for c in cuts if c < n), n]
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            out, state = enc.step(feats[:, start:end], state)
            pieces.append(out)
        out, state = enc.step(feats[:, :0], state, final=True)
        pieces.append(out)
    streamed = torch.cat(pieces, dim=1)
    assert streamed.shape[1] == int(lens[0])
    torch.testing.assert_close(streamed, whole, atol=1e-5, rtol=1e-4)


def test_bidirectional_model_refuses_to_stream() -> None:
    model = make_model(bidirectional=True)
    assert not model.streaming and make_model().streaming
    with pytest.raises(ValueError, match="bidirectional"):
        model.start_stream(SearchOptions())


# --- decoding -------------------------------------------------------------------------------------------


def test_greedy_batched_equals_one_at_a_time_and_respects_lengths() -> None:
    tok = CharTokenizer(list("abcdef"))
    model = make_model().eval()
    batch = random_batch([41, 12, 29], [1, 1, 1], seed=5)
    hyps = [n[0] for n in model.decode(batch.feats, batch.feat_lens, GREEDY, tokenizer=tok, frame_shift=0.01)]
    for b, n in enumerate([41, 12, 29]):
        ((alone,),) = model.decode(batch.feats[b : b + 1, :n], torch.tensor([n]), GREEDY, tokenizer=tok,
                                   frame_shift=0.01)
        assert hyps[b].tokens == alone.tokens
        assert hyps[b].score == pytest.approx(alone.score, abs=1e-4)
        assert hyps[b].text == tok.decode(list(alone.tokens))
        audio_end = math.ceil(n / model.time_reduction) * 0.01 * model.time_reduction
        assert all(0 <= w.start < w.end <= audio_end + 1e-9 for w in hyps[b].words)


def test_beam_search_scores_are_exact_sequence_probabilities() -> None:
    """Without pruning (huge beam) and with max_symbols >= the tokens of a sequence, the merged score of every
    sequence is log p(y|x), the sum over all its alignments: exp(-RNN-T loss)."""
    model = make_model(vocab=3, seed=4).eval()
    feats, lens = torch.randn(1, 12, N_MELS), torch.tensor([12])
    with torch.no_grad():
        enc, enc_lens = model.encoder(feats, lens)
        assert int(enc_lens[0]) == 3
        enc_j = model.joiner.enc_proj(enc)
        search = BeamSearch(model.predictor, model.joiner, beam=100_000, max_symbols=3, device=torch.device("cpu"))
        search.advance(enc_j)
        paths = search.paths()
        checked = 0
        for path in paths:
            if len(path.tokens) > 3:
                continue
            targets = torch.tensor([list(path.tokens)], dtype=torch.long)
            pred = model.predictor(targets)
            logits = model.joiner(enc_j[:, :, None], model.joiner.pred_proj(pred)[:, None])[0]
            assert path.score == pytest.approx(-float(reference_rnnt_loss(logits, list(path.tokens))), abs=1e-4)
            checked += 1
    assert checked == 1 + 2 + 4 + 8  # every sequence of up to 3 tokens over 2 symbols
    assert sum(math.exp(p.score) for p in paths) <= 1.0 + 1e-6  # distinct sequences: at most all the mass


def test_beam_nbest_is_sorted_unique_and_bounded() -> None:
    tok = CharTokenizer(list("abcdef"))
    model = make_model().eval()
    search = SearchOptions(beam_size=5, nbest=3)
    batch = random_batch([40, 22], [1, 1], seed=6)
    nbests = model.decode(batch.feats, batch.feat_lens, search, tokenizer=tok)
    for hyps in nbests:
        assert 1 <= len(hyps) <= 3
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({h.tokens for h in hyps}) == len(hyps)
    best = model.decode(batch.feats, batch.feat_lens, replace(search, nbest=1), tokenizer=tok)
    assert [h.tokens for (h,) in best] == [n[0].tokens for n in nbests]


def test_registry_and_config_errors() -> None:
    assert "transducer" in MODELS
    cases: list[tuple[dict[str, Any], str]] = [
        ({"transducer": {"decoding": "beam"}}, "config transducer.decoding: the search settings of every model are "
                                               "in [decode] now; set decode.beam_size instead (greedy: 1)"),
        ({"transducer": {"encoder_layers": 2, "reduction_after": 3}}, "reduction_after must be 0-2"),
        ({"decode": {"nbest": 5, "beam_size": 4}}, "config [decode]: nbest 5 is larger than the beam size 4"),
        ({"decode": {"length_penalty": 0.5}}, "config [decode]: decode setting(s) length_penalty set, but a model "
                                              "with the transducer objective does not read them"),
        ({"transducer": {"encoder_layers": 0}}, "encoder_layers must be at least 1"),
        ({"transducer": {"ctc_weight": 1.0}}, "transducer.ctc_weight must be in [0, 1), got 1.0")]
    for sections, fragment in cases:
        with pytest.raises(AsrkitError) as info:
            cfg = build_config({"model": {"family": "transducer"}, "features": {"n_mels": N_MELS}, **sections})
            build_model(cfg, N_MELS, VOCAB)
        assert fragment in str(info.value)


# --- overfit a tiny real corpus through fit() -----------------------------------------------------------

WORDS = ["zero", "one", "two", "three"]
TINY: dict[str, dict[str, Any]] = {
    "model": {"family": "transducer"},
    "transducer": {"encoder_layers": 2, "encoder_hidden": 64, "predictor_embed": 32, "predictor_hidden": 64,
                   "joint_dim": 64, "dropout": 0.0, "input_stack": 3, "time_reduction": 2, "reduction_after": 1},
    "features": {"n_mels": 40, "spec_augment": False},
    "train": {"epochs": 25, "lr": 1e-2, "warmup_steps": 5, "anneal": 1.0, "batch_seconds": 10.0, "num_workers": 0,
              "save_every_steps": 0, "seed": 7},
}


def tiny_trained(factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Train once per test session (test_stream.py reuses it): four recordings of digits 0-3, one speaker."""
    from asrkit.data.audio import audio_info
    from asrkit.data.manifest import write_manifest
    from asrkit.records import Utterance
    from asrkit.train import fit

    root = factory.getbasetemp() / "tiny-transducer"
    data, exp = root / "data", root / "exp"
    if not (root / ".done").is_file():
        shutil.rmtree(root, ignore_errors=True)
        data.mkdir(parents=True)
        utts = []
        for digit, word in enumerate(WORDS):
            wav = data / f"{word}.wav"
            shutil.copy(FSDD_ASSETS / f"{digit}_jackson_5.wav", wav)
            utts.append(Utterance(word, str(wav), audio_info(wav)[0], word, "jackson"))
        write_manifest(data / "train.jsonl", utts)
        shutil.copy(data / "train.jsonl", data / "dev.jsonl")
        with pytest.MonkeyPatch.context() as patch:  # fit() would otherwise use a thread per core; see one_thread
            patch.setenv("OMP_NUM_THREADS", "1")
            fit(build_config(TINY), data, exp, progress=False)
        (root / ".done").touch()
    return data, exp


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_trained(tmp_path_factory)


@pytest.mark.slow
def test_overfits_a_tiny_corpus_and_transcribes_it(trained: tuple[Path, Path]) -> None:
    from asrkit.checkpoint import load_checkpoint
    from asrkit.data.audio import load_audio
    from asrkit.evaluate import evaluate
    from asrkit.transcribe import transcribe

    data, exp = trained
    history = [json.loads(line) for line in (exp / "history.jsonl").read_text().splitlines()]
    assert history[-1]["dev_wer"] == 0.0 and history[-1]["dev_cer"] == 0.0
    wavs = [data / f"{w}.wav" for w in WORDS]
    results, failures = transcribe(exp, wavs, device="cpu")
    assert not failures and [h.text for _, h in results] == WORDS
    assert all(h.words and h.words[0].word == h.text for _, h in results)
    assert evaluate(exp / "best.pt", data / "dev.jsonl", device="cpu").wer == 0.0
    loaded = load_checkpoint(exp, "cpu")  # beam search on the same weights
    model = loaded.model
    assert isinstance(model, Transducer)
    feats = loaded.featurizer(load_audio(wavs[2], 16000))
    nbest = model.decode(feats[None], torch.tensor([len(feats)]), SearchOptions(beam_size=4, nbest=2),
                         tokenizer=loaded.tokenizer)[0]
    assert nbest[0].text == "two" and len(nbest) == 2 and nbest[0].score > nbest[1].score


@pytest.mark.slow
def test_beam_size_option_picks_the_transducers_own_search(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """`evaluate/transcribe --beam-size K` on a transducer: its own beam search of K (1: greedy), not CTC LM
    beam search; an LM option is an error that says so."""
    from typer.testing import CliRunner

    from asrkit.checkpoint import load_checkpoint
    from asrkit.cli import EXIT_USER_ERROR, app
    from asrkit.data.manifest import read_manifest
    from asrkit.inference import decode_nbest, prepare_search

    data, exp = trained
    utts = read_manifest(data / "dev.jsonl")
    loaded = load_checkpoint(exp, "cpu")
    assert describe(prepare_search(loaded)[0], loaded.model.objective) == "greedy"  # as trained (TINY)
    for beam, nbest, name in ((1, 1, "greedy"), (3, 2, "beam 3")):
        search = SearchOptions(beam_size=beam, nbest=nbest)
        assert describe(prepare_search(loaded, search)[0], loaded.model.objective) == name
        found = list(decode_nbest(loaded, utts, search=search))
        assert [hyps[0].text for _, hyps in found] == WORDS
        assert all(len(hyps) == nbest for _, hyps in found)  # --nbest: the search's n-best list comes back
    run = CliRunner().invoke(app, ["evaluate", str(exp), str(data / "dev.jsonl"), "--beam-size", "3", "--device",
                                   "cpu", "--report", str(tmp_path / "r.json")])
    assert run.exit_code == 0 and "WER 0.00%" in run.stdout and "beam 3" in run.stdout, run.output
    run = CliRunner().invoke(app, ["evaluate", str(exp), str(data / "dev.jsonl"), "--alpha", "1", "--lm",
                                   str(tmp_path / "x.bin"), "--device", "cpu"])
    assert run.exit_code == EXIT_USER_ERROR
    assert ("decode setting(s) alpha set, but a model with the transducer objective does not read them (they "
            "apply to ctc models)") in run.stderr  # --lm itself is read: word-LM fusion (decode.lm_weight)


def test_the_search_is_named_from_the_options_not_the_model() -> None:
    model = make_model()
    assert describe(model.resolve_search(SearchOptions()), model.objective) == "greedy"  # the default: beam 1
    search = model.resolve_search(SearchOptions(beam_size=4, nbest=2))
    assert (describe(search, model.objective), search.nbest) == ("beam 4", 2)
    assert model.resolve_search(SearchOptions(nbest=3)).beam_size == 3  # the default beam holds the n-best list
    with pytest.raises(AsrkitError, match="nbest 3 is larger than the beam size 2"):
        SearchOptions(beam_size=2, nbest=3)
