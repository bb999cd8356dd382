"""`asrkit train --init CKPT`: a new run starts from another checkpoint's weights wherever name and shape match
(a CTC run's Conformer encoder under a transducer), the rest fresh; nothing in common, or --init with --resume, is
a clear error; recipes pass --init to the train stage only when they start it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_multi_data import _corpus
from test_recipes import RECIPES, run_recipe, stub_calls, stub_recipe_dirs
from typer.testing import CliRunner

from asrkit.checkpoint import read_checkpoint
from asrkit.cli import app
from asrkit.config import build_config
from asrkit.errors import AsrkitError
from asrkit.train import fit

ENCODER = {"kind": "conformer", "d_model": 16, "layers": 1, "heads": 2, "ff_mult": 2, "conv_kernel": 3,
           "subsampling_channels": 4, "dropout": 0.0}
COMMON = {"features": {"n_mels": 20, "spec_augment": False},
          "train": {"epochs": 1, "max_steps": 1, "lr": 1e-3, "warmup_steps": 1, "batch_seconds": 20.0,
                    "num_workers": 0, "save_every_steps": 0, "seed": 3}}
CTC = {**COMMON, "encoder": ENCODER}
TRANSDUCER = {**COMMON, "model": {"family": "transducer"}, "encoder": ENCODER,
              "transducer": {"predictor_embed": 8, "predictor_hidden": 16, "joint_dim": 12}}


@pytest.fixture(scope="module")
def ctc_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("init")
    data = _corpus(root, "a", {"zero": "0_jackson_5.wav", "one": "1_jackson_5.wav"})
    fit(build_config(CTC), data, root / "ctc", progress=False)
    return data, root / "ctc"


def test_a_ctc_encoder_starts_a_transducer(ctc_run: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    data, ctc = ctc_run
    cfg = build_config({**TRANSDUCER, "train": {**TRANSDUCER["train"], "lr": 0.0}})
    fit(cfg, data, tmp_path / "rnnt", progress=False, init=ctc)  # one step at rate 0: the weights as initialised
    source, started = read_checkpoint(ctc)["model"], read_checkpoint(tmp_path / "rnnt" / "last.pt")
    encoder = [k for k in source if k.startswith("encoder.")]
    assert encoder and all(torch.equal(source[k], started["model"][k]) for k in encoder)
    assert started["train"]["init"] == str(ctc)
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert f"initialised {len(encoder)} of {len(started['model'])} weight tensors" in out
    assert "kept fresh: joiner (5), predictor (5)" in out  # the CTC head (other name) is not copied


@pytest.mark.parametrize("family", ["transducer", "las"])
def test_roles_match_across_families(family: str, ctc_run: tuple[Path, Path], tmp_path: Path) -> None:
    """The CTC layer (`head`) starts a transducer's auxiliary CTC head; the encoder starts LAS's listener."""
    data, ctc = ctc_run
    sections = {"transducer": {**TRANSDUCER, "transducer": {**TRANSDUCER["transducer"], "ctc_weight": 0.3}},
                "las": {**CTC, "model": {"family": "las"},
                        "las": {"decoder": "transformer", "decoder_dim": 16, "decoder_layers": 1, "decoder_heads": 2,
                                "decoder_ff": 32, "ctc_weight": 0.3}}}[family]
    fit(build_config({**sections, "train": {**COMMON["train"], "lr": 0.0}}), data, tmp_path / family, progress=False,
        init=ctc)
    source, started = read_checkpoint(ctc)["model"], read_checkpoint(tmp_path / family / "last.pt")["model"]
    encoder = "listener" if family == "las" else "encoder"
    pairs = [(k, f"{encoder}.{k[8:]}") for k in source if k.startswith("encoder.")]
    pairs += [(k, f"ctc.{k[5:]}") for k in source if k.startswith("head.")]
    assert len(pairs) > 2 and all(torch.equal(source[a], started[b]) for a, b in pairs)


def test_an_init_with_no_shared_weights_or_with_resume_is_an_error(ctc_run: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    data, ctc = ctc_run
    own = build_config({**COMMON, "model": {"conv_layers": 1, "conv_channels": 4, "rnn_layers": 1, "rnn_hidden": 8}})
    with pytest.raises(AsrkitError, match=r"--init .*: none of its \d+ weight tensors matches this model"):
        fit(own, data, tmp_path / "ds2", progress=False, init=ctc)
    with pytest.raises(AsrkitError, match="give one of them"):
        fit(build_config(CTC), data, tmp_path / "x", progress=False, init=ctc, resume=True)
    result = CliRunner().invoke(app, ["train", "--data", str(data), "--exp", str(tmp_path / "y"), "--init",
                                      str(tmp_path / "missing.pt")])
    assert result.exit_code == 2 and "missing.pt" in result.output


def test_an4_recipe_passes_init_to_a_fresh_train_stage_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir, data, exp, log = stub_recipe_dirs(tmp_path, monkeypatch, "yes")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    args = ("--stage", "2", "--stop-stage", "2", "--data", str(data), "--init", "/models/ctc.pt")
    run_recipe(RECIPES / "an4" / "run.sh", *args, "--exp", str(fresh), bin_dir=bin_dir)
    [call] = [c for c in stub_calls(log) if c.startswith("train ")]
    assert "--init /models/ctc.pt" in call and "--resume" not in call
    (exp / "last.pt").write_bytes(b"")  # an interrupted run: resumed, its last.pt has the weights
    run_recipe(RECIPES / "an4" / "run.sh", *args, "--exp", str(exp), bin_dir=bin_dir)
    call = [c for c in stub_calls(log) if c.startswith("train ")][-1]
    assert "--resume" in call and "--init" not in call


def test_the_cli_documents_it() -> None:
    result = CliRunner().invoke(app, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0 and "--init" in result.output


def test_token_rows_follow_the_token_when_the_vocabularies_differ(ctc_run: tuple[Path, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Another corpus's characters: the CTC layer's rows of the tokens both vocabularies have come from the
    checkpoint's row of the same token (not the same position); the new tokens' rows stay fresh."""
    _, ctc = ctc_run
    other = _corpus(tmp_path, "b", {"two": "2_jackson_5.wav", "three": "3_jackson_5.wav"})
    fit(build_config({**CTC, "train": {**COMMON["train"], "lr": 0.0}}), other, tmp_path / "b_ctc", progress=False,
        init=ctc)
    source, started = read_checkpoint(ctc), read_checkpoint(tmp_path / "b_ctc" / "last.pt")
    theirs = ["<blank>", *source["tokenizer"]["chars"]]
    mine = ["<blank>", *started["tokenizer"]["chars"]]
    assert mine != theirs and len(mine) != len(theirs)
    both = [t for t in mine if t in theirs]
    assert set(both) >= {"<blank>", "o", "e", "r"} and "t" in mine and "t" not in theirs
    for name in ("head.weight", "head.bias"):
        for token in both:
            assert torch.equal(started["model"][name][mine.index(token)], source["model"][name][theirs.index(token)])
        assert not torch.equal(started["model"][name][mine.index("t")], source["model"][name][theirs.index("z")])
    out = capsys.readouterr()
    assert (f"2 token-indexed tensor(s) copied row by token ({len(both)} of {len(mine)} tokens in both "
            "vocabularies)") in out.out + out.err
