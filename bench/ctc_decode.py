"""CTC decoding speed and accuracy: the same emissions through greedy, pyctcdecode at its defaults, asrkit's
decoder with each backend (flashlight: flashlight-text's lexicon search, asrkit: asrkit's Python prefix search)
and torchaudio's flashlight ctc_decoder (as its tutorial builds it), at several beam widths. The flashlight
searches spell words from a lexicon (the LM's words): a closed vocabulary, which the prefix searches do not
impose; on these data it is worth much of their WER gain.

Prints, per decoder: WER, CER, seconds of audio decoded per second of CPU time of this one process (x real
time per core), the peak Python memory of the decoding (tracemalloc) and the growth of the peak resident memory
while the decoder is built and run (C++ included; an LM already loaded by an earlier decoder of the same kind
is not counted again). Last, the fastest decoder whose WER is at most pyctcdecode beam 100's, and its speed
relative to it.

Emissions come from a real model (--model EXP --manifest M --lm LM), or by default are synthetic: sentences of
a synthetic language (Zipfian words, a sparse Markov chain between them) spelled as 50 frames/s character
emissions with a known share of confusable and wrong characters; the 4-gram LM is trained with lmplz on
other sentences of the same language (needs lmplz: `make kenlm`).

    python bench/ctc_decode.py                       # synthetic, beams 10 50 100
    python bench/ctc_decode.py --model exp/deepspeech2 --manifest data/dev.jsonl --lm exp/lm/digits.bin
"""

from __future__ import annotations

import argparse
import gc
import itertools
import math
import os
import random
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asrkit.decoding import CTCBeamDecoder, LMDecodeOptions  # noqa: E402
from asrkit.metrics import ErrorRate  # noqa: E402

FRAME_SHIFT = 0.02  # 50 frames/s, as DeepSpeech2 with a time stride of 2 over 10 ms features
ALPHABET = [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]  # vocabulary after the blank (id 0)


@dataclass
class Data:
    vocab: list[str]
    log_probs: list[np.ndarray]
    refs: list[str]
    frame_shift: float
    lm: str
    seconds: float


# ------------------------------------------------------------------------------------------ synthetic data


def synthetic_language(seed: int, words: int = 20000, successors: int = 100,
                       markov: float = 0.6) -> Callable[[random.Random], str]:
    """A sentence sampler: Zipfian word frequencies; with probability `markov` the next word is one of the
    previous word's ~100 likely successors, else any word (so the LM helps, but cannot know everything)."""
    rng = random.Random(seed)
    cons, vows, codas = "bcdfghjklmnprstvwz", "aeiou", ["", "", "", "n", "s", "r", "t", "l"]
    lexicon: set[str] = set()
    while len(lexicon) < words:
        n = rng.choice([1, 1, 2, 2, 2, 3, 3, 4])
        lexicon.add("".join(rng.choice(cons) + rng.choice(vows) + rng.choice(codas) for _ in range(n)))
    vocab = sorted(lexicon)
    rng.shuffle(vocab)
    zipf = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(vocab))))
    succ = [rng.choices(range(len(vocab)), cum_weights=zipf, k=successors) for _ in vocab]
    succ_w = list(itertools.accumulate(1.0 / (j + 1) for j in range(successors)))

    def sentence(r: random.Random) -> str:
        w = r.choices(range(len(vocab)), cum_weights=zipf)[0]
        out = [vocab[w]]
        for _ in range(r.randint(5, 18) - 1):
            w = r.choices(succ[w], cum_weights=succ_w)[0] if r.random() < markov else \
                r.choices(range(len(vocab)), cum_weights=zipf)[0]
            out.append(vocab[w])
        return " ".join(out)

    return sentence


def synthetic_emissions(text: str, rng: np.random.Generator, uncertain: float = 0.3, lost: float = 0.04,
                        deleted: float = 0.01, blank_uncertain: float = 0.1) -> np.ndarray:
    """Character emissions (T, V) at 50 frames/s: each character 1-2 frames then 1-4 blank frames.

    Most frames are peaked (as a trained model's). An `uncertain` share of characters has a flatter peak with
    1-3 competitors, from 3 nats below to 0.5 above it (recoverable by the LM: the truth is among the
    candidates); a `lost` share is confidently another character (the truth far below: unrecoverable by a
    beam that prunes tokens under -5), a `deleted` share is all blank; a `blank_uncertain` share of blank
    frames has a flat peak with the character competing."""
    v = len(ALPHABET) + 1
    index = {c: i + 1 for i, c in enumerate(ALPHABET)}
    rows: list[np.ndarray] = []
    for ch in text:
        tok = index[ch]
        u = rng.random()
        comps = rng.integers(1, v, size=int(rng.integers(1, 4)))
        offsets = rng.uniform(-0.5, 3.0, size=len(comps))
        for _ in range(1 if rng.random() < 0.7 else 2):
            if u < uncertain:
                row = rng.normal(0.0, 1.2, v)
                row[tok] = rng.uniform(3.0, 6.0)
                row[comps] = row[tok] - offsets
            else:
                row = rng.normal(0.0, 1.0, v)
                peak = rng.normal(9.0, 1.5)
                if u < uncertain + lost:
                    row[comps[0]], row[tok] = peak, peak - rng.uniform(6.0, 10.0)
                elif u < uncertain + lost + deleted:
                    row[0] = peak
                else:
                    row[tok] = peak
            rows.append(row)
        for _ in range(int(rng.integers(1, 5))):
            row = rng.normal(0.0, 1.0, v)
            if rng.random() < blank_uncertain:
                row[0] = rng.uniform(3.0, 6.0)
                row[tok] = row[0] - rng.uniform(-0.5, 2.0)
            else:
                row[0] = rng.normal(9.0, 1.5)
            rows.append(row)
    logits = np.stack(rows)
    logits -= logits.max(axis=1, keepdims=True)
    return (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)


