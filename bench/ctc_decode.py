"""CTC decoding speed and accuracy: the same emissions through greedy, pyctcdecode at its defaults, asrkit's
decoder and (when flashlight-text is installed) torchaudio's flashlight ctc_decoder, at several beam widths.
The flashlight decoder spells words from a lexicon (the LM's words): a closed vocabulary, which the others
do not impose, so its WER is not like for like.

Prints, per decoder: WER, CER, seconds of audio decoded per second on one core (x real time), and the peak
Python memory of the decoding (tracemalloc; the KenLM model's own memory is its file size, printed once).

Emissions come from a real model (--model EXP --manifest M --lm LM), or by default are synthetic: sentences of
a synthetic language (Zipfian words, a sparse Markov chain between them) spelled as 50 frames/s character
emissions with a known share of confusable and wrong characters; the 4-gram LM is trained with lmplz on
other sentences of the same language (needs lmplz: `make kenlm`).

    python bench/ctc_decode.py                       # synthetic, beams 10 50 100
    python bench/ctc_decode.py --model exp/ds2 --manifest data/dev.jsonl --lm exp/lm/digits.bin
"""

from __future__ import annotations

import argparse
import gc
import itertools
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
    from asrkit.lm import build_lm

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
    from asrkit.transcribe import compute_emissions

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
                              sil_token="|", lm_weight=alpha, word_score=beta)
    except (ImportError, RuntimeError) as err:
        print(f"# flashlight decoder unavailable: {err}", file=sys.stderr)
        return None
    torch.set_num_threads(1)
    return lambda lp: " ".join(decoder(torch.from_numpy(lp)[None])[0][0].words)


# ------------------------------------------------------------------------------------------ measuring


def measure(name: str, make: Callable[[], Callable[[np.ndarray], str] | None], data: Data) -> None:
    decode = make()
    if decode is None:
        return
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
    print(f"{name:<34} WER {words.rate:7.2%}  CER {chars.rate:7.2%}  {data.seconds / cpu:8.1f}x real time/core  "
          f"peak {peak / 2**20:6.1f} MiB", flush=True)


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
        default = LMDecodeOptions(lm=data.lm, alpha=args.alpha, beta=args.beta)
        measure("greedy", lambda: greedy(data), data)
        measure(f"asrkit default (beam {default.beam_size})", lambda: asrkit_decoder(data, default), data)
        for beam in beams:
            if not args.skip_slow:
                measure(f"pyctcdecode defaults beam {beam}",
                        lambda b=beam: pyctcdecode_defaults(data, b, args.alpha, args.beta), data)
            measure(f"asrkit beam {beam}", lambda b=beam: asrkit_decoder(data, replace(default, beam_size=b)), data)
            measure(f"flashlight (lexicon) beam {beam}",
                    lambda b=beam: flashlight(data, b, args.alpha, args.beta, Path(tmp)), data)


if __name__ == "__main__":
    main()
