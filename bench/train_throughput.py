"""Training throughput, in one run and for the same model and batch shape:

1. bare model step: synthetic features already on the device -> loss -> backward -> clip -> AdamW step, in the
   trainer's precision. The ceiling: what the model alone allows.
2. asrkit end to end: `asrkit.train.fit` on audio files (a manifest, or connected-digit wav files it writes from
   the FSDD recordings in tests/assets): audio decoding, log-mel features, SpecAugment, collate, host -> device
   copy and the same step. Timed over `--steps` optimiser steps after `--warmup` steps (a first fit() stops at
   the warm-up, a resumed one runs the timed steps in the same process; data-loader start-up is included).

Prints audio seconds trained per second (no padding counted) for both and their ratio, the padding fraction
of the duration-bucketed batches, and peak GPU memory (peak process RSS on CPU). Feature normalisation is off
(it would add a statistics pass over the corpus before training; per batch it is one subtraction).
With --manifest, set --seconds and --batch to its typical utterance length and batch size, so that the
bare step sees the same batch shape.

    python bench/train_throughput.py                      # small model, 4 x 2 s batches: runs on a laptop CPU
    python bench/train_throughput.py --preset ds2         # DS2: 2 conv + 5 biGRU(768), bf16, 32 x 15 s, GPU
    python bench/train_throughput.py --manifest data/train.jsonl --preset ds2 --steps 50
"""

from __future__ import annotations

import argparse
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
              "seconds": 2.0, "batch": 4, "steps": 4, "warmup": 2, "workers": 1, "precision": "auto"},
    # The reference: DeepSpeech2 with 2 conv + 5 bidirectional GRU(768) layers (model.preset "medium"), bf16,
    # batches of 32 utterances of 15 s.
    "ds2": {"model": {"preset": "medium"}, "seconds": 15.0, "batch": 32, "steps": 20, "warmup": 3, "workers": 8,
            "precision": "bf16"},
}
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
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
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
            reset_memory(device)
            start = time.perf_counter()
        with autocast:
            loss = model.loss(data)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
    float(loss.detach())  # waits for the device
    return batch * seconds * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--manifest", type=Path, help="JSONL manifest to train on (default: generated wav files)")
    parser.add_argument("--seconds", type=float, help="length of generated utterances and of the bare batch")
    parser.add_argument("--batch", type=int, help="utterances per batch")
    parser.add_argument("--steps", type=int, help="timed optimiser steps")
    parser.add_argument("--warmup", type=int, help="untimed optimiser steps first")
    parser.add_argument("--workers", type=int, help="data-loader worker processes (train.num_workers)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="more config: model.rnn_hidden=512")
    args = parser.parse_args()
    p = {**PRESETS[args.preset], **{k: v for k, v in vars(args).items() if v is not None and k in PRESETS["small"]}}

    import torch

    from asrkit.config import build_config, parse_sets
    from asrkit.data.loader import DurationBatchSampler
    from asrkit.data.manifest import read_manifest, write_manifest
    from asrkit.data.tokenizer import train_tokenizer
    from asrkit.models import build_model
    from asrkit.train import fit
    from asrkit.transcribe import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
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
        bare = bare_step(cfg, vocab, p["batch"], p["seconds"], p["steps"], p["warmup"], device)
        bare_mem = peak_memory(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        train = overrides["train"]
        fit(build_config({**overrides, "train": {**train, "max_steps": p["warmup"]}}), data, folder / "exp",
            progress=False)
        reset_memory(device)
        timed = fit(build_config({**overrides, "train": {**train, "max_steps": p["warmup"] + p["steps"]}}), data,
                    folder / "exp", resume=True, progress=False)
        e2e = timed.audio_seconds / timed.train_seconds
    m = cfg.model
    print(f"# device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} torch threads), precision {p['precision']}, preset {args.preset}")
    print(f"# model {m.family}: {m.conv_layers} conv x {m.conv_channels} ch + {m.rnn_layers} x "
          f"{'bi' if m.bidirectional else ''}{m.rnn_type.upper()}({m.rnn_hidden}), {params / 1e6:.1f} M parameters, "
          f"{cfg.features.n_mels} mels")
    print(f"# batches of {p['batch']} x {p['seconds']:g} s; {timed.steps - p['warmup']} timed steps after "
          f"{p['warmup']}; "
          f"{len(utts)} utterances from {args.manifest or 'generated wav files'}; {p['workers']} loader workers")
    print(f"{'':24}{'audio s / s':>12}{'x bare':>8}   peak memory")
    print(f"{'bare model step':24}{bare:12.1f}{1.0:8.2f}   {bare_mem}")
    print(f"{'asrkit end to end':24}{e2e:12.1f}{e2e / bare:8.2f}   {peak_memory(device)}")
    print(f"padding fraction of the batches: {sampler.padding_fraction(0):.1%} (epoch 0, sorted), "
          f"{sampler.padding_fraction(1):.1%} (later epochs, shuffled)")


if __name__ == "__main__":
    main()