def synthetic_data(utts: int, order: int, workdir: Path, seed: int = 0, uncertain: float = 0.3) -> Data:
    from asrkit.lm_build import build_lm

    sample = synthetic_language(seed)
    rng = random.Random(seed + 1)
    text = workdir / "train.txt"
    text.write_text("".join(sample(rng) + "\n" for _ in range(60000)), encoding="utf-8")
    built = build_lm([text], workdir / "synthetic", order=order)
    nrng = np.random.default_rng(seed + 2)
    refs = [sample(rng) for _ in range(utts)]
    log_probs = [synthetic_emissions(r, nrng, uncertain=uncertain, blank_uncertain=uncertain / 3) for r in refs]
    seconds = sum(lp.shape[0] for lp in log_probs) * FRAME_SHIFT
    return Data(["<blank>", *ALPHABET], log_probs, refs, FRAME_SHIFT, str(built.binary), seconds)


def model_data(model: str, manifest: str, lm: str, utts: int) -> Data:
    from asrkit.checkpoint import load_checkpoint
    from asrkit.data.manifest import read_manifest
    from asrkit.inference import compute_emissions

    loaded = load_checkpoint(model, "cpu")
    chosen = read_manifest(manifest)[:utts]
    rows = list(compute_emissions(loaded, chosen))
    frame_shift = rows[0][2] if rows else 0.02
    return Data(loaded.tokenizer.vocab, [lp for _, lp, _ in rows], [u.text for u, _, _ in rows], frame_shift, lm,
                sum(u.duration for u, _, _ in rows))


# ------------------------------------------------------------------------------------------ decoders


def greedy(data: Data) -> Callable[[np.ndarray], str]:
    def run(lp: np.ndarray) -> str:
        best = lp.argmax(axis=1)
        keep = np.flatnonzero((best != 0) & np.concatenate(([True], best[1:] != best[:-1])))
        return " ".join("".join(data.vocab[i] for i in best[keep]).split())

    return run


def pyctcdecode_defaults(data: Data, beam: int, alpha: float, beta: float) -> Callable[[np.ndarray], str]:
    """pyctcdecode as its README shows it: build_ctcdecoder(labels, lm, unigrams) and decode(logits, beam_width),
    its pruning at the defaults; alpha and beta as asrkit's so that only the search differs."""
    from asrkit.lm import read_unigrams, require_pyctcdecode

    pyctcdecode = require_pyctcdecode()
    decoder = pyctcdecode.build_ctcdecoder(["", *data.vocab[1:]], data.lm, read_unigrams(Path(data.lm)),
                                           alpha=alpha, beta=beta)
    return lambda lp: decoder.decode(lp, beam_width=beam)


def asrkit_decoder(data: Data, options: LMDecodeOptions) -> Callable[[np.ndarray], str]:
    decoder = CTCBeamDecoder(data.vocab, options)
    return lambda lp: decoder.decode(lp, data.frame_shift)[0].text


def flashlight(data: Data, beam: int, alpha: float, beta: float, workdir: Path) -> Callable[[np.ndarray], str] | None:
    """torchaudio's flashlight decoder (C++) with a lexicon of the LM's words, as its tutorial uses it."""
    try:
        import torch
        from torchaudio.models.decoder import ctc_decoder
    except (ImportError, RuntimeError):
        return None
    from asrkit.lm import read_unigrams

    if any(len(t) != 1 for t in data.vocab[1:]):
        return None  # the lexicon spells words in characters
    tokens = ["-", *("|" if t == " " else t for t in data.vocab[1:])]
    lexicon = workdir / "lexicon.txt"
    known = set(tokens)
    lexicon.write_text("".join(f"{w}\t{' '.join(w)} |\n" for w in read_unigrams(Path(data.lm)) if set(w) <= known),
                       encoding="utf-8")
    try:
        decoder = ctc_decoder(lexicon=str(lexicon), tokens=tokens, lm=data.lm, beam_size=beam, blank_token="-",
                              sil_token="|", lm_weight=alpha * math.log(10), word_score=beta)
    except (ImportError, RuntimeError) as err:
        print(f"# flashlight decoder unavailable: {err}", file=sys.stderr)
        return None
    torch.set_num_threads(1)
    return lambda lp: " ".join(decoder(torch.from_numpy(lp)[None])[0][0].words)


