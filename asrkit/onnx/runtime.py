"""An exported model (asrkit.onnx.bundle) on ONNX Runtime's CPU provider, without torch: audio and log-mel in numpy
(asrkit.onnx.frontend), the graphs on onnxruntime, the searches of the PyTorch path (CTC greedy here, CTC beam
search with KenLM through asrkit.decoding, the transducer's in asrkit.onnx.rnnt), long inputs cut and stitched by
asrkit.longform. `transcribe_nbest` and `evaluate` are what asrkit.transcribe / asrkit.evaluate call for an
exported folder, with the same arguments and results.

The search is chosen as for a checkpoint (asrkit.request.choose): the exported [decode] < tune.json in the folder
(or --decode-params) < the options.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asrkit.data.audio import files_to_utterances
from asrkit.data.manifest import read_manifest
from asrkit.decoding import DecoderPool, word_timings
from asrkit.errors import AsrkitError, AudioError
from asrkit.lm import load_fusion_lm
from asrkit.longform import DEFAULT_SEGMENT_SECONDS, SEGMENT_OF, check_segment_seconds, decode_long
from asrkit.onnx.bundle import GRAPHS, MANIFEST, Bundle, read_bundle, require
from asrkit.onnx.frontend import FrontEnd, load_wave
from asrkit.onnx.rnnt import transducer_decode
from asrkit.records import Failure, Hypothesis, Utterance
from asrkit.request import DecodeRequest, choose
from asrkit.scoring import EvalResult, score, write_report
from asrkit.search import SearchOptions, ctc_beam, describe, is_greedy, resolve

CHUNK_UTTERANCES = 2048  # emissions held in memory at once before a CTC beam search decodes them
INPUTS = {"model": ["feats", "feat_lens"], "encoder": ["feats", "feat_lens"], "predictor": ["tokens", "h", "c"],
          "joiner": ["enc", "pred"]}  # each graph's inputs, as asrkit.onnx.export names them


class OnnxModel:
    """The graphs of an exported model in onnxruntime sessions, its front end and tokenizer. `threads`: intra-op
    threads per session (0: onnxruntime's default, one per physical core)."""

    def __init__(self, bundle: Bundle, threads: int = 0) -> None:
        ort = require("onnxruntime")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: no warnings about the shapes the tracer saw
        # Idle threads wait instead of spinning: on a shared CPU a spinning thread takes the cycles the others need
        # (AN4 Conformer-CTC, 2 threads, 2 busy vCPUs: RTF 0.02 without spinning, 0.04 with).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads > 0:
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self.bundle, self.meta, self.path = bundle, bundle.meta, bundle.path
        self.objective = bundle.objective
        self.sessions = {name: _session(ort, bundle, name, opts) for name in GRAPHS[self.objective]}
        self.tokenizer = bundle.tokenizer
        self.frontend = FrontEnd(self.meta["features"], bundle.frontend)
        self.sample_rate = self.frontend.sample_rate
        self.frame_shift = float(self.meta["frame_shift"])  # seconds per feature frame
        self.out_shift = self.frame_shift * int(self.meta["time_reduction"])  # per output frame
        self.min_frames = int(self.meta.get("min_frames", 1))
        pred = self.meta.get("predictor", {})
        self.state_shape = (int(pred.get("layers", 1)), int(pred.get("hidden", 1)))

    def resolve_search(self, search: SearchOptions) -> SearchOptions:
        try:
            return resolve(search, self.objective)
        except AsrkitError as err:
            raise AsrkitError(f"{self.path}: {err}") from None

    def fusion_units(self, search: SearchOptions) -> str:
        """The LM `decode` takes (as ASRModel.fusion_units): a transducer fuses a word LM; CTC loads its own."""
        return "words" if self.objective == "transducer" else ""

    def forward(self, feats: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Features (T_i, F) of a batch -> the CTC log-probs (B, T', V) or the transducer's projected encoder
        frames (B, T', J), and their lengths (B,)."""
        lens = np.array([len(f) for f in feats], dtype=np.int64)
        frames = max(int(lens.max()), self.min_frames)
        batch = np.zeros((len(feats), frames, feats[0].shape[1]), dtype=np.float32)
        for b, f in enumerate(feats):
            batch[b, : len(f)] = f
        name = "model" if self.objective == "ctc" else "encoder"
        out, out_lens = self.sessions[name].run(None, {"feats": batch, "feat_lens": lens})
        return out, out_lens.astype(np.int64)

    def step(self, tokens: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pred, h, c = self.sessions["predictor"].run(None, {"tokens": tokens, "h": h, "c": c})
        return pred, h, c

    def joint(self, enc: np.ndarray, pred: np.ndarray) -> np.ndarray:
        return self.sessions["joiner"].run(None, {"enc": enc, "pred": pred})[0]

    def start_state(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        layers, hidden = self.state_shape
        zeros = np.zeros((layers, n, hidden), dtype=np.float32)
        return zeros, zeros.copy()

    def decode(self, feats: Sequence[np.ndarray], search: SearchOptions, lm: Any = None) -> list[list[Hypothesis]]:
        """N-best lists of a batch of features under a resolved search (ASRModel.decode)."""
        out, lens = self.forward(feats)
        if self.objective == "transducer":
            return transducer_decode(self, out, lens, search, lm, self.tokenizer, self.out_shift)
        if is_greedy(search):
            return [[ctc_greedy(out[b, :n], self.tokenizer.vocab, self.tokenizer.decode, self.out_shift)]
                    for b, n in enumerate(lens.tolist())]
        with DecoderPool(self.tokenizer.vocab, search) as pool:
            return list(pool.decode([out[b, :n] for b, n in enumerate(lens.tolist())], self.out_shift))


def _session(ort: Any, bundle: Bundle, name: str, opts: Any) -> Any:
    """An onnxruntime session of graph `name` (its copy optimised at export when this onnxruntime wrote it:
    asrkit.onnx.export.optimize_for_onnxruntime); an AsrkitError naming the file when it is not a readable graph."""
    path = bundle.graph(name)
    optimized = bundle.meta.get("ort_graphs", {}).get(name)
    if optimized and bundle.meta.get("onnxruntime") == ort.__version__ and (bundle.path / optimized).is_file():
        path = bundle.path / optimized
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # done at export
    else:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    hint = f"export the model again (`asrkit export CHECKPOINT {bundle.path}`)"
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) for broken files
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise AsrkitError(f"{path}: not a readable ONNX graph ({reason}); {hint}") from None
    inputs = [i.name for i in session.get_inputs()]
    if inputs != INPUTS[name]:
        raise AsrkitError(f"{path}: the {name} graph takes {inputs}, not {INPUTS[name]}: it was not written by "
                          f"`asrkit export` for this {MANIFEST}; {hint}")
    return session


def ctc_greedy(log_probs: np.ndarray, vocab: Sequence[str], decode: Any, frame_shift: float) -> Hypothesis:
    """Best path of (T', V) log-probs (asrkit.decoding.ctc_greedy): argmax per frame, repeats merged, blanks
    dropped; score = the chosen log-probs summed."""
    best = log_probs.argmax(axis=-1)
    tokens, frames = [], []
    prev = 0
    for t, tok in enumerate(best.tolist()):
        if tok != 0 and tok != prev:
            tokens.append(tok)
            frames.append(t)
        prev = tok
    score = float(log_probs[np.arange(len(best)), best].sum())
    return Hypothesis(decode(tokens), tuple(tokens), score, word_timings(tokens, frames, vocab, frame_shift))


def load_model(model: str | Path, threads: int = 0, device: str = "auto") -> OnnxModel:
    """An exported folder on ONNX Runtime's CPU provider (`device` auto or cpu)."""
    if device not in ("auto", "cpu"):
        raise AsrkitError(f"--device {device}: an exported model runs on ONNX Runtime's CPU provider here; use "
                          "--device cpu (or transcribe the PyTorch checkpoint on the GPU)")
    return OnnxModel(read_bundle(model), threads)


def search_of(model: OnnxModel, decode: SearchOptions | DecodeRequest | None) -> SearchOptions:
    """None: the exported [decode]; a request: asrkit.request.choose (tune.json in the folder); settings: as given."""
    base = SearchOptions.from_json(model.meta["decode"], str(model.path / MANIFEST))
    if decode is None:
        return base
    return choose(base, model.path, decode) if isinstance(decode, DecodeRequest) else decode


def decode_nbest(model: OnnxModel, utts: Sequence[Utterance], *, search: SearchOptions | None = None,
                 lm: Any = None, batch_size: int = 16, failures: list[Failure] | None = None, workers: int = 0,
                 segment_seconds: float = DEFAULT_SEGMENT_SECONDS) -> Iterator[tuple[Utterance, list[Hypothesis]]]:
    """asrkit.inference.decode_nbest for an exported model: n-best lists in input order; an unreadable file gets
    [Hypothesis("")] and is recorded in `failures`; long inputs are cut at pauses and stitched."""
    check_segment_seconds(segment_seconds)
    search = model.resolve_search(search if search is not None else search_of(model, None))
    if lm is None:
        lm = load_fusion_lm(search.lm, model.fusion_units(search), model.tokenizer.vocab)
    yield from decode_long(utts, segment_seconds, failures,
                           lambda pieces: _decode_pieces(model, pieces, batch_size, failures, search, lm, workers))


def _features(model: OnnxModel, utts: Sequence[Utterance], batch_size: int,
              failures: list[Failure] | None) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """Batches of similar duration: (input indices, features); an unreadable file is recorded in `failures` (when
    given, else raised) and comes back alone with no features."""
    order = sorted(range(len(utts)), key=lambda i: utts[i].duration)
    for start in range(0, len(order), batch_size):
        idx, feats = [], []
        for i in order[start : start + batch_size]:
            try:
                wave = load_wave(utts[i], model.sample_rate)
            except AudioError as err:
                if failures is None:
                    raise
                utt_id = utts[i].extra.get(SEGMENT_OF, utts[i].id)
                if not any(f.id == utt_id for f in failures):  # a long input fails once, not per segment
                    failures.append(Failure(id=utt_id, path=err.path, reason=err.reason))
                yield [i], []
                continue
            idx.append(i)
            feats.append(model.frontend(wave))
        if idx:
            yield idx, feats


def _decode_pieces(model: OnnxModel, utts: Sequence[Utterance], batch_size: int, failures: list[Failure] | None,
                   search: SearchOptions, lm: Any, workers: int) -> Iterator[list[Hypothesis]]:
    """One n-best list per utterance, in input order: batch by batch, or (a CTC beam search) over the emissions
    of CHUNK_UTTERANCES utterances at a time, decoded in parallel processes."""
    beam = ctc_beam(search, model.objective)
    step = CHUNK_UTTERANCES if beam else max(1, len(utts))
    for first in range(0, len(utts), step):
        chunk = utts[first : first + step]
        results: dict[int, list[Hypothesis]] = {}
        emissions: dict[int, np.ndarray] = {}
        for idx, feats in _features(model, chunk, batch_size, failures):
            if not feats:
                results[idx[0]] = [Hypothesis("")]
            elif beam:
                out, lens = model.forward(feats)
                emissions.update({i: np.ascontiguousarray(out[b, :n]) for b, (i, n) in
                                  enumerate(zip(idx, lens.tolist(), strict=True))})
            else:
                results.update(zip(idx, model.decode(feats, search, lm), strict=True))
        if emissions:
            order = sorted(emissions)
            with DecoderPool(model.tokenizer.vocab, search, _workers(workers, len(order))) as pool:
                results.update(zip(order, pool.decode([emissions[i] for i in order], model.out_shift), strict=True))
        for i in range(len(chunk)):
            yield results[i]


def _workers(workers: int, n_utterances: int) -> int:
    """asrkit.inference.decode_workers: `workers`, or (0) one per CPU core, at least 4 utterances each."""
    if workers <= 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(workers, n_utterances // 4))


def transcribe_nbest(model: str | Path, audio: Sequence[str | Path], *, device: str = "auto", batch_size: int = 16,
                     decode: SearchOptions | DecodeRequest | None = None, workers: int = 0,
                     segment_seconds: float = DEFAULT_SEGMENT_SECONDS, threads: int = 0,
                     ) -> tuple[list[tuple[str, list[Hypothesis]]], list[Failure]]:
    """asrkit.transcribe.transcribe_nbest for an exported model: [(path, n-best list)] in input order, and the
    files that failed."""
    onnx = load_model(model, threads, device)
    search = search_of(onnx, decode)
    utts, failures = files_to_utterances(audio)
    results = [(u.audio_filepath, h) for u, h in decode_nbest(onnx, utts, search=search, batch_size=batch_size,
                                                               failures=failures, workers=workers,
                                                               segment_seconds=segment_seconds)]
    failed = {f.path for f in failures}
    return [(p, h) for p, h in results if p not in failed], failures


def evaluate(model: str | Path, manifest: str | Path, *, report: str | Path | None = None, device: str = "auto",
             batch_size: int = 16, decode: SearchOptions | DecodeRequest | None = None, workers: int = 0,
             segment_seconds: float = DEFAULT_SEGMENT_SECONDS, threads: int = 0) -> EvalResult:
    """asrkit.evaluate.evaluate for an exported model: WER / CER of a manifest, and the JSON report."""
    onnx = load_model(model, threads, device)
    utts = read_manifest(manifest)
    search = onnx.resolve_search(search_of(onnx, decode))
    failures: list[Failure] = []
    pairs = [(u, h[0]) for u, h in decode_nbest(onnx, utts, search=search, batch_size=batch_size,
                                                 failures=failures, workers=workers, segment_seconds=segment_seconds)]
    failed = {f.id for f in failures}
    result = score([(u, h) for u, h in pairs if u.id not in failed])
    result.failures = failures
    result.decoding = describe(search, onnx.objective)
    if report is not None:
        settings = search.to_json() if ctc_beam(search, onnx.objective) else result.decoding
        write_report(report, result, model=str(onnx.path), manifest=str(manifest), decoding=settings,
                     runtime="onnxruntime")
    return result
