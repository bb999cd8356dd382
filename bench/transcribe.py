"""End-to-end `asrkit transcribe` on the CPU: audio loading, features, model and decoding, through the real
command line in a fresh process each time.

Prints the real-time factor (wall seconds / audio seconds) over many files, and the start-up time to the first
output line (process start, imports, checkpoint, one short file). Targets for the small DeepSpeech2 on 2 cores:
real-time factor <= 0.05 and start-up < 3 s.

Without --model it saves an untrained small DeepSpeech2 (recipes/fsdd/conf/deepspeech2.toml: the speed is the
trained model's) and writes connected-digit files from the FSDD recordings in tests/assets.

    python bench/transcribe.py [--model EXP] [--files 40] [--seconds 10] [--threads 2] [-- extra transcribe options]
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


def make_model(folder: Path) -> Path:
    import torch

    from asrkit.checkpoint import save_checkpoint
    from asrkit.config import load_config
    from asrkit.data.features import Featurizer
    from asrkit.data.tokenizer import CharTokenizer
    from asrkit.models import build_model

    cfg = load_config(ROOT / "recipes" / "fsdd" / "conf" / "deepspeech2.toml")
    tok = CharTokenizer.train(["zero one two three four five six seven eight nine"])
    feat = Featurizer(cfg.features)
    feat.fit_stats([0.1 * torch.randn(16000, generator=torch.Generator().manual_seed(0))])
    model = build_model(cfg, cfg.features.n_mels, len(tok.vocab)).eval()
    save_checkpoint(folder / "best.pt", config=cfg, tokenizer=tok, featurizer=feat, model=model)
    return folder / "best.pt"


def make_audio(folder: Path, files: int, seconds: float, seed: int = 0) -> list[Path]:
    """Connected digits: FSDD recordings of one speaker with short silences, about `seconds` long each."""
    import numpy as np

    from asrkit.data.audio import load_audio, write_audio

    recordings = sorted((ROOT / "tests" / "assets" / "fsdd" / "recordings").glob("*.wav"))
    rng = random.Random(seed)
    out = []
    for n in range(files):
        parts, total = [], 0.0
        while total < seconds:
            wave = load_audio(rng.choice(recordings), 8000).numpy()
            gap = np.zeros(int(8000 * rng.uniform(0.1, 0.4)), dtype=np.float32)
            parts += [wave, gap]
            total += (len(wave) + len(gap)) / 8000
        path = folder / f"utt{n:03d}.wav"
        write_audio(path, np.concatenate(parts), 8000)
        out.append(path)
    return out


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(seconds to the first output line, seconds in all, stdout)."""
    with tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        t_first = time.perf_counter() - start
        rest = proc.stdout.read()
        proc.wait()
        total = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"asrkit transcribe failed ({proc.returncode}): {err.read().strip()[-2000:]}")
    return t_first, total, first + rest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint or experiment folder (default: an untrained small DS2)")
    parser.add_argument("--files", type=int, default=40, help="audio files for the real-time factor")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each generated file")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (OMP_NUM_THREADS)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (the best is kept)")
    parser.add_argument("--asrkit", default=f"{sys.executable} -m asrkit", help="the asrkit command to run")
    parser.add_argument("extra", nargs="*", help="more `asrkit transcribe` options, after --")
    args = parser.parse_args()
    from asrkit.data.audio import audio_info

    with tempfile.TemporaryDirectory(prefix="asrkit-bench-") as tmp:
        folder = Path(tmp)
        model = args.model or str(make_model(folder))
        audio = make_audio(folder, args.files, args.seconds)
        seconds = sum(audio_info(p)[0] for p in audio)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        cmd = [*args.asrkit.split(), "transcribe", model, "--device", "cpu", *args.extra]
        starts = [run([*cmd, str(audio[0])], env)[0] for _ in range(args.repeat)]
        totals = []
        for _ in range(args.repeat):
            _, total, out = run([*cmd, *map(str, audio)], env)
            assert len(out.strip().splitlines()) == len(audio), out[-500:]
            totals.append(total)
        print(f"# {model}: {len(audio)} files, {seconds:.0f} s of audio, {args.threads} threads, "
              f"options: {' '.join(args.extra) or '(greedy)'}")
        print(f"start-up to first output (1 file of {audio_info(audio[0])[0]:.1f} s): {min(starts):.2f} s "
              f"(target < 3 s)")
        print(f"real-time factor: {min(totals) / seconds:.4f} ({seconds / min(totals):.0f}x real time, "
              f"{min(totals):.1f} s for {seconds:.0f} s, start-up included; target <= 0.05)")


if __name__ == "__main__":
    main()
