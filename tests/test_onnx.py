"""ONNX export and ONNX Runtime inference (asrkit.onnx): every exportable family (CTC: DeepSpeech2's own encoder,
a Conformer; transducer: its own bidirectional LSTM encoder, a Conformer, DeepSpeech2's encoder) exported from a
tiny model, its output layer scaled up so that its transcripts are confident (random weights: equal log-probs,
not accuracy, are tested), then compared with PyTorch on real speech (the embedded FSDD recordings, and AN4 under
../shared/data when present).

Tolerances: the numpy front end (float64 FFT) is within FEATURE_TOL of the torch one (float32 STFT); given the same
features, the graphs' outputs (log-probs, encoder frames) are within OUTPUT_TOL of PyTorch's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import FSDD_ASSETS, ROOT, needs_kenlm, shared_data

from asrkit.checkpoint import load_checkpoint, save_checkpoint
from asrkit.config import build_config
from asrkit.data.audio import load_audio
from asrkit.data.features import Featurizer
from asrkit.data.tokenizer import CharTokenizer
from asrkit.errors import AsrkitError
from asrkit.models import build_model
from asrkit.onnx.bundle import MANIFEST
from asrkit.onnx.export import export
from asrkit.onnx.frontend import load_wave, resample
from asrkit.onnx.runtime import load_model
from asrkit.records import Utterance
from asrkit.request import DecodeRequest
from asrkit.transcribe import transcribe_nbest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FEATURE_TOL = 2e-3  # numpy vs torch log-mel features, after normalisation
OUTPUT_TOL = 1e-4  # ONNX Runtime vs PyTorch graph outputs on the same features (float32)
N_MELS = 20
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TOK = CharTokenizer.train([" ".join(WORDS)])
CONFORMER = {"kind": "conformer", "d_model": 16, "layers": 2, "heads": 2, "ff_mult": 2, "conv_kernel": 3,
             "dropout": 0.0}
PREDICTOR = {"predictor_embed": 8, "predictor_hidden": 16, "joint_dim": 16, "dropout": 0.0}
FAMILIES: dict[str, dict[str, Any]] = {
    "ctc-own": {"model": {"family": "deepspeech2", "conv_layers": 2, "conv_channels": 4, "rnn_layers": 2,
                          "rnn_hidden": 16}},
    "ctc-conformer": {"model": {"family": "deepspeech2"}, "encoder": CONFORMER},
    "transducer-own": {"model": {"family": "transducer"},
                       "transducer": {"encoder_layers": 2, "encoder_hidden": 16, "bidirectional": True, **PREDICTOR}},
    "transducer-conformer": {"model": {"family": "transducer"}, "encoder": CONFORMER, "transducer": PREDICTOR},
    "transducer-conv_rnn": {"model": {"family": "transducer", "conv_channels": 4, "rnn_layers": 1, "rnn_hidden": 16,
                                      "rnn_type": "lstm"}, "encoder": {"kind": "conv_rnn"}, "transducer": PREDICTOR},
}
FSDD = sorted(FSDD_ASSETS.glob("*_jackson_*.wav"))[:6] + sorted(FSDD_ASSETS.glob("*_nicolas_*.wav"))[:2]


def tiny_checkpoint(folder: Path, sections: dict[str, Any], sharpen: float = 6.0) -> Path:
    """An untrained tiny model with real feature statistics (FSDD); its output layer scaled by `sharpen`, so its
    outputs are confident and its transcripts not empty."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = build_config({"features": {"n_mels": N_MELS}, **sections})
    feat = Featurizer(cfg.features)
    feat.fit_stats(load_audio(p, cfg.features.sample_rate) for p in FSDD)
    torch.manual_seed(0)
    model = build_model(cfg, N_MELS, len(TOK.vocab)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.split(".")[0] in ("fc", "head") or name.startswith("joiner.out"):
                param.mul_(sharpen)
    save_checkpoint(folder / "best.pt", config=cfg, tokenizer=TOK, featurizer=feat, model=model)
    return folder / "best.pt"


@pytest.fixture(scope="module", params=list(FAMILIES))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, exported folder) of each family."""
    folder = tmp_path_factory.mktemp(request.param)
    checkpoint = tiny_checkpoint(folder / "exp", FAMILIES[request.param])
    export(checkpoint, folder / "onnx")
    return checkpoint, folder / "onnx"


def speech() -> list[Path]:
    """Real speech: the embedded FSDD recordings (8 kHz, resampled), and AN4 (16 kHz NIST SPHERE) when present."""
    an4 = sorted((shared_data() / "an4" / "wav" / "an4_clstk").glob("*/*.sph"))[:4]
    return FSDD + an4


def torch_outputs(checkpoint: Path, waves: list[torch.Tensor]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """PyTorch's features and graph outputs (CTC log-probs, or the transducer's projected encoder frames) of each
    wave, computed one utterance at a time."""
    loaded = load_checkpoint(checkpoint)
    feats, outs = [], []
    with torch.no_grad():
        for wave in waves:
            f = loaded.featurizer(wave)
            lens = torch.tensor([len(f)])
            if loaded.model.objective == "ctc":
                out, n = loaded.model(f[None], lens)
            else:
                enc, n = loaded.model.encoder(f[None], lens)  # type: ignore[operator]
                out = loaded.model.joiner.enc_proj(enc)  # type: ignore[union-attr]
            feats.append(f.numpy())
            outs.append(out[0, : int(n[0])].numpy())
    return feats, outs


def test_frontend_reads_resamples_and_computes_features_as_torch(exported: tuple[Path, Path]) -> None:
    checkpoint, folder = exported
    model = load_model(folder)
    loaded = load_checkpoint(checkpoint)
    for path in speech()[::3]:
        wave = load_wave(Utterance("x", str(path), 1.0, ""), model.sample_rate)
        reference = load_audio(path, model.sample_rate)
        assert len(wave) == len(reference) and np.abs(wave - reference.numpy()).max() < 1e-5
        assert np.abs(model.frontend(wave) - loaded.featurizer(reference).numpy()).max() < FEATURE_TOL
    assert len(resample(np.ones(1000, dtype=np.float32), 8000, 11025)) == 1379  # ceil(1000 * 11025 / 8000)


def test_exported_outputs_equal_torch_on_real_speech_in_one_batch(exported: tuple[Path, Path]) -> None:
    """One padded batch through ONNX Runtime (dynamic batch and time) against each utterance alone in PyTorch."""
    checkpoint, folder = exported
    model = load_model(folder)
    paths = speech()
    feats, reference = torch_outputs(checkpoint, [load_audio(p, model.sample_rate) for p in paths])
    out, lens = model.forward(feats)
    assert out.shape[0] == len(paths)
    for b, ref in enumerate(reference):
        assert int(lens[b]) == len(ref)
        assert np.abs(out[b, : len(ref)] - ref).max() < OUTPUT_TOL, paths[b]


def test_dynamic_axes_batch_1_and_8_half_a_second_and_a_minute(exported: tuple[Path, Path]) -> None:
    checkpoint, folder = exported
    model = load_model(folder)
    speech_16k = torch.cat([load_audio(p, model.sample_rate) for p in FSDD])
    minute = speech_16k.repeat(60 * 16000 // len(speech_16k) + 1)[: 60 * 16000]
    waves = [minute[:8000], minute] + [minute[i * 20000 : i * 20000 + 8000 + 4000 * i] for i in range(7)]
    feats, reference = torch_outputs(checkpoint, waves)
    for batch in ([0], [1], [0, *range(2, 9)]):  # 0.5 s alone, 60 s alone, 8 utterances of 0.5 to 2.25 s
        out, lens = model.forward([feats[i] for i in batch])
        for b, i in enumerate(batch):
            assert int(lens[b]) == len(reference[i])
            assert np.abs(out[b, : len(reference[i])] - reference[i]).max() < OUTPUT_TOL, (batch, i)


@pytest.mark.parametrize("beam", [1, 4])
def test_transcripts_are_identical(exported: tuple[Path, Path], beam: int) -> None:
    """Greedy and beam search (CTC: asrkit's prefix search without an LM; transducer: its beam search), n-best."""
    checkpoint, folder = exported
    request = DecodeRequest(settings={"beam_size": beam, "nbest": min(beam, 2)})
    paths = [str(p) for p in speech()[:6]]
    ours, failed = transcribe_nbest(folder, paths, decode=request, batch_size=4, workers=1)
    theirs, _ = transcribe_nbest(checkpoint, paths, decode=request, batch_size=4, workers=1)
    assert not failed and [p for p, _ in ours] == paths
    assert [[h.text for h in hyps] for _, hyps in ours] == [[h.text for h in hyps] for _, hyps in theirs]
    assert any(hyps[0].text for _, hyps in ours)  # confident outputs, not all blanks
    for (_, a), (_, b) in zip(ours, theirs, strict=True):
        assert [h.words for h in a] == [h.words for h in b]
        assert a[0].score == pytest.approx(b[0].score, abs=1e-3)


def test_long_recordings_are_cut_at_pauses_and_stitched_alike(tmp_path: Path) -> None:
    """A 50 s recording (connected FSDD digits with pauses) is cut into pieces read by offset, as for a checkpoint."""
    checkpoint = tiny_checkpoint(tmp_path / "exp", FAMILIES["ctc-own"])
    folder = export(checkpoint, tmp_path / "onnx").folder
    pause = np.zeros(4000, dtype=np.float32)
    parts = [np.concatenate([load_audio(p, 16000).numpy(), pause]) for p in FSDD]
    wave = np.concatenate(parts * (50 * 16000 // sum(map(len, parts)) + 1))[: 50 * 16000]
    sf.write(str(tmp_path / "long.wav"), wave, 16000)
    ours, _ = transcribe_nbest(folder, [str(tmp_path / "long.wav")], segment_seconds=20)
    theirs, _ = transcribe_nbest(checkpoint, [str(tmp_path / "long.wav")], segment_seconds=20)
    assert ours[0][1][0].text == theirs[0][1][0].text and ours[0][1][0].words == theirs[0][1][0].words
    assert ours[0][1][0].words[-1].start > 20.0  # past the first piece: timed from the start of the file


ARPA = ("\\data\\\nngram 1=12\nngram 2=10\n\n\\1-grams:\n"
        + "".join(f"-1.0\t{w}\t-0.3\n" for w in ["<s>", "</s>", *WORDS]) + "\n\\2-grams:\n"
        + "".join(f"-0.5\t<s> {w}\n" for w in WORDS) + "\n\\end\\\n")


@needs_kenlm
@pytest.mark.parametrize("family", ["ctc-own", "transducer-own"])
def test_lm_searches_are_identical(family: str, tmp_path: Path) -> None:
    """CTC beam search with a KenLM word LM (flashlight), and the transducer's beam search with shallow fusion."""
    checkpoint = tiny_checkpoint(tmp_path / "exp", FAMILIES[family])
    folder = export(checkpoint, tmp_path / "onnx").folder
    (tmp_path / "digits.arpa").write_text(ARPA, encoding="utf-8")
    settings: dict[str, Any] = {"lm": str(tmp_path / "digits.arpa"), "beam_size": 8}
    if family.startswith("transducer"):
        settings.update(lm_weight=0.5, lm_units="words")
    paths = [str(p) for p in FSDD[:4]]
    ours, _ = transcribe_nbest(folder, paths, decode=DecodeRequest(settings=settings), workers=1)
    theirs, _ = transcribe_nbest(checkpoint, paths, decode=DecodeRequest(settings=settings), workers=1)
    assert [h[0].text for _, h in ours] == [h[0].text for _, h in theirs]


def test_attention_models_cannot_export_and_say_so(tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "exp", {"model": {"family": "las"}, "las": {
        "listener_layers": 1, "pyramid_layers": 1, "listener_hidden": 8, "attention_dim": 8, "embedding_dim": 4,
        "speller_layers": 1, "speller_hidden": 16}})
    with pytest.raises(AsrkitError, match=r"las model \(the attention objective\) cannot be exported to ONNX"):
        export(checkpoint, tmp_path / "onnx")
    assert not (tmp_path / "onnx" / MANIFEST).exists()


def test_broken_exports_are_clear_errors(tmp_path: Path) -> None:
    folder = export(tiny_checkpoint(tmp_path / "exp", FAMILIES["ctc-own"]), tmp_path / "onnx").folder
    graph, optimized = folder / "model.onnx", folder / "model.ort.onnx"  # the portable graph, onnxruntime's copy
    good = graph.read_bytes()
    for broken in (b"not a graph at all", good[: len(good) // 2]):
        optimized.write_bytes(broken)
        with pytest.raises(AsrkitError, match=r"model\.ort\.onnx: not a readable ONNX graph .*asrkit export"):
            load_model(folder)
    optimized.unlink()  # without its optimised copy, the portable graph is read
    assert load_model(folder).forward([np.zeros((30, N_MELS), dtype=np.float32)])[0].shape[0] == 1
    graph.write_bytes(b"\x08\x07junk")
    with pytest.raises(AsrkitError, match=r"model\.onnx: not a readable ONNX graph .*asrkit export"):
        load_model(folder)
    graph.unlink()
    with pytest.raises(AsrkitError, match=r"the model graph \(model\.onnx\) is missing"):
        load_model(folder)
    graph.write_bytes(good)
    meta = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(AsrkitError, match="written by a newer asrkit"):
        load_model(folder)
    (folder / MANIFEST).write_text("{")
    with pytest.raises(AsrkitError, match="asrkit-onnx.json: not a JSON file"):
        load_model(folder)
    with pytest.raises(AsrkitError, match="is not an exported model"):
        load_model(tmp_path / "exp")
    with pytest.raises(AsrkitError, match="unknown --quantize"):
        export(tmp_path / "exp", tmp_path / "other", quantize="int4")
    with pytest.raises(AsrkitError, match="holds checkpoints; export to a folder of its own"):
        export(tmp_path / "exp", tmp_path / "exp")


def test_int8_export_is_quantised_and_close(tmp_path: Path) -> None:
    import onnx

    checkpoint = tiny_checkpoint(tmp_path / "exp", FAMILIES["ctc-conformer"])
    export(checkpoint, tmp_path / "fp32")
    int8 = export(checkpoint, tmp_path / "int8", quantize="int8")
    ops = {node.op_type for node in onnx.load(str(int8.graphs["model"])).graph.node}
    assert int8.quantize == "int8" and {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    assert json.loads((tmp_path / "int8" / MANIFEST).read_text())["quantize"] == "int8"
    feats = [load_model(tmp_path / "fp32").frontend(load_wave(Utterance("x", str(p), 1.0, ""), 16000))
             for p in FSDD[:2]]
    a, _ = load_model(tmp_path / "fp32").forward(feats)
    b, _ = load_model(tmp_path / "int8").forward(feats)
    assert 0 < np.abs(np.exp(a) - np.exp(b)).mean() < 0.01  # quantised, and still nearly the same distribution


@pytest.mark.slow  # a fresh interpreter: 2-6 s
def test_onnx_runtime_path_does_not_import_torch(tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "exp", FAMILIES["transducer-own"])
    folder = export(checkpoint, tmp_path / "onnx").folder
    code = ("import sys; from asrkit.cli import app; from typer.testing import CliRunner; "
            f"r = CliRunner().invoke(app, ['transcribe', {str(folder)!r}, {str(FSDD[0])!r}, '--beam-size', '2']); "
            "print(r.exit_code, 'torch' in sys.modules, r.output.strip().split(chr(9))[0])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stdout.split() == ["0", "False", str(FSDD[0])], done.stdout + done.stderr


@pytest.mark.slow  # an export, two transcribe and two evaluate runs: 2-7 s
def test_cli_export_transcribe_evaluate_match_the_checkpoint(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from asrkit.cli import app

    def run(*args: Any) -> tuple[int, str]:
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert "Traceback" not in result.output
        return result.exit_code, result.stdout if args[0] == "transcribe" else result.output

    checkpoint = tiny_checkpoint(tmp_path / "exp", FAMILIES["ctc-conformer"])
    code, out = run("export", checkpoint.parent, tmp_path / "onnx")
    assert code == 0 and "model.onnx" in out
    (tmp_path / "bad.wav").write_bytes(b"RIFF")
    files = [*FSDD[:3], tmp_path / "bad.wav"]
    onnx_code, onnx_out = run("transcribe", tmp_path / "onnx", *files, "--format", "jsonl")
    torch_code, torch_out = run("transcribe", checkpoint, *files, "--format", "jsonl")
    assert onnx_code == torch_code == 3  # the unreadable file: named on stderr, the others transcribed
    assert len(onnx_out.splitlines()) == 3
    for ours, theirs in zip(onnx_out.splitlines(), torch_out.splitlines(), strict=True):  # scores within 1e-3
        a, b = json.loads(ours), json.loads(theirs)
        assert a.pop("score") == pytest.approx(b.pop("score"), abs=1e-3) and a == b
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("".join(json.dumps({"audio_filepath": str(p), "duration": sf.info(str(p)).duration,
                                            "text": WORDS[int(p.name[0])]}) + "\n" for p in FSDD))
    code, out = run("evaluate", tmp_path / "onnx", manifest)
    assert code == 0 and (tmp_path / "onnx" / "test.report.json").is_file()
    assert out.split("(")[0] == run("evaluate", checkpoint, manifest)[1].split("(")[0]  # the same WER and CER
    result = CliRunner().invoke(app, ["transcribe", str(tmp_path / "onnx"), str(FSDD[0]), "--stream"])
    assert result.exit_code == 2 and "--stream needs the PyTorch checkpoint" in result.output


def test_tune_json_travels_with_the_export(tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "exp", FAMILIES["ctc-own"])
    (checkpoint.parent / "tune.json").write_text(json.dumps({"decode": {"beam_size": 3, "nbest": 2}}))
    folder = export(checkpoint, tmp_path / "onnx").folder
    results, _ = transcribe_nbest(folder, [str(FSDD[0])], decode=DecodeRequest(), workers=1)
    assert len(results[0][1]) == 2  # nbest 2 from the exported tune.json
    greedy, _ = transcribe_nbest(folder, [str(FSDD[0])], decode=DecodeRequest(greedy=True))
    assert len(greedy[0][1]) == 1


RECIPE_MODELS = [ROOT / "recipes/an4/exp/conformer_ctc_cpu/best.pt",
                 ROOT / "recipes/an4/exp/transducer_sp_an4_fsdd/best.pt"]


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", RECIPE_MODELS, ids=["conformer-ctc", "rnnt"])
def test_trained_recipe_models_transcribe_an4_identically(checkpoint: Path, tmp_path: Path) -> None:
    """Trained models (recipes/an4, when trained here) on AN4 speech: the same transcripts, greedy and beam."""
    wavs = sorted((shared_data() / "an4" / "wav" / "an4_clstk").glob("*/*.sph"))[:12]
    if not checkpoint.is_file() or not wavs:
        pytest.skip(f"needs {checkpoint} (recipes/an4/run.sh) and AN4 under {shared_data()}")
    folder = export(checkpoint, tmp_path / "onnx").folder
    for settings in ({"beam_size": 1}, {"beam_size": 4}):
        request = DecodeRequest(settings=settings)
        ours, _ = transcribe_nbest(folder, [str(w) for w in wavs], decode=request, workers=1)
        theirs, _ = transcribe_nbest(checkpoint, [str(w) for w in wavs], decode=request, workers=1)
        assert [h[0].text for _, h in ours] == [h[0].text for _, h in theirs]
        assert sum(bool(h[0].text) for _, h in ours) > len(wavs) // 2
