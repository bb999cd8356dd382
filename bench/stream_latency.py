"""Streaming transcription with a transducer: compute latency per chunk and streaming vs whole-utterance WER.

Every utterance of a manifest is fed through `asrkit.stream.Streamer` in chunks of --chunk-ms (several sizes may
be given) and also decoded whole by `model.decode` (batched, as `asrkit evaluate` does). Prints, per chunk size:
the compute time per chunk (p50 / p90 / p99 / max, ms), the time from the end of the audio to the final
transcript, the real-time factor, the WER / CER of both ways, and how many transcripts differ (0 expected: a
unidirectional model streams exactly).

Latency of a word = time until its audio has arrived + up to one chunk of waiting + the compute time per chunk
+ the model's look-ahead (half an FFT window, 16 ms, and the frames an encoder frame stacks, R x 10 ms).

    python bench/stream_latency.py EXP MANIFEST [--chunk-ms 160,320,640] [--limit N] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="checkpoint or experiment folder of a unidirectional transducer")
    parser.add_argument("manifest", help="JSONL manifest with reference text")
    parser.add_argument("--chunk-ms", default="160,320,640", help="comma-separated chunk sizes in ms")
    parser.add_argument("--limit", type=int, default=0, help="only the first N utterances (0: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: per-frame steps are tiny)")
    parser.add_argument("--decoding", choices=["config", "greedy", "beam"], default="config",
                        help="override the checkpoint's [decode] search (greedy: beam 1; beam: --beam-size or 4)")
    parser.add_argument("--beam-size", type=int, default=0, help="override decode.beam_size (0: keep)")
    parser.add_argument("--max-symbols", type=int, default=0, help="override decode.max_symbols (0: keep)")
    args = parser.parse_args()

    import torch

    from asrkit.checkpoint import load_checkpoint
    from asrkit.data.audio import load_audio
    from asrkit.data.manifest import read_manifest
    from asrkit.inference import decode_utterances
    from asrkit.scoring import score
    from asrkit.stream import Streamer

    torch.set_num_threads(args.threads)
    loaded = load_checkpoint(args.model, "cpu")
    model = loaded.model
    search = loaded.config.decode.search_options()
    if args.decoding != "config":
        search = replace(search, beam_size=1 if args.decoding == "greedy" else args.beam_size or 4, nbest=1)
    elif args.beam_size:
        search = replace(search, beam_size=args.beam_size)
    if args.max_symbols:
        search = replace(search, max_symbols=args.max_symbols)
    search = model.resolve_search(search)
    utts = read_manifest(args.manifest)
    if args.limit:
        utts = utts[: args.limit]
    rate = loaded.featurizer.cfg.sample_rate
    waves = [load_audio(u.audio_filepath, rate) for u in utts]
    audio_s = sum(len(w) for w in waves) / rate

    started = time.perf_counter()
    whole = list(decode_utterances(loaded, utts, search=search, batch_size=16))
    whole_s = time.perf_counter() - started
    whole_result = score(whole)
    print(f"model {loaded.path} ({loaded.config.model.family}, beam {search.beam_size} (1: greedy) "
          f"max_symbols {search.max_symbols}, "
          f"encoder frame {model.time_reduction * loaded.featurizer.frame_shift * 1000:.0f} ms); "
          f"{len(utts)} utterances, {audio_s / 60:.1f} min; torch threads {torch.get_num_threads()}")
    print(f"whole-utterance: WER {whole_result.wer:.2%} CER {whole_result.cer:.2%}  "
          f"(batched, real-time factor {whole_s / audio_s:.3f})")
    header = (f"{'chunk':>6} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'max ms':>7} {'final ms':>8} {'RTF':>6} "
              f"{'WER':>7} {'CER':>7} {'differ':>6}")
    print(header)
    for chunk_ms in [float(c) for c in args.chunk_ms.split(",") if c.strip()]:
        step = round(rate * chunk_ms / 1000)
        latencies, finals, pairs, differ, compute = [], [], [], 0, 0.0
        for utt, wave, (_, hyp_whole) in zip(utts, waves, whole, strict=True):
            streamer = Streamer(loaded, search)
            for start in range(0, len(wave), step):
                latencies.append(streamer.accept(wave[start : start + step]).latency_s)
            hyps, final = streamer.finish()
            finals.append(final)
            compute += final
            pairs.append((utt, hyps[0]))
            differ += hyps[0].text != hyp_whole.text
        compute += sum(latencies)
        result = score(pairs)
        ms = [x * 1000 for x in latencies]
        print(f"{chunk_ms:>6.0f} {percentile(ms, 50):>7.1f} {percentile(ms, 90):>7.1f} {percentile(ms, 99):>7.1f} "
              f"{max(ms):>7.1f} {percentile([f * 1000 for f in finals], 50):>8.1f} {compute / audio_s:>6.3f} "
              f"{result.wer:>7.2%} {result.cer:>7.2%} {differ:>6}")


if __name__ == "__main__":
    main()
