"""`asrkit export MODEL OUT_DIR`: a checkpoint -> ONNX graphs (opset 17, dynamic batch and time) and what inference
needs beside them (asrkit.onnx.bundle), optionally int8 (dynamic quantisation of the weights).

One exporter per objective (EXPORTERS), through the model contract:
    ctc          model.onnx: features -> log-probs (DeepSpeech2, or any encoder with a CTC head)
    transducer   encoder.onnx (features -> projected encoder frames), predictor.onnx (one token step),
                 joiner.onnx (-> log-probs); the searches run in numpy (asrkit.onnx.rnnt)
    attention    not exported: its searches (beam search with joint CTC scoring, coverage, fusion) would need
                 the decoder as a step graph with its attention state; an AsrkitError says so
The graphs are traced (torch.onnx's TorchScript exporter) from asrkit.onnx.graphs' padded-batch forms of the
models; the searches and the log-mel front end stay outside them (asrkit.onnx.frontend, numpy).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asrkit.checkpoint import Loaded, load_checkpoint
from asrkit.errors import AsrkitError
from asrkit.onnx.bundle import GRAPHS, MANIFEST, require, write_frontend, write_manifest
from asrkit.onnx.graphs import JointLogProbs, PredictorStep, TransducerEncoderProjected, ctc_graph, min_frames
from asrkit.request import DECODE_PARAMS_NAME
from asrkit.search import decode_params

OPSET = 17
QUANTIZE = ("", "int8")
FEATURE_KEYS = ("sample_rate", "n_mels", "win_ms", "hop_ms", "normalize")  # the [features] inference reads
TRACE_FRAMES = (203, 157)  # feature frames of the two example utterances the graphs are traced with


@dataclass
class Exported:
    """What `export` wrote."""

    folder: Path
    family: str
    objective: str
    graphs: dict[str, Path] = field(default_factory=dict)
    quantize: str = ""

    def summary(self) -> str:
        sizes = ", ".join(f"{p.name} ({p.stat().st_size / 1e6:.1f} MB)" for p in self.graphs.values())
        kind = f", {self.quantize}" if self.quantize else ""
        return f"exported the {self.family} model ({self.objective} objective{kind}) to {self.folder}: {sizes}"


def _trace(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, inputs: list[str], outputs: list[str],
           dynamic: dict[str, dict[int, str]]) -> None:
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer notices
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, do_constant_folding=True)


def _example(loaded: Loaded) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor(TRACE_FRAMES)
    gen = torch.Generator().manual_seed(0)
    return torch.randn(len(TRACE_FRAMES), max(TRACE_FRAMES), loaded.config.features.n_mels, generator=gen), lengths


FEATS = {"feats": {0: "batch", 1: "frames"}, "feat_lens": {0: "batch"}}


def _export_ctc(loaded: Loaded, folder: Path) -> tuple[dict[str, str], dict[str, Any]]:
    _trace(ctc_graph(loaded.model), _example(loaded), folder / "model.onnx", ["feats", "feat_lens"],
           ["log_probs", "lengths"], {**FEATS, "log_probs": {0: "batch", 1: "out_frames"}, "lengths": {0: "batch"}})
    return {"model": "model.onnx"}, {}


def _export_transducer(loaded: Loaded, folder: Path) -> tuple[dict[str, str], dict[str, Any]]:
    model: Any = loaded.model
    _trace(TransducerEncoderProjected(model), _example(loaded), folder / "encoder.onnx", ["feats", "feat_lens"],
           ["enc", "enc_lens"], {**FEATS, "enc": {0: "batch", 1: "out_frames"}, "enc_lens": {0: "batch"}})
    rnn = model.predictor.rnn
    n = 3
    state = torch.zeros(rnn.num_layers, n, rnn.hidden_size)
    _trace(PredictorStep(model.predictor, model.joiner), (torch.tensor([0, 1, 2]), state, state),
           folder / "predictor.onnx", ["tokens", "h", "c"], ["pred", "h_out", "c_out"],
           {"tokens": {0: "n"}, "h": {1: "n"}, "c": {1: "n"}, "pred": {0: "n"}, "h_out": {1: "n"},
            "c_out": {1: "n"}})
    joint = model.joiner.enc_proj.out_features
    _trace(JointLogProbs(model.joiner), (torch.randn(n, joint), torch.randn(n, joint)), folder / "joiner.onnx",
           ["enc", "pred"], ["log_probs"], {"enc": {0: "n"}, "pred": {0: "n"}, "log_probs": {0: "n"}})
    graphs = {"encoder": "encoder.onnx", "predictor": "predictor.onnx", "joiner": "joiner.onnx"}
    return graphs, {"predictor": {"layers": rnn.num_layers, "hidden": rnn.hidden_size, "joint_dim": joint}}


EXPORTERS: dict[str, Callable[[Loaded, Path], tuple[dict[str, str], dict[str, Any]]]] = {
    "ctc": _export_ctc,
    "transducer": _export_transducer,
}


def export(model: str | Path, out_dir: str | Path, *, quantize: str = "") -> Exported:
    """Export a checkpoint (or experiment folder) to `out_dir`: its graphs, asrkit-onnx.json, frontend.npz, the
    sentencepiece model, tune.json. `quantize` "int8": the graphs' weights as int8 (dynamic quantisation)."""
    if quantize not in QUANTIZE:
        raise AsrkitError(f"unknown --quantize {quantize!r}; valid: int8 (or leave it out for float32)")
    require("onnx")  # torch.onnx writes with it
    ort = require("onnxruntime")
    loaded = load_checkpoint(model, "cpu")
    family, objective = loaded.config.model.family, loaded.model.objective
    if objective not in EXPORTERS:
        raise AsrkitError(f"{loaded.path}: a {family} model (the {objective} objective) cannot be exported to ONNX: "
                          f"its search runs the decoder step by step with attention state, which is not exported "
                          f"yet. Exportable: {', '.join(EXPORTERS)} models (model.family deepspeech2 or "
                          f"transducer); transcribe this one with the checkpoint itself (`asrkit transcribe "
                          f"{loaded.path} AUDIO`)")
    assert set(GRAPHS) == set(EXPORTERS), "asrkit.onnx.bundle.GRAPHS lists the graphs of each exporter"
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise AsrkitError(f"OUT_DIR {folder} is a file; give a folder to write the exported model to")
    if any((folder / name).is_file() for name in ("best.pt", "last.pt")):  # transcribe would read the export there
        raise AsrkitError(f"OUT_DIR {folder} holds checkpoints; export to a folder of its own, e.g. {folder / 'onnx'}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # an earlier export's: written again last, once all is in place
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as tmp, torch.no_grad():
        graphs, extra = EXPORTERS[objective](loaded, Path(tmp))
        for file in graphs.values():
            if quantize:
                quantize_int8(Path(tmp) / file, folder / file)
            else:
                shutil.move(str(Path(tmp) / file), folder / file)
    optimized = {name: optimize_for_onnxruntime(folder / file) for name, file in graphs.items()}
    _write_side_files(loaded, folder, graphs, {**extra, "quantize": quantize, "ort_graphs": optimized,
                                               "onnxruntime": ort.__version__})
    return Exported(folder, family, objective, {n: folder / f for n, f in graphs.items()}, quantize)


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic quantisation (onnxruntime.quantization): MatMul / Gemm / LSTM / GRU weights as int8, activations
    quantised per call."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # its advice to pre-process the graph (shape inference) first
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm", "LSTM", "GRU"])
    finally:
        root.level = level


def optimize_for_onnxruntime(graph: Path) -> str:
    """Write `graph` as onnxruntime optimises it for its CPU provider (constant folding, fusions; the "extended"
    level, no hardware-specific layouts) beside it, as NAME.ort.onnx, and return that name: a session on it starts
    without optimising again (0.25 s instead of 0.7 s for the AN4 Conformer on 2 cores). The runtime uses it only
    with the onnxruntime version that wrote it, else the portable graph."""
    import onnxruntime as ort

    out = graph.with_name(graph.stem + ".ort.onnx")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(out)
    ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    return out.name


def _write_side_files(loaded: Loaded, folder: Path, graphs: dict[str, str], extra: dict[str, Any]) -> None:
    feat = loaded.featurizer
    tok = loaded.tokenizer.to_dict()
    if tok["kind"] != "char":
        (folder / "tokenizer.model").write_bytes(bytes(tok.pop("model")))
        tok["model_file"] = "tokenizer.model"
    left = (feat.n_fft - feat.win_length) // 2
    window = torch.nn.functional.pad(feat.core.window, (left, feat.n_fft - feat.win_length - left))
    empty = torch.zeros(0)
    write_frontend(folder, {"window": window.numpy(), "mel_fb": feat.core.fb.numpy(),
                            "mean": (feat.mean if feat.mean is not None else empty).numpy(),
                            "std": (feat.std if feat.std is not None else empty).numpy()})
    cfg = loaded.config
    features = {key: value for key, value in cfg.to_dict()["features"].items() if key in FEATURE_KEYS}
    features.update(n_fft=feat.n_fft, win_length=feat.win_length, hop_length=feat.hop_length)
    tune = loaded.path.parent / DECODE_PARAMS_NAME
    (folder / DECODE_PARAMS_NAME).unlink(missing_ok=True)  # an earlier export's
    if tune.is_file():  # read as beside the checkpoint (its LM path resolved)
        (folder / DECODE_PARAMS_NAME).write_text(json.dumps({"decode": decode_params(tune)}, indent=1) + "\n",
                                                 encoding="utf-8")
    write_manifest(folder, {
        "family": cfg.model.family, "objective": loaded.model.objective, "encoder": cfg.encoder.kind,
        "graphs": graphs, "opset": OPSET, "tokenizer": tok, "features": features,
        "frame_shift": feat.frame_shift, "time_reduction": loaded.model.time_reduction,
        "min_frames": min_frames(loaded.model), "decode": cfg.decode.search_options().to_json(),
        "checkpoint": str(loaded.path), **extra})