# ------------------------------------------------------------------------------------------ measuring


@dataclass
class Row:
    name: str
    wer: float
    speed: float  # x real time per core


def _memory_mib(field: str) -> float:
    """VmRSS / VmHWM of this process in MiB (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) / 1024 for line in f if line.startswith(field + ":")), 0.0)
    except OSError:
        return 0.0


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def measure(name: str, make: Callable[[], Callable[[np.ndarray], str] | None], data: Data) -> Row | None:
    gc.collect()
    _reset_peak_rss()
    rss = _memory_mib("VmRSS")
    decode = make()
    if decode is None:
        return None
    decode(data.log_probs[0])  # warm caches that every real run would have warm too (imports, first LM page-ins)
    gc.collect()
    tracemalloc.start()
    start = time.process_time()
    hyps = [decode(lp) for lp in data.log_probs]
    cpu = time.process_time() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    words, chars = ErrorRate(), ErrorRate()
    for ref, hyp in zip(data.refs, hyps, strict=True):
        words.add(ref.split(), hyp.split())
        chars.add(list(ref), list(hyp))
    # tracemalloc slows Python allocation by ~2x: time a second, untraced pass for the speed figure
    start = time.process_time()
    for lp in data.log_probs:
        decode(lp)
    cpu = min(cpu, time.process_time() - start)
    grown = max(0.0, _memory_mib("VmHWM") - rss)
    print(f"{name:<38} WER {words.rate:7.2%}  CER {chars.rate:7.2%}  {data.seconds / cpu:8.1f}x real time/core  "
          f"peak {peak / 2**20:6.1f} MiB Python, +{grown:6.1f} MiB RSS", flush=True)
    return Row(name, words.rate, data.seconds / cpu)


def summary(rows: Sequence[Row]) -> None:
    ref = next((r for r in rows if r.name == "pyctcdecode defaults beam 100"), None)
    if ref is None:
        return
    ok = [r for r in rows if r.wer <= ref.wer + 1e-9 and r is not ref]
    if not ok:
        print(f"# no decoder reaches pyctcdecode beam 100's WER {ref.wer:.2%}")
        return
    best = max(ok, key=lambda r: r.speed)
    print(f"# fastest at or below pyctcdecode beam 100's WER ({ref.wer:.2%}): {best.name}, WER {best.wer:.2%}, "
          f"{best.speed / ref.speed:.1f}x its speed ({best.speed:.0f}x real time/core)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint or experiment folder (real emissions)")
    parser.add_argument("--manifest", help="JSONL manifest to decode with --model")
    parser.add_argument("--lm", help="KenLM model for --model (built from text like its transcripts)")
    parser.add_argument("--utts", type=int, default=200, help="utterances to decode")
    parser.add_argument("--order", type=int, default=4, help="n-gram order of the synthetic LM")
    parser.add_argument("--uncertain", type=float, default=0.3,
                        help="synthetic: share of uncertain characters (a third as many uncertain blank frames)")
    parser.add_argument("--beams", default="10,50,100", help="beam widths")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--skip-slow", action="store_true", help="skip pyctcdecode's defaults (the slow baseline)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    beams = [int(b) for b in args.beams.split(",")]
    with tempfile.TemporaryDirectory(prefix="asrkit-bench-") as tmp:
        if args.model:
            if not (args.manifest and args.lm):
                parser.error("--model needs --manifest and --lm")
            data = model_data(args.model, args.manifest, args.lm, args.utts)
            source = f"{args.model} on {args.manifest}"
        else:
            data = synthetic_data(args.utts, args.order, Path(tmp), uncertain=args.uncertain)
            source = f"synthetic emissions ({args.uncertain:.0%} uncertain characters), {args.order}-gram LM"
        lm_mb = Path(data.lm).stat().st_size / 2**20
        print(f"# {source}: {len(data.log_probs)} utterances, {data.seconds:.0f} s of audio, "
              f"{sum(lp.shape[0] for lp in data.log_probs)} frames; LM {data.lm} ({lm_mb:.1f} MiB)")
        default = LMDecodeOptions(lm=data.lm, alpha=args.alpha, beta=args.beta, beam_size=32)
        rows = [measure("greedy", lambda: greedy(data), data),
                measure(f"asrkit default ({default.backend}, beam {default.beam_size})",
                        lambda: asrkit_decoder(data, default), data)]
        for beam in beams:
            if not args.skip_slow:
                rows.append(measure(f"pyctcdecode defaults beam {beam}",
                                    lambda b=beam: pyctcdecode_defaults(data, b, args.alpha, args.beta), data))
            for backend in ("asrkit", "flashlight"):
                rows.append(measure(f"asrkit, {backend} backend, beam {beam}", lambda b=beam, k=backend:
                                    asrkit_decoder(data, replace(default, beam_size=b, backend=k)), data))
            rows.append(measure(f"torchaudio ctc_decoder beam {beam}",
                                lambda b=beam: flashlight(data, b, args.alpha, args.beta, Path(tmp)), data))
        summary([r for r in rows if r is not None])

if __name__ == "__main__":
    main()
