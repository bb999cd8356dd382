"""The model contract (asrkit.models.layers.ASRModel) over every entry of asrkit.models.MODELS under each encoder
kind ("": the family's own, "conformer"), tiny sizes: a finite loss whose gradients reach every parameter,
`decode` giving n-best lists of the asked length, `ctc_emissions`, `streaming`, and a save / load round trip
that decodes the same. Models hold no search settings: the same model decodes any SearchOptions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from asrkit.checkpoint import load_checkpoint, save_checkpoint
from asrkit.config import build_config
from asrkit.data.features import Featurizer
from asrkit.data.tokenizer import CharTokenizer
from asrkit.models import ENCODERS, MODELS, build_model
from asrkit.models.layers import ASRModel
from asrkit.records import Batch
from asrkit.search import SearchOptions

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_MELS = 20
TOK = CharTokenizer.train(["abcdefgh "])
OWN_SIZES: dict[str, dict[str, Any]] = {  # each family's own encoder (and objective), tiny
    "deepspeech2": {"model": {"conv_channels": 4, "rnn_layers": 1, "rnn_hidden": 16}},
    "las": {"las": {"listener_layers": 1, "pyramid_layers": 1, "listener_hidden": 8}},
    "transducer": {"transducer": {"encoder_layers": 1, "encoder_hidden": 16}},
}
OBJECTIVE_SIZES: dict[str, dict[str, Any]] = {  # the objective's own sizes, whatever the encoder
    "las": {"attention_dim": 8, "embedding_dim": 4, "speller_layers": 1, "speller_hidden": 16,
            "location_channels": 2, "location_kernel": 3, "dropout": 0.0, "ctc_weight": 0.3, "sampling_rate": 0.0},
    "transducer": {"predictor_embed": 4, "predictor_hidden": 16, "joint_dim": 16, "dropout": 0.0},
}
CONFORMER = {"kind": "conformer", "d_model": 16, "layers": 1, "heads": 2, "ff_mult": 2, "conv_kernel": 3,
             "dropout": 0.0}
TRANSFORMER = {"decoder": "transformer", "decoder_dim": 8, "decoder_layers": 2, "decoder_heads": 2, "decoder_ff": 16}
CONV_RNN = {"conv_channels": 4, "rnn_layers": 1, "rnn_hidden": 16}  # DeepSpeech2's encoder, tiny
# each family under each encoder kind, plus the attention objective with its Transformer decoder
CASES = [(family, kind) for family in MODELS for kind in ENCODERS] + [("las", "+transformer"),
                                                                      ("las", "conformer+transformer")]


def sections(family: str, kind: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"model": {"family": family}, "features": {"n_mels": N_MELS}}
    encoder, _, decoder = kind.partition("+")
    if encoder == "":
        for name, values in OWN_SIZES[family].items():
            out.setdefault(name, {}).update(values)
    elif encoder == "conv_rnn":  # e.g. a DS2 encoder under the transducer objective
        out["encoder"] = {"kind": "conv_rnn"}
        out["model"].update(CONV_RNN)
    else:
        out["encoder"] = CONFORMER
    if family in OBJECTIVE_SIZES:
        out.setdefault(family, {}).update(OBJECTIVE_SIZES[family])
    if decoder == "transformer":
        out[family].update(TRANSFORMER)
    return out


def make(family: str, kind: str) -> ASRModel:
    torch.manual_seed(0)
    return build_model(build_config(sections(family, kind)), N_MELS, len(TOK.vocab))


def batch() -> Batch:
    gen = torch.Generator().manual_seed(0)
    lens = [64, 47, 33]
    feats = torch.randn(3, max(lens), N_MELS, generator=gen)
    for i, n in enumerate(lens):
        feats[i, n:] = 0.0
    targets = torch.randint(1, len(TOK.vocab), (3, 4), generator=gen)
    return Batch(["a", "b", "c"], feats, torch.tensor(lens), targets, torch.tensor([4, 3, 2]), [""] * 3)


@pytest.mark.parametrize(("family", "kind"), CASES, ids=[f"{f}-{k or 'own'}" for f, k in CASES])
def test_loss_is_finite_and_reaches_every_parameter(family: str, kind: str) -> None:
    model = make(family, kind).train()
    loss = model.loss(batch())
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(("family", "kind"), CASES, ids=[f"{f}-{k or 'own'}" for f, k in CASES])
def test_decode_gives_nbest_lists_and_survives_a_save_load_round_trip(family: str, kind: str,
                                                                      tmp_path: Path) -> None:
    model = make(family, kind).eval()
    b = batch()
    for search, n in ((SearchOptions(beam_size=1), 1), (SearchOptions(beam_size=4, nbest=3), 3), (SearchOptions(), 1)):
        nbests = model.decode(b.feats, b.feat_lens, search, tokenizer=TOK)
        assert len(nbests) == 3 and all(len(hyps) == n for hyps in nbests), (search, nbests)
        for hyps in nbests:
            assert all(h.text == TOK.decode(list(h.tokens)) for h in hyps)
            scores = [h.score for h in hyps]
            assert scores == sorted(scores, reverse=True) and len({h.tokens for h in hyps}) == len(hyps)
    with torch.no_grad():
        em = model.ctc_emissions(b.feats, b.feat_lens, 0.01)
    if em is not None:  # a CTC head: log-probs over the vocabulary, blank = 0
        assert em.log_probs.shape[0] == 3 and em.log_probs.shape[2] == len(TOK.vocab)
        assert int(em.lengths.max()) == em.log_probs.shape[1]
        assert torch.allclose(em.log_probs.exp().sum(-1), torch.ones(em.log_probs.shape[:2]), atol=1e-4)
        assert em.frame_shift == pytest.approx(0.01 * model.time_reduction)
    if model.streaming:
        stream = model.start_stream(SearchOptions(beam_size=2, nbest=2))
        stream.accept(b.feats[0, :64])
        stream.finish()
        whole = model.decode(b.feats[:1], b.feat_lens[:1], SearchOptions(beam_size=2, nbest=2), tokenizer=TOK)[0]
        assert [h.tokens for h in stream.hypotheses(TOK)] == [h.tokens for h in whole]
    cfg = build_config(sections(family, kind))
    path = tmp_path / "model.pt"
    save_checkpoint(path, config=cfg, tokenizer=TOK, featurizer=Featurizer(cfg.features), model=model)
    loaded = load_checkpoint(path).model
    search = SearchOptions(beam_size=3, nbest=2)
    before = model.decode(b.feats, b.feat_lens, search, tokenizer=TOK)
    after = loaded.decode(b.feats, b.feat_lens, search, tokenizer=TOK)
    assert after == before  # texts, tokens, scores and word timings: identical


def test_the_capabilities_each_family_declares() -> None:
    """What the contract says of each entry: CTC emissions (LAS: with its CTC head), streaming (the transducer's
    own unidirectional encoder), attention to plot (LAS)."""
    b = batch()
    for family, kind in CASES:
        model = make(family, kind).eval()
        with torch.no_grad():
            em = model.ctc_emissions(b.feats, b.feat_lens, 0.01)
            aligned = model.attention_weights(b.feats, b.feat_lens, SearchOptions(beam_size=1), tokenizer=TOK)
        assert (em is not None) == (model.objective in ("ctc", "attention")), family  # this LAS has a CTC head
        assert model.streaming == (family == "transducer" and kind == ""), (family, kind)
        assert (aligned is not None) == (model.objective == "attention"), family
        if not model.streaming:
            with pytest.raises(ValueError, match="cannot stream"):
                model.start_stream(SearchOptions())


@pytest.mark.parametrize(("family", "kind"), CASES, ids=[f"{f}-{k or 'own'}" for f, k in CASES])
def test_vocab_layers_name_exactly_the_token_indexed_weights(family: str, kind: str) -> None:
    """`train --init` copies the rows of model.vocab_layers by token: they must be the weights whose first
    dimension grows with the vocabulary, and nothing else."""
    cfg = build_config(sections(family, kind))
    small, large = build_model(cfg, N_MELS, 10).state_dict(), build_model(cfg, N_MELS, 13).state_dict()
    grows = {k for k in small if small[k].dim() and large[k].shape[0] == small[k].shape[0] + 3}
    layers = make(family, kind).vocab_layers
    declared = {k for k in small if any(k.startswith(p + ".") for p in layers)}
    assert grows and declared == grows
