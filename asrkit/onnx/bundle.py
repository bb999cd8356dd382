"""The exported folder (`asrkit export MODEL OUT_DIR`), all that ONNX Runtime inference needs, without torch:

    asrkit-onnx.json   format and version, family and objective, the graphs, the tokenizer, the feature settings,
                       frame shift and time reduction, the input padding the graphs need, the model's [decode]
    frontend.npz       the log-mel front end's arrays: STFT window, mel filterbank, normalisation mean and std
    model.onnx         CTC: feats (B, T, F), feat_lens (B,) -> log_probs (B, T', V), lengths (B,)
    encoder.onnx       transducer: feats, feat_lens -> enc (B, T', J) (projected for the joiner), enc_lens (B,)
    predictor.onnx     transducer: tokens (N,), h, c (L, N, P) -> pred (N, J), h_out, c_out
    joiner.onnx        transducer: enc (N, J), pred (N, J) -> log_probs (N, V)
    tokenizer.model    the sentencepiece model (bpe / unigram tokenizers only)
    tune.json          the checkpoint's `asrkit tune` settings, when it had them (read as beside a checkpoint)

`read_bundle` checks every part and says what is wrong and how to fix it (export again).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asrkit.data.tokenizer import CharTokenizer, SentencePieceTokenizer, Tokenizer
from asrkit.errors import AsrkitError
from asrkit.io import atomic_write

MANIFEST = "asrkit-onnx.json"
FRONTEND = "frontend.npz"
FORMAT = "asrkit-onnx"
VERSION = 1
GRAPHS = {"ctc": ("model",), "transducer": ("encoder", "predictor", "joiner")}  # the graphs of each objective
FRONTEND_ARRAYS = ("window", "mel_fb", "mean", "std")


@dataclass
class Bundle:
    """An exported model, read and checked."""

    path: Path  # the folder
    meta: dict[str, Any]  # asrkit-onnx.json
    tokenizer: Tokenizer
    frontend: dict[str, np.ndarray]  # FRONTEND_ARRAYS

    @property
    def objective(self) -> str:
        return str(self.meta["objective"])

    def graph(self, name: str) -> Path:
        return self.path / self.meta["graphs"][name]


def is_exported(model: str | Path) -> bool:
    """Is `model` an exported folder (or its asrkit-onnx.json, or one of its .onnx graphs)?"""
    return export_folder(model) is not None


def export_folder(model: str | Path) -> Path | None:
    """The exported folder `model` names, or None when it names something else (a checkpoint, an experiment)."""
    path = Path(model)
    if path.is_dir():
        return path if (path / MANIFEST).is_file() else None
    if path.name == MANIFEST or path.suffix == ".onnx":
        return path.parent
    return None


def read_bundle(model: str | Path) -> Bundle:
    """The exported model in folder `model`, checked: manifest, graph files, tokenizer, front end."""
    folder = export_folder(model)
    if folder is None:
        raise AsrkitError(f"{model} is not an exported model (no {MANIFEST}); write one with "
                          "`asrkit export CHECKPOINT OUT_DIR`")
    hint = f"export the model again (`asrkit export CHECKPOINT {folder}`)"
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise AsrkitError(f"{manifest} not found: {folder} is not a complete exported model; {hint}")
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AsrkitError(f"{manifest}: not a JSON file ({err}); {hint}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AsrkitError(f"{manifest}: not an asrkit ONNX export (no \"format\": \"{FORMAT}\"); {hint}")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise AsrkitError(f"{manifest}: unknown export version {version!r}; {hint}")
    if version > VERSION:
        raise AsrkitError(f"{manifest}: export version {version} was written by a newer asrkit (this one reads "
                          f"1 to {VERSION}); upgrade asrkit, or export with this one")
    missing = [key for key in ("objective", "family", "graphs", "tokenizer", "features", "frame_shift",
                               "time_reduction", "decode") if key not in meta]
    if missing:
        raise AsrkitError(f"{manifest}: missing {', '.join(missing)}; {hint}")
    objective = meta["objective"]
    if objective not in GRAPHS:
        raise AsrkitError(f"{manifest}: objective {objective!r} has no ONNX runtime here (valid: "
                          f"{', '.join(GRAPHS)}); {hint}")
    for name in GRAPHS[objective]:
        file = meta["graphs"].get(name) if isinstance(meta["graphs"], dict) else None
        if not isinstance(file, str) or not (folder / file).is_file():
            raise AsrkitError(f"{folder}: the {name} graph ({file or name + '.onnx'}) is missing; {hint}")
    return Bundle(folder, meta, _tokenizer(folder, meta["tokenizer"], hint), _frontend(folder, hint))


def _tokenizer(folder: Path, spec: Any, hint: str) -> Tokenizer:
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "char" and isinstance(spec.get("chars"), list):
        return CharTokenizer([str(c) for c in spec["chars"]])
    if kind in ("bpe", "unigram") and isinstance(spec.get("model_file"), str):
        file = folder / spec["model_file"]
        if not file.is_file():
            raise AsrkitError(f"{file} (the sentencepiece model) is missing; {hint}")
        try:
            return SentencePieceTokenizer(file.read_bytes(), kind)
        except RuntimeError as err:
            raise AsrkitError(f"{file}: not a sentencepiece model ({str(err)[:160]}); {hint}") from None
    raise AsrkitError(f"{folder / MANIFEST}: unknown tokenizer {kind!r} (valid: char, bpe, unigram); {hint}")


def _frontend(folder: Path, hint: str) -> dict[str, np.ndarray]:
    file = folder / FRONTEND
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {name: np.asarray(data[name], dtype=np.float32) for name in FRONTEND_ARRAYS}
    except FileNotFoundError:
        raise AsrkitError(f"{file} (the feature front end) is missing; {hint}") from None
    except (OSError, ValueError, KeyError) as err:
        raise AsrkitError(f"{file}: not a readable front end ({str(err)[:160]}); {hint}") from None
    return arrays


def require(module: str) -> Any:
    """The onnx extra's `module` (onnx, onnxruntime), or an AsrkitError saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise AsrkitError(f"{module} is not installed; install the ONNX extra: pip install 'asrkit[onnx]' (or make "
                          "install)") from None


def write_manifest(folder: Path, meta: dict[str, Any]) -> None:
    """asrkit-onnx.json, with the format and version."""
    atomic_write(folder / MANIFEST, json.dumps({"format": FORMAT, "version": VERSION, **meta}, indent=1,
                                               ensure_ascii=False) + "\n")


def write_frontend(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    np.savez(folder / FRONTEND, **{name: np.asarray(arrays[name], dtype=np.float32) for name in FRONTEND_ARRAYS})
