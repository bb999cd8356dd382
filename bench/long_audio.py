"""Peak memory of `asrkit transcribe` on long recordings: 1, 10 and 60 minutes by default.

Each length is one FLAC file of connected FSDD digits (tests/assets, real speech) with pauses, written at 16 kHz
block by block. Each run is a fresh `python -m asrkit transcribe` process; its peak resident memory (ru_maxrss
from wait4) and wall time are printed. With the default --segment-seconds (40) long audio is cut at pauses and
decoded piece by piece, so the peak should be flat in the recording's length; `--whole` adds runs with
--segment-seconds 0 (the file decoded in one piece) for the lengths up to --whole-max-minutes, to show what the
cutting saves.

    python bench/long_audio.py [--model EXP] [--minutes 1,10,60] [--threads 2] [--whole] [-- transcribe options]

Without --model it uses an untrained small DeepSpeech2 (bench/transcribe.py's): memory and speed do not depend
on the weights.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SR = 16000


def make_recording(path: Path, minutes: float, seed: int = 0) -> float:
    """Write `minutes` of connected digits at 16 kHz, block by block (never the whole file in memory)."""
    import numpy as np
    import soundfile as sf

    from asrkit.data.audio import load_audio

    recordings = sorted((ROOT / "tests" / "assets" / "fsdd" / "recordings").glob("*.wav"))
    digits = [load_audio(p, SR).numpy() for p in recordings[:120]]
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    target = int(minutes * 60 * SR)
    written = 0
    with sf.SoundFile(str(path), "w", SR, 1, format="FLAC") as f:
        while written < target:
            block = []
            for _ in range(50):
                gap = noise.normal(0, 1e-3, int(SR * rng.uniform(0.1, 0.8))).astype(np.float32)
                block += [rng.choice(digits), gap]
            data = np.concatenate(block)[: target - written]
            f.write(data)
            written += len(data)
    return written / SR


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(peak RSS in MiB, wall seconds, stdout) of one child process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"asrkit transcribe failed ({proc.returncode}): {err.read().strip()[-2000:]}")
        out.seek(0)
        return usage.ru_maxrss / 1024, wall, out.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint or experiment folder (default: an untrained small DS2)")
    parser.add_argument("--minutes", default="1,10,60", help="recording lengths, comma-separated")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (OMP_NUM_THREADS)")
    parser.add_argument("--whole", action="store_true", help="also decode each file whole (--segment-seconds 0)")
    parser.add_argument("--whole-max-minutes", type=float, default=10, help="longest file decoded whole")
    parser.add_argument("extra", nargs="*", help="more `asrkit transcribe` options, after --")
    args = parser.parse_args()
    from transcribe import make_model

    lengths = [float(m) for m in args.minutes.split(",")]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory(prefix="asrkit-long-") as tmp:
        folder = Path(tmp)
        model = args.model or str(make_model(folder))
        base = [sys.executable, "-m", "asrkit", "transcribe", model, "--device", "cpu", "--format", "jsonl",
                *args.extra]
        print(f"# {model}, {args.threads} threads, options: {' '.join(args.extra) or '(greedy)'}")
        print(f"{'audio':>8}  {'mode':<14} {'peak RSS':>10}  {'wall':>8}  {'RTF':>7}  words")
        for minutes in lengths:
            audio = folder / f"long-{minutes:g}min.flac"
            seconds = make_recording(audio, minutes)
            modes = [("cut at pauses", [])]
            if args.whole and minutes <= args.whole_max_minutes:
                modes.append(("whole", ["--segment-seconds", "0"]))
            for name, opts in modes:
                rss, wall, out = measure([*base, str(audio), *opts], env)
                words = len(out.split('"word"')) - 1
                print(f"{minutes:>6g} m  {name:<14} {rss:>7.0f} MiB  {wall:>6.1f} s  {wall / seconds:>7.4f}  {words}",
                      flush=True)
            audio.unlink()


if __name__ == "__main__":
    main()
