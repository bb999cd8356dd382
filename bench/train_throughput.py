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

3. --matrix (or --combos): every encoder x objective at its AN4 CPU recipe size, bare steps on synthetic CPU
   batches (16 utterances x 3 s, 80 mels, 40-character targets; 17 pieces for the unigram LAS confs):
   ds2-ctc, las-attention, rnnt-transducer (recipes/an4/conf/{deepspeech2,las,transducer}_cpu.toml, their own
   encoders) and the Conformer of conformer_ctc_cpu.toml under each objective: conformer-ctc, conformer-transducer
   (transducer_cpu.toml's predictor and joiner), conformer-attention (las_cpu.toml's speller, ctc_weight 0.3).
   Per combination: parameters; fp32 audio seconds per second of forward + backward + clip + AdamW; the FLOPs
   of one step (torch.utils.flop_counter.FlopCounterMode: matmuls, convolutions, attention, with formulas added
   for the CPU's flash attention and oneDNN LSTM kernels) and the FLOP/s they run at, against the fp32 peak
   of a 2048 x 2048 matmul on the same threads; bf16 autocast against fp32 on a small batch (bf16 matmuls
   have no fast path on a CPU without AVX-512 BF16 / AMX: the default size of that matmul is 512). Threads:
   all cores unless --threads. A few minutes on 2 cores, more when other processes share them (threads past the
   free cores spin: --threads 1 beside a training job on 2 cores took 72 s with --steps 1, the defaults 390 s).

    python bench/train_throughput.py                      # small model, 4 x 2 s batches: runs on a laptop CPU
    python bench/train_throughput.py --preset ds2         # DS2: 2 conv + 5 biGRU(768), bf16, 64 x 15 s, GPU
    python bench/train_throughput.py --preset ds2 --batch 256 --modes device
    python bench/train_throughput.py --manifest data/train.jsonl --preset ds2 --steps 50
    python bench/train_throughput.py --matrix                               # every encoder x objective, CPU
    python bench/train_throughput.py --combos conformer-ctc,ds2-ctc --threads 1 --steps 1
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


# --matrix: every encoder x objective at its recipe size ---------------------------------------------------------

CONF = ROOT / "recipes" / "an4" / "conf"
# name: (encoder, objective, recipe conf, overrides on top of it). "conformer" takes the [encoder] section of
# conformer_ctc_cpu.toml (preset cpu: 8 blocks x 144, kernel 15, 32 subsampling channels) under the objective.
COMBOS: dict[str, tuple[str, str, str, dict[str, dict[str, Any]]]] = {
    "ds2-ctc": ("ds2 conv+biGRU", "ctc", "deepspeech2_cpu.toml", {}),
    "las-attention": ("pyramid biLSTM", "attention+ctc", "las_cpu.toml", {}),
    "rnnt-transducer": ("biLSTM", "transducer", "transducer_cpu.toml", {}),
    "conformer-ctc": ("conformer", "ctc", "conformer_ctc_cpu.toml", {}),
    "conformer-transducer": ("conformer", "transducer", "transducer_cpu.toml", {"encoder": {}}),
    "conformer-attention": ("conformer", "attention+ctc", "las_cpu.toml",
                            {"encoder": {}, "las": {"ctc_weight": 0.3}}),
}
CHARS_PER_PIECE = 2.3  # AN4 training text under las_cpu.toml's 64-piece unigram tokenizer (measured)


def combo_config(name: str, sets: list[str] | None = None) -> Any:
    """The Config of a combination: its recipe conf with the combination's overrides (an empty [encoder] = the
    Conformer of conformer_ctc_cpu.toml), then --set's KEY=VALUE (e.g. encoder.subsampling=8). Keys of the conf
    that the config no longer has (search settings moved elsewhere) are dropped: a training step does not read
    them. --set's keys are not: a misspelt one is an error, not a silently unchanged measurement."""
    import dataclasses
    import tomllib

    from asrkit.config import Config, build_config, parse_sets

    data = tomllib.loads((CONF / COMBOS[name][2]).read_text())
    for section, values in COMBOS[name][3].items():
        if section == "encoder" and not values:
            values = tomllib.loads((CONF / "conformer_ctc_cpu.toml").read_text())["encoder"]
        data[section] = {**data.get(section, {}), **values}
    defaults = Config()
    known = {s: {f.name for f in dataclasses.fields(getattr(defaults, s))} for s in data if hasattr(defaults, s)}
    sections = {s: {k: v for k, v in values.items() if k in known[s]} for s, values in data.items() if s in known}
    for section, values in parse_sets(sets or []).items():
        sections[section] = {**sections.get(section, {}), **values}
    return build_config(sections)


def flop_counter() -> Any:
    """FlopCounterMode that also counts the CPU kernels it has no formula for: flash attention on the CPU (SDPA's
    CPU path) and oneDNN's LSTM layers (an unpacked nn.LSTM on the CPU), as matmul FLOPs: 2 per multiply-add."""
    import math

    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    def rnn_layer(x: Any, w_ih: Any, w_hh: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return 2 * math.prod(x[:-1]) * (math.prod(w_ih) + math.prod(w_hh))  # every step: x W_ih^T + h W_hh^T

    def rnn_layer_backward(x: Any, w_ih: Any, w_hh: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return 2 * rnn_layer(x, w_ih, w_hh)  # gradients of the inputs and of the weights

    def attention(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return fc.sdpa_flop_count(q, k, v)

    def attention_backward(grad: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None,
                           **kwargs: Any) -> int:
        return fc.sdpa_backward_flop_count(grad, q, k, v)

    return fc.FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: attention,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: attention_backward,
        aten.mkldnn_rnn_layer: rnn_layer,
        aten.mkldnn_rnn_layer_backward: rnn_layer_backward,
    })


def matmul_rate(dtype: Any, n: int, min_seconds: float) -> tuple[float, float]:
    """(GFLOP/s, seconds per product) of an n x n @ n x n matmul in `dtype`, repeated for at least min_seconds
    after one untimed product; a first product that takes min_seconds or more is the measurement (bf16 on a CPU
    without bf16 instructions: tens of seconds at 2048)."""
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    start = time.perf_counter()
    a @ b
    first = time.perf_counter() - start
    if first >= min_seconds:
        return 2 * n**3 / first / 1e9, first
    reps = max(1, int(min_seconds / max(first, 1e-6)))
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    seconds = (time.perf_counter() - start) / reps
    return 2 * n**3 / seconds / 1e9, seconds


def synthetic_batch(batch: int, seconds: float, cfg: Any, tokens: int, vocab: int) -> Any:
    import torch

    from asrkit.records import Batch

    frames = int(seconds * 1000 / cfg.features.hop_ms)
    return Batch([str(i) for i in range(batch)], torch.randn(batch, frames, cfg.features.n_mels),
                 torch.full((batch,), frames), torch.randint(1, vocab, (batch, tokens)),
                 torch.full((batch,), tokens), [""] * batch)


def train_steps(model: Any, optimizer: Any, data: Any, steps: int, bf16: bool, grad_clip: float) -> float:
    """Seconds for `steps` forward + backward + clip + AdamW steps, fp32 or under bf16 autocast."""
    from contextlib import nullcontext

    import torch

    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = model.loss(data)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    return time.perf_counter() - start


def run_combo(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Parameters, fp32 step rate and FLOPs on the full batch; fp32 and bf16-autocast rates on a small one."""
    import torch

    from asrkit.models import build_model

    cfg = combo_config(name, args.sets)
    char = cfg.tokenizer.kind == "char"
    vocab = 28 if char else cfg.tokenizer.vocab_size + 1  # AN4: blank + a-z + space; pieces + blank
    tokens = args.chars if char else round(args.chars / CHARS_PER_PIECE)
    torch.manual_seed(0)
    model = build_model(cfg, cfg.features.n_mels, vocab).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    frames = int(args.seconds * 1000 / cfg.features.hop_ms) // model.time_reduction
    if tokens + 2 > frames:  # CTC needs a frame per token (and one between repeats)
        sys.exit(f"{name}: {tokens}-token targets need more than the {frames} frames that {args.seconds:g} s give "
                 f"after its {model.time_reduction}x time reduction: ask for fewer --chars or more --seconds")
    data = synthetic_batch(args.batch, args.seconds, cfg, tokens, vocab)
    with flop_counter() as counter:  # the untimed first step: warms up as well
        train_steps(model, optimizer, data, 1, False, cfg.train.grad_clip)
    fp32 = train_steps(model, optimizer, data, args.steps, False, cfg.train.grad_clip) / args.steps
    small = synthetic_batch(args.bf16_batch, args.seconds, cfg, tokens, vocab)
    rates: dict[bool, float | None] = {}
    error = ""
    for bf16 in (False, True):
        try:
            train_steps(model, optimizer, small, 1, bf16, cfg.train.grad_clip)  # warm-up in this precision, shape
            rates[bf16] = args.bf16_batch * args.seconds * args.bf16_steps / train_steps(
                model, optimizer, small, args.bf16_steps, bf16, cfg.train.grad_clip)
        except RuntimeError as err:  # oneDNN has no bf16 LSTM primitive without AVX-512 BF16 / AMX
            if not bf16:
                raise
            rates[bf16], error = None, str(err).splitlines()[0]
    flops = counter.get_total_flops()
    return {"combo": name, "encoder": COMBOS[name][0], "objective": COMBOS[name][1], "vocab": vocab,
            "tokens": tokens, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "step_s": fp32, "audio_s_per_s": args.batch * args.seconds / fp32, "gflop_per_step": flops / 1e9,
            "gflop_per_s": flops / fp32 / 1e9, "small_fp32": rates[False], "small_bf16": rates[True],
            "bf16_error": error}


def matrix(args: argparse.Namespace) -> None:
    import os

    import torch

    names = list(COMBOS) if args.combos in (None, "all") else [c.strip() for c in args.combos.split(",") if c.strip()]
    unknown = [n for n in names if n not in COMBOS]
    if unknown or not names:
        sys.exit(f"--combos {args.combos!r}: a comma-separated list of {', '.join(COMBOS)} (or all)")
    args.steps = args.steps or 3
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(args.threads or cores)
    load = os.getloadavg()[0]  # other processes on these cores: OpenMP threads that outnumber the free cores spin
    began = time.perf_counter()
    peak32, _ = matmul_rate(torch.float32, args.peak_size, 1.0)
    peak16, seconds16 = matmul_rate(torch.bfloat16, args.bf16_peak_size, 1.0)
    same32, _ = matmul_rate(torch.float32, args.bf16_peak_size, 1.0)
    rows = []
    for name in names:
        rows.append(run_combo(name, args))
        gc.collect()
    print(f"# CPU: {cpu_model()}, {cores} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()} kernels); {time.perf_counter() - began:.0f} s in all; "
          f"load average {load:.1f} before it{' (busy cores: lower figures)' if load > 0.5 else ''}")
    if args.sets:
        print(f"# every combination with --set {' '.join(args.sets)}")
    print(f"# matmul peak: fp32 {args.peak_size}^2 {peak32:.1f} GFLOP/s (the % peak below); {args.bf16_peak_size}^2: "
          f"bf16 {peak16:.2f} GFLOP/s ({seconds16:.2f} s a product), fp32 {same32:.1f} GFLOP/s: bf16 "
          f"{same32 / peak16:.0f}x slower")
    print(f"# fp32 step: batches of {args.batch} x {args.seconds:g} s, {args.chars} characters a target "
          f"({args.chars / CHARS_PER_PIECE:.0f} unigram pieces), AdamW; FLOPs of one step as "
          f"FlopCounterMode counts them (matmul, conv, attention), mean of {args.steps} timed steps after it")
    print(f"# bf16: torch.autocast(cpu, bfloat16) against fp32 on batches of {args.bf16_batch} x {args.seconds:g} s, "
          f"{args.bf16_steps} timed step(s) after one")
    head = (f"{'combination':22}{'encoder':17}{'objective':15}{'params':>8}{'audio s/s':>11}{'s/step':>8}"
            f"{'GFLOP/step':>11}{'GFLOP/s':>9}{'% peak':>8}{'fp32 B=' + str(args.bf16_batch):>11}"
            f"{'bf16 B=' + str(args.bf16_batch):>11}{'bf16/fp32':>10}")
    print(head)
    for r in rows:
        bf16 = (f"{r['small_bf16']:11.2f}{r['small_bf16'] / r['small_fp32']:9.3f}x" if r["small_bf16"] is not None
                else f"{'fails':>11}{'-':>10}")
        print(f"{r['combo']:22}{r['encoder']:17}{r['objective']:15}{r['params_m']:7.2f}M{r['audio_s_per_s']:11.1f}"
              f"{r['step_s']:8.2f}{r['gflop_per_step']:11.1f}{r['gflop_per_s']:9.1f}"
              f"{100 * r['gflop_per_s'] / peak32:7.0f}%{r['small_fp32']:11.1f}{bf16}")
    for r in rows:
        if r["bf16_error"]:
            print(f"bf16 autocast fails for {r['combo']}: {r['bf16_error']}")
    if args.json:
        record = {"mode": "matrix", "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                  "load_average": round(load, 2),
                  "peak_size": args.peak_size, "peak_fp32_gflops": round(peak32, 2),
                  "bf16_peak_size": args.bf16_peak_size, "peak_bf16_gflops": round(peak16, 3),
                  "peak_fp32_gflops_at_bf16_size": round(same32, 2),
                  "batch": args.batch, "seconds": args.seconds, "chars": args.chars, "steps": args.steps,
                  "bf16_batch": args.bf16_batch, "bf16_steps": args.bf16_steps,
                  "rows": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]}
        with args.json.open("a") as f:
            f.write(json.dumps(record) + "\n")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    import platform

    return platform.processor() or "unknown CPU"


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
                        help="torch CPU threads (0: the trainer's choice, the cores less one per loader worker; "
                             "--matrix: all cores)")
    parser.add_argument("--json", type=Path, help="append the figures to this file as one JSON line")
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        help="more config: model.rnn_hidden=512 (with --matrix: on top of every combination's conf)")
    matrix_args = parser.add_argument_group("--matrix: every encoder x objective, bare steps on the CPU")
    matrix_args.add_argument("--matrix", action="store_true",
                             help="params, fp32 audio s/s, FLOP/s against the matmul peak, bf16 vs fp32 per "
                                  "combination (batch 16 x 3 s, 3 steps unless --batch, --seconds, --steps)")
    matrix_args.add_argument("--combos", help=f"with --matrix (implied): a subset of {','.join(COMBOS)}")
    matrix_args.add_argument("--chars", type=int, default=40, help="characters a target (default 40)")
    matrix_args.add_argument("--bf16-batch", type=int, default=1,
                             help="utterances a batch in the bf16 vs fp32 comparison (default 1)")
    matrix_args.add_argument("--bf16-steps", type=int, default=1, help="timed steps of that comparison (default 1)")
    matrix_args.add_argument("--peak-size", type=int, default=2048, help="fp32 matmul of this size (default 2048)")
    matrix_args.add_argument("--bf16-peak-size", type=int, default=512,
                             help="bf16 (and fp32) matmul of this size (default 512: without bf16 instructions a "
                                  "2048 product in bf16 takes ~2 minutes on a Zen 3 core)")
    args = parser.parse_args()
    if args.matrix or args.combos:
        args.batch, args.seconds = args.batch or 16, args.seconds or 3.0
        matrix(args)
        return
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
    from asrkit.experiment import set_cpu_threads
    from asrkit.models import build_model

    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    else:  # the trainer's rule on a CPU (a core per loader worker), for the bare step too
        set_cpu_threads(device, p["workers"], 1)
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
