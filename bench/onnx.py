"""ONNX Runtime against PyTorch on the CPU for trained models: real-time factor, start-up time to the first
transcript, and the WER of float32 and int8 (dynamically quantised) exports.

For each checkpoint (default: the AN4 recipe's Conformer-CTC and RNN-T, where they were trained) it exports a float32
and an int8 folder (`asrkit export [--quantize int8]`), then, for PyTorch and both exports, each in a fresh process:

- start-up: `asrkit transcribe MODEL FIRST_FILE --greedy`, wall time from process start to exit (interpreter,
  imports, model, one short file; the median of --repeat runs). Target: < 1 s for onnxruntime.
- decoding: the manifest, greedy and with the model's default search (its [decode] and tune.json: the CTC model's
  3-gram LM beam search), on --threads threads (torch.set_num_threads / onnxruntime's intra-op threads; the CTC beam
  search in as many processes): WER and real-time factor (decoding wall time / audio duration, model loaded).
  Target: onnxruntime faster than torch. Both runtimes' idle threads wait without spinning (OMP_WAIT_POLICY=PASSIVE
  for torch; asrkit.onnx.runtime turns onnxruntime's spinning off): on a shared CPU a spinning thread takes the
  cycles the other one needs, and torch's two threads ran up to 10x slower than one.

    python bench/onnx.py [--model CKPT ...] [--manifest recipes/an4/data/dev.jsonl] [--threads 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Python puts this script's folder first on the path, where this file would shadow the onnx package: swap it for ROOT.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
MODELS = [ROOT / "recipes/an4/exp/conformer_ctc_cpu/best.pt", ROOT / "recipes/an4/exp/transducer_sp_an4_fsdd/best.pt"]
SEARCHES = ("greedy", "default", "beam8")  # default: [decode] + tune.json (the AN4 Conformer-CTC: beam 32 + 3-gram)


def env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}


def worker(runtime: str, model: str, manifest: str, threads: int, search: str) -> dict[str, float]:
    """In this process: load the model, decode the manifest; WER, load and decoding seconds, audio seconds."""
    from asrkit.data.manifest import read_manifest
    from asrkit.request import DecodeRequest
    from asrkit.scoring import score

    request = DecodeRequest(greedy=search == "greedy", settings={"beam_size": 8} if search == "beam8" else {})
    utts = read_manifest(manifest)
    start = time.perf_counter()
    if runtime == "torch":
        import torch

        from asrkit.checkpoint import load_checkpoint
        from asrkit.inference import choose_search, decode_utterances

        torch.set_num_threads(threads)
        loaded = load_checkpoint(model)
        loaded_at = time.perf_counter()
        pairs = list(decode_utterances(loaded, utts, search=choose_search(loaded, request), workers=threads))
    else:
        from asrkit.onnx.runtime import decode_nbest, load_model, search_of

        onnx = load_model(model, threads)
        loaded_at = time.perf_counter()
        pairs = [(u, h[0]) for u, h in decode_nbest(onnx, utts, search=search_of(onnx, request), workers=threads)]
    done = time.perf_counter()
    result = score(pairs)
    return {"wer": result.wer, "load_s": loaded_at - start, "decode_s": done - loaded_at,
            "audio_s": sum(u.duration for u in utts), "torch_imported": float("torch" in sys.modules)}


def run_worker(runtime: str, model: Path, manifest: Path, threads: int, search: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--worker", runtime, str(model), str(manifest), "--threads",
                          str(threads), "--search", search], capture_output=True, text=True, check=True,
                         env=env(threads))
    return json.loads(out.stdout.strip().splitlines()[-1])


def startup(model: Path, audio: str, threads: int, repeat: int) -> tuple[float, float]:
    """Median wall and CPU (user + system) seconds of `asrkit transcribe MODEL AUDIO --greedy` in a fresh process:
    on a busy machine the CPU time is what the start-up costs on an idle one."""
    import resource

    asrkit = Path(sys.executable).parent / "asrkit"
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([str(asrkit), "transcribe", str(model), audio, "--greedy"], capture_output=True, check=True,
                       env=env(threads))
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def bench(checkpoint: Path, manifest: Path, threads: int, repeat: int, out: Path) -> list[str]:
    from asrkit.onnx.export import export

    rows = []
    first = json.loads(manifest.read_text(encoding="utf-8").splitlines()[0])["audio_filepath"]
    models = {"torch": checkpoint}
    for quantize in ("", "int8"):
        folder = out / f"{checkpoint.parent.name}-{quantize or 'fp32'}"
        start = time.perf_counter()
        export(checkpoint, folder, quantize=quantize)
        print(f"  exported {folder} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        models[f"onnx {quantize or 'fp32'}"] = folder
    for name, model in models.items():
        wall, cpu = startup(model, first, threads, repeat)
        cells = [f"{checkpoint.parent.name:<24} {name:<10} {wall:5.2f} s (CPU {cpu:5.2f} s)"]
        for search in SEARCHES:
            r = run_worker("torch" if name == "torch" else "onnx", model, manifest, threads, search)
            cells.append(f"{search} WER {r['wer']:6.2%} RTF {r['decode_s'] / r['audio_s']:.4f} "
                         f"(load {r['load_s']:.2f} s{', torch imported' if r['torch_imported'] else ''})")
        rows.append("  ".join(cells))
        print(rows[-1], file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", help="checkpoint(s) (default: the AN4 recipe's)")
    parser.add_argument("--manifest", type=Path, default=ROOT / "recipes/an4/data/dev.jsonl")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="start-up runs per model (the median is shown)")
    parser.add_argument("--out", type=Path, help="where to export (default: a temporary folder)")
    parser.add_argument("--worker", nargs=3, metavar=("RUNTIME", "MODEL", "MANIFEST"), help=argparse.SUPPRESS)
    parser.add_argument("--search", choices=SEARCHES, default="greedy", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, threads=args.threads, search=args.search)))
        return
    models = [m for m in (args.model or MODELS) if m.is_file()]
    if not models or not args.manifest.is_file():
        sys.exit(f"need trained checkpoints ({', '.join(map(str, args.model or MODELS))}: recipes/an4/run.sh) "
                 f"and a manifest ({args.manifest})")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {args.threads} threads; manifest "
          f"{args.manifest}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        rows = [row for m in models for row in bench(m, args.manifest, args.threads, args.repeat, out)]
    print(f"{'model':<24} {'runtime':<10} start-up, wall (CPU)  decoding: WER, RTF = wall / audio seconds, model "
          "loaded (the model's load time)")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
