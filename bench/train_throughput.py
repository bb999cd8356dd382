"""Training throughput, in one run and for the same model and batch shape:

1. bare model step: synthetic features already on the device -> loss -> backward -> clip -> AdamW step (fused on
   CUDA, as the trainer), in the trainer's precision. The ceiling: what the model alone allows.
2. asrkit end to end, once per feature mode (train.features_on): `asrkit.train.fit` on audio files (a manifest,
   or connected-digit wav files it writes from the FSDD recordings in tests/assets):
   - workers: the loader workers decode audio and compute log-mel + SpecAugment per utterance;
   - device: the workers only decode; log-mel, normalisation and SpecAugment run batched in the training step,
     on the device;
   then collate, pinned host -> device copy and the same step. Timed from the end of the `--warmup`-th optimiser
   step to the end of the last one (steady state: data-loader start-up and the first batches are not counted,
   waiting for data later is).

Prints audio seconds trained per second (no padding counted) for each and their ratio to the bare step, the
padding fraction of the duration-bucketed batches, and peak GPU memory (peak process RSS on CPU). Feature
normalisation is off (it would add a statistics pass over the corpus before training; per batch it is one
subtraction). With --manifest, set --seconds and --batch to its typical utterance length and batch size, so that
the bare step sees the same batch shape. --json FILE appends the figures as one JSON line (bench/gpu_throughput.sh
gathers them into one table).

    python bench/train_throughput.py                      # small model, 4 x 2 s batches: runs on a laptop CPU
    python bench/train_throughput.py --preset ds2         # DS2: 2 conv + 5 biGRU(768), bf16, 64 x 15 s, GPU
    python bench/train_throughput.py --preset ds2 --batch 256 --modes device
    python bench/train_throughput.py --manifest data/train.jsonl --preset ds2 --steps 50
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PRESETS: dict[str, dict[str, Any]] = {
    # Small enough for a CPU: a 2-layer biGRU(128) DS2, batches of 4 utterances of 2 s.
    "small": {"model": {"conv_layers": 2, "conv_channels": 8, "rnn_layers": 2, "rnn_hidden": 128},
              "seconds": 2.0, "batch": 4, "steps": 10, "warmup": 2, "workers": 1, "precision": "auto"},
    # The reference: DeepSpeech2 with 2 conv + 5 bidirectional GRU(768) layers (model.preset "medium"), bf16,
    # batches of 64 (or --batch 256) utterances of 15 s.
    "ds2": {"model": {"preset": "medium"}, "seconds": 15.0, "batch": 64, "steps": 20, "warmup": 3, "workers": 12,
            "precision": "bf16"},
}
MODES = ("workers", "device")
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def make_corpus(folder: Path, n_utts: int, seconds: float, distinct: int, seed: int = 0) -> Path:
    """A manifest of n_utts connected-digit utterances of 0.9-1.0 x `seconds` (16 kHz wav), `distinct` files
    listed over and over under different ids."""
    import numpy as np

    from asrkit.data.audio import load_audio, write_audio

    recordings = sorted((ROOT / "tests" / "assets" / "fsdd" / "recordings").glob("*.wav"))
    rng = random.Random(seed)
    files = []
    for n in range(min(distinct, n_utts)):
        target = int(16000 * seconds * rng.uniform(0.9, 1.0))
        parts, words, length = [], [], 0
        while True:
            path = rng.choice(recordings)
            wave = load_audio(path, 16000).numpy()
            gap = np.zeros(int(16000 * rng.uniform(0.1, 0.3)), dtype=np.float32)
            if length + len(wave) + len(gap) > target:
                break
            parts += [wave, gap]
            words.append(WORDS[int(path.name.split("_")[0])])
            length += len(wave) + len(gap)
        parts.append(np.zeros(target - length, dtype=np.float32))
        wav = folder / "audio" / f"utt{n:03d}.wav"
        write_audio(wav, np.concatenate(parts), 16000)
        files.append({"audio_filepath": str(wav), "duration": target / 16000, "text": " ".join(words)})
    lines = [json.dumps({"id": f"utt{i:05d}", **files[i % len(files)]}) for i in range(n_utts)]
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "train.jsonl").write_text("".join(line + "\n" for line in lines))
    return folder / "data"


def peak_memory(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB GPU"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS (process peak so far)"


def reset_memory(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def bare_step(cfg: Any, vocab: int, batch: int, seconds: float, steps: int, warmup: int, device: Any) -> float:
    """Audio seconds per second of forward + backward + optimiser step on synthetic (B, T, F) features."""
    from contextlib import nullcontext

    import torch

    from asrkit.models import build_model
    from asrkit.records import Batch

    torch.manual_seed(0)
    model = build_model(cfg, cfg.features.n_mels, vocab).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, fused=device.type == "cuda" or None)
    frames = int(seconds * 1000 / cfg.features.hop_ms)
    tokens = min(int(seconds * 10), frames // (2 * model.time_reduction))  # ~10 characters a second
    feats = torch.randn(batch, frames, cfg.features.n_mels, device=device)
    data = Batch([str(i) for i in range(batch)], feats, torch.full((batch,), frames, device=device),
                 torch.randint(1, vocab, (batch, tokens), device=device),
                 torch.full((batch,), tokens, device=device), [""] * batch)
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    for i in range(warmup + steps):
        if i == warmup:
            reset_memory(device)  # waits for the device
            start = time.perf_counter()
        with autocast:
            loss = model.loss(data)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
    float(loss.detach())  # waits for the device
    return batch * seconds * steps / (time.perf_counter() - start)


def end_to_end(overrides: dict[str, Any], data: Path, exp: Path, warmup: int, steps: int, device: Any) -> float:
    """Audio seconds per second of `fit` from the end of optimiser step `warmup` to the end of the last one."""
    from asrkit import train
    from asrkit.config import build_config

    marks: list[tuple[float, float]] = []  # (time, audio seconds trained) after each optimiser step
    real_step = train._Loop._step  # wrapped to read the clock between steps (a benchmark may look inside)

    def timed_step(loop: Any, loaded: Any) -> Any:
        out = real_step(loop, loaded)  # ends on a host read of the loss: the device has finished the step
        marks.append((time.perf_counter(), loop.audio_seconds))
        if len(marks) == warmup:
            reset_memory(device)
        return out

    train._Loop._step = timed_step  # type: ignore[method-assign,assignment]
    try:
        cfg = build_config({**overrides, "train": {**overrides["train"], "max_steps": warmup + steps}})
        train.fit(cfg, data, exp, progress=False)
    finally:
        train._Loop._step = real_step  # type: ignore[method-assign]
    (t0, a0), (t1, a1) = marks[warmup - 1], marks[-1]
    return (a1 - a0) / (t1 - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--manifest", type=Path, help="JSONL manifest to train on (default: generated wav files)")
    parser.add_argument("--seconds", type=float, help="length of generated utterances and of the bare batch")
    parser.add_argument("--batch", type=int, help="utterances per batch (ds2: 64 by default; the reference: 256)")
    parser.add_argument("--steps", type=int, help="timed optimiser steps")
    parser.add_argument("--warmup", type=int, help="untimed optimiser steps first (at least 1)")
    parser.add_argument("--workers", type=int, help="data-loader worker processes (train.num_workers)")
    parser.add_argument("--modes", default=",".join(MODES), help="feature modes to run end to end: workers,device")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare model step")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: the trainer's choice, the cores less one per loader worker)")
    parser.add_argument("--json", type=Path, help="append the figures to this file as one JSON line")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="more config: model.rnn_hidden=512")
    args = parser.parse_args()
    p = {**PRESETS[args.preset], **{k: v for k, v in vars(args).items() if v is not None and k in PRESETS["small"]}}
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes {args.modes!r}: a comma-separated list of {', '.join(MODES)}")
    p["warmup"] = max(1, p["warmup"])

    import torch

    from asrkit.checkpoint import pick_device
    from asrkit.config import build_config, parse_sets
    from asrkit.data.loader import DurationBatchSampler
    from asrkit.data.manifest import read_manifest, write_manifest
    from asrkit.data.tokenizer import train_tokenizer
    from asrkit.models import build_model
    from asrkit.train import _set_cpu_threads

    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    else:  # the trainer's rule on a CPU (a core per loader worker), for the bare step too
        _set_cpu_threads(device, p["workers"], 1)
    if p["precision"] == "auto" or (device.type == "cpu" and p["precision"] == "bf16"):
        p["precision"] = "bf16" if device.type == "cuda" else "fp32"  # bf16 autocast on a CPU: nothing useful
    overrides: dict[str, dict[str, Any]] = {
        "model": dict(p["model"]), "features": {"normalize": False},
        "train": {"epochs": 1, "batch_seconds": p["batch"] * p["seconds"], "max_batch_size": p["batch"],
                  "num_workers": p["workers"], "save_every_steps": 0, "precision": p["precision"],
                  "device": str(device), "warmup_steps": 1}}
    for section, values in parse_sets(args.sets).items():
        overrides.setdefault(section, {}).update(values)
    cfg = build_config(overrides)
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="asrkit-train-bench-") as tmp:
        folder = Path(tmp)
        if args.manifest is None:
            data = make_corpus(folder, p["batch"] * (p["warmup"] + p["steps"]), p["seconds"], distinct=64)
        else:  # its audio paths resolved, as train.jsonl of a folder without dev.jsonl
            data = folder / "data"
            write_manifest(data / "train.jsonl", read_manifest(args.manifest))
        utts = read_manifest(data / "train.jsonl")
        vocab = len(train_tokenizer(cfg.tokenizer.kind, [u.text for u in utts], cfg.tokenizer.vocab_size).vocab)
        params = sum(t.numel() for t in build_model(cfg, cfg.features.n_mels, vocab).parameters())
        sampler = DurationBatchSampler([u.duration for u in utts], cfg.train.batch_seconds, cfg.train.max_batch_size,
                                       seed=cfg.train.seed)
        bare = 0.0
        if not args.no_bare:
            bare = bare_step(cfg, vocab, p["batch"], p["seconds"], p["steps"], p["warmup"], device)
            rows.append(("bare model step", bare, peak_memory(device)))
        for mode in modes:
            gc.collect()  # the previous model, optimiser and loader workers
            if device.type == "cuda":
                torch.cuda.empty_cache()
            mode_overrides = {**overrides, "train": {**overrides["train"], "features_on": mode}}
            rate = end_to_end(mode_overrides, data, folder / f"exp-{mode}", p["warmup"], p["steps"], device)
            rows.append((f"asrkit, features {'on device' if mode == 'device' else 'in workers'}", rate,
                         peak_memory(device)))
    m = cfg.model
    print(f"# device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} torch threads), torch {torch.__version__}, precision {p['precision']}, "
          f"preset {args.preset}{', train.compile' if cfg.train.compile else ''}")
    print(f"# model {m.family}: {m.conv_layers} conv x {m.conv_channels} ch + {m.rnn_layers} x "
          f"{'bi' if m.bidirectional else ''}{m.rnn_type.upper()}({m.rnn_hidden}), {params / 1e6:.1f} M parameters, "
          f"{cfg.features.n_mels} mels")
    print(f"# batches of {p['batch']} x {p['seconds']:g} s; {p['steps']} timed steps after {p['warmup']}; "
          f"{len(utts)} utterances from {args.manifest or 'generated wav files'}; {p['workers']} loader workers")
    print(f"{'':30}{'audio s / s':>12}{'x bare':>8}   peak memory")
    for name, rate, memory in rows:
        ratio = f"{rate / bare:8.2f}" if bare else f"{'-':>8}"
        print(f"{name:30}{rate:12.1f}{ratio}   {memory}")
    padding = (sampler.padding_fraction(0), sampler.padding_fraction(1))
    print(f"padding fraction of the batches: {padding[0]:.1%} (epoch 0, sorted), "
          f"{padding[1]:.1%} (later epochs, shuffled)")
    if args.json:
        record = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
                  "torch": torch.__version__, "preset": args.preset, "batch": p["batch"], "seconds": p["seconds"],
                  "params_m": round(params / 1e6, 1), "precision": p["precision"], "workers": p["workers"],
                  "compile": cfg.train.compile, "padding": round(padding[0], 4),
                  "rows": [{"name": n, "audio_s_per_s": round(r, 1), "x_bare": round(r / bare, 3) if bare else None,
                            "memory": mem} for n, r, mem in rows]}
        with args.json.open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
