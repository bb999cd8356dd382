"""Checkpoints: {version, config, tokenizer, feature stats, model, training state}; atomic writes.

Loading never executes code from the file: `torch.load(weights_only=True)` accepts only tensors and
plain containers, and refuses anything that would need an arbitrary class or function.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from asrkit.config import MOVED_TO_DECODE, Config, config_from_dict
from asrkit.data.features import Featurizer
from asrkit.data.tokenizer import Tokenizer, tokenizer_from_dict
from asrkit.errors import AsrkitError
from asrkit.io import atomic_open
from asrkit.models import ASRModel, build_model

VERSION = 2  # 2: every search setting in [decode] (1 had them in [las] and [transducer]; migrated on load)


@dataclass
class Loaded:
    """A checkpoint made usable: everything `transcribe` needs, plus the raw training state."""

    config: Config
    tokenizer: Tokenizer
    featurizer: Featurizer
    model: ASRModel
    state: dict[str, Any]
    path: Path


def save_checkpoint(path: str | Path, *, config: Config, tokenizer: Tokenizer, featurizer: Featurizer,
                    model: ASRModel, train_state: dict[str, Any] | None = None) -> None:
    """Written with `atomic_open` (temp file in the same folder, fsync, rename): a kill never leaves half a file."""
    path = Path(path)
    payload = {
        "version": VERSION,
        "config": config.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "features": featurizer.state(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train": train_state or {},
    }
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or an experiment folder (its best.pt, else last.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise AsrkitError(f"{path} holds no best.pt or last.pt; train a model there with `asrkit train`")
    if not path.is_file():
        raise AsrkitError(f"model {path} not found; pass a .pt checkpoint or an experiment folder")
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = resolve_checkpoint(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line or "Unsupported global" in line]
        if unsafe:
            raise AsrkitError(f"{path}: refused to load: the file asks to run code ({unsafe[0][:160]}); it is not "
                              "a plain asrkit checkpoint and may be malicious. Only load checkpoints you trust "
                              "that asrkit wrote.") from None
        raise AsrkitError(f"{path}: not a readable checkpoint (corrupt or not a PyTorch file)") from None
    except Exception as err:  # torch raises assorted types (KeyError, RuntimeError, EOFError) for junk files
        raise AsrkitError(f"{path}: not a readable checkpoint ({type(err).__name__}: {str(err).strip()[:160]})") \
            from None
    if not isinstance(data, dict) or "version" not in data or "model" not in data:
        raise AsrkitError(f"{path}: not an asrkit checkpoint (no version/model keys)")
    version = data["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise AsrkitError(f"{path}: unknown checkpoint format {version!r} (asrkit writes 1 to {VERSION}); it was "
                          "not written by asrkit, or the file is damaged: retrain, or use the tool that wrote it")
    if version > VERSION:
        raise AsrkitError(f"{path}: checkpoint format {version} was written by a newer asrkit (this one reads "
                          f"formats 1 to {VERSION}); upgrade asrkit (pip install -U asrkit) to load it")
    if version < VERSION:
        try:
            data = migrate(data)
        except (AsrkitError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise AsrkitError(f"{path}: checkpoint format {version} (written by an asrkit older than this one) could "
                              f"not be migrated to format {VERSION} ({err}); load it with the asrkit version that "
                              "wrote it, or retrain") from None
    return data


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint dict of an older format as the current format holds it (a new dict; the weights shared).

    1 -> 2: the search settings move from the model family's section ([las] or [transducer]) into [decode]
    (config.MOVED_TO_DECODE: lm_path -> lm, ctc_decode_weight -> ctc_weight, transducer decoding "greedy" ->
    beam_size 1); those keys of the sections the model does not use (saved at their defaults) are dropped."""
    data = dict(data)
    if data["version"] == 1:
        config = {name: dict(values) for name, values in data["config"].items()}
        own = config["model"]["family"]
        decode = config.setdefault("decode", {})
        for (section, key), new in MOVED_TO_DECODE.items():
            if section not in config or key not in config[section]:
                continue
            value = config[section].pop(key)
            if section == own and key != "decoding":
                decode[new] = value
        if own in config and "decoding" in data["config"][own]:
            decoding = data["config"][own]["decoding"]
            if decoding not in ("greedy", "beam"):
                raise ValueError(f"unknown {own}.decoding {decoding!r}")
            if decoding == "greedy":
                decode["beam_size"], decode["nbest"] = 1, 1
        if not decode.get("lm"):
            decode.pop("lm_weight", None)  # a weight without an LM fused nothing
        data["config"], data["version"] = config, 2
    return data


def pick_device(name: str = "auto") -> torch.device:
    """--device / train.device: auto (the first GPU when CUDA is available, else the CPU), cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AsrkitError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AsrkitError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AsrkitError(f"device {name!r}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0")
    return device


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Loaded:
    """Rebuild config, tokenizer, featurizer and model (in eval mode) from a checkpoint file (an older format
    migrated, see `migrate`)."""
    resolved = resolve_checkpoint(path)
    data = read_checkpoint(resolved)
    try:
        config = config_from_dict(data["config"])
    except AsrkitError as err:
        raise AsrkitError(f"{resolved}: its config does not load in this asrkit ({err}); load it with the asrkit "
                          "version that wrote it, or retrain") from None
    tokenizer = tokenizer_from_dict(data["tokenizer"])
    stats = data.get("features") or {}
    featurizer = Featurizer(config.features, stats.get("mean"), stats.get("std"))
    model = build_model(config, config.features.n_mels, len(tokenizer.vocab))
    try:
        model.load_state_dict(data["model"])
    except RuntimeError as err:
        raise AsrkitError(f"{resolved}: weights do not match the model its config describes "
                          f"({str(err)[:200]})") from None
    model.to(device).eval()
    return Loaded(config, tokenizer, featurizer, model, data.get("train", {}), resolved)
