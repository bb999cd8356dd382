"""Tune the LM weight alpha and the word bonus beta of CTC beam search on a dev manifest.

The acoustic model runs once (batched); its emissions are kept in memory and decoded again for every
(alpha, beta), by a pool of processes that load the LM once. The best setting is written to a small JSON
file (by default `tune.json` beside the checkpoint) that `asrkit transcribe` and `asrkit evaluate` read: its
"decode" holds [decode] values (asrkit.search.SearchOptions), over the checkpoint's own.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from asrkit.checkpoint import load_checkpoint, pick_device, resolve_checkpoint
from asrkit.data.manifest import read_manifest
from asrkit.decoding import DecoderPool
from asrkit.errors import AsrkitError
from asrkit.inference import DECODE_PARAMS_NAME, compute_emissions, decode_workers
from asrkit.io import atomic_write
from asrkit.lm import resolve_lm
from asrkit.metrics import ErrorRate
from asrkit.progress import Progress
from asrkit.records import Failure
from asrkit.search import CTC_BEAM, SearchOptions, reads

METHODS = ("grid", "random")


@dataclass(frozen=True)
class Trial:
    alpha: float
    beta: float
    wer: float
    cer: float


@dataclass
class TuneResult:
    best: Trial
    greedy_wer: float
    greedy_cer: float
    trials: list[Trial]
    options: SearchOptions  # the settings written to `path`
    path: Path
    failures: list[Failure] = field(default_factory=list)  # dev utterances left out (unreadable audio)
    utterances: int = 0  # dev utterances tuned on

    def summary(self) -> str:
        text = (f"best alpha {self.best.alpha:g} beta {self.best.beta:g}: dev WER {self.best.wer:.2%} CER "
                f"{self.best.cer:.2%} (greedy WER {self.greedy_wer:.2%} CER {self.greedy_cer:.2%}; "
                f"{len(self.trials)} settings tried) -> {self.path}")
        return text + "".join(f"\nnote: {e}" for e in self.at_edge())

    def at_edge(self) -> list[str]:
        """The best value lies on the border of a searched range (so the optimum may lie beyond it)."""
        notes = []
        for name, value in (("alpha", self.best.alpha), ("beta", self.best.beta)):
            values = [getattr(t, name) for t in self.trials]
            low, high = min(values), max(values)
            if high > low and value in (low, high) and not (name == "alpha" and value == 0.0):
                notes.append(f"the best {name} {value:g} is at the edge of the range searched ({low:g},{high:g}); "
                             f"widen --{name}-range to look beyond it")
        return notes


def search_space(method: str, alpha_range: tuple[float, float], beta_range: tuple[float, float], *,
                 steps: int = 9, trials: int = 40, seed: int = 0) -> list[tuple[float, float]]:
    """(alpha, beta) settings to try: a `steps` x `steps` grid over the ranges, or `trials` random points."""
    (a0, a1), (b0, b1) = alpha_range, beta_range
    if not (0 <= a0 <= a1):
        raise AsrkitError(f"alpha range {a0},{a1}: need 0 <= min <= max (alpha 0 turns the LM off)")
    if not b0 <= b1:
        raise AsrkitError(f"beta range {b0},{b1}: need min <= max")
    if method == "grid":
        if steps < 1:
            raise AsrkitError(f"--steps {steps} must be at least 1")
        alphas = np.linspace(a0, a1, steps) if a1 > a0 else [a0]
        betas = np.linspace(b0, b1, steps) if b1 > b0 else [b0]
        return [(round(float(a), 4), round(float(b), 4)) for a, b in itertools.product(alphas, betas)]
    if method == "random":
        if trials < 1:
            raise AsrkitError(f"--trials {trials} must be at least 1")
        rng = random.Random(seed)
        return [(round(rng.uniform(a0, a1), 4), round(rng.uniform(b0, b1), 4)) for _ in range(trials)]
    raise AsrkitError(f"unknown search method {method!r}; valid: {', '.join(METHODS)}")


def greedy_text(log_probs: np.ndarray, vocab: Sequence[str]) -> str:
    best = log_probs.argmax(axis=1)
    keep = (best != 0) & np.concatenate(([True], best[1:] != best[:-1]))
    text = "".join(vocab[i].replace("\u2581", " ") for i in best[keep])
    return " ".join(text.split())


def error_rates(refs: Sequence[str], hyps: Sequence[str]) -> tuple[float, float]:
    words, chars = ErrorRate(), ErrorRate()
    for ref, hyp in zip(refs, hyps, strict=True):
        words.add(ref.split(), hyp.split())
        chars.add(list(ref), list(hyp))
    return words.rate, chars.rate


def tune_weights(log_probs: Sequence[np.ndarray], refs: Sequence[str], vocab: Sequence[str],
                 options: SearchOptions, settings: Sequence[tuple[float, float]], *, frame_shift: float = 0.02,
                 workers: int = 1, progress: bool = False) -> list[Trial]:
    """Decode the same emissions with every (alpha, beta); the trials in the order given."""
    trials = []
    with DecoderPool(vocab, options, workers) as pool, Progress("tune alpha/beta", len(settings),
                                                                enabled=progress, unit="settings/s") as bar:
        for alpha, beta in settings:
            hyps = [nbest[0].text for nbest in pool.decode(log_probs, frame_shift, alpha=alpha, beta=beta)]
            wer, cer = error_rates(refs, hyps)
            trials.append(Trial(alpha, beta, wer, cer))
            bar.advance()
    return trials


def tune(model: str | Path, manifest: str | Path, lm: str | Path, *, out: str | Path | None = None,
         method: str = "grid", alpha_range: tuple[float, float] = (0.0, 2.0),
         beta_range: tuple[float, float] = (-1.0, 3.0), steps: int = 9, trials: int = 40, seed: int = 0,
         base: SearchOptions | None = None, beam_size: int | None = None, backend: str | None = None,
         device: str = "auto", batch_size: int = 16, workers: int = 0, progress: bool = True) -> TuneResult:
    """Search alpha and beta on a dev manifest (the model runs once), write the best to `out` (default: tune.json
    beside the checkpoint) and return every trial with the greedy baseline. `base`: the other settings (default:
    the checkpoint's [decode]), `beam_size` (default: base's, else 32) and `backend` over it; the file holds them
    all: the [decode] values that transcribe and evaluate then use."""
    settings = search_space(method, alpha_range, beta_range, steps=steps, trials=trials, seed=seed)
    lm_path = resolve_lm(lm)
    checkpoint = resolve_checkpoint(model)
    out = Path(out) if out is not None else checkpoint.parent / DECODE_PARAMS_NAME
    loaded = load_checkpoint(checkpoint, pick_device(device))
    if not reads(loaded.model.objective, "alpha"):
        raise AsrkitError(f"{checkpoint}: tune searches the LM weights of CTC beam search, but a "
                          f"{loaded.config.model.family} model decodes with its own search; tune a CTC model "
                          "(deepspeech2), or set this one's [decode] settings (--set decode.KEY=VALUE)")
    base = base or loaded.config.decode.search_options()
    options = replace(base, lm=str(lm_path), nbest=1, beam_size=beam_size or base.beam_size or CTC_BEAM,
                      backend=backend or base.backend)
    utts = read_manifest(manifest)
    failures: list[Failure] = []
    rows = list(compute_emissions(loaded, utts, batch_size=batch_size, failures=failures))
    if not rows:
        raise AsrkitError(f"{manifest}: none of its {len(utts)} utterances could be read; nothing to tune on")
    log_probs = [lp for _, lp, _ in rows]
    refs = [u.text for u, _, _ in rows]
    vocab = loaded.tokenizer.vocab
    greedy_wer, greedy_cer = error_rates(refs, [greedy_text(lp, vocab) for lp in log_probs])
    done = tune_weights(log_probs, refs, vocab, options, settings, frame_shift=rows[0][2],
                        workers=decode_workers(workers, len(rows)), progress=progress)
    best = min(done, key=lambda t: (t.wer, t.cer, t.alpha, abs(t.beta)))
    chosen = replace(options, alpha=best.alpha, beta=best.beta)
    write_decode_params(out, chosen, best=best, greedy=(greedy_wer, greedy_cer), trials=done,
                        meta={"model": str(checkpoint), "manifest": str(manifest), "method": method,
                              "utterances": len(rows)})
    return TuneResult(best, greedy_wer, greedy_cer, done, chosen, out, failures, len(rows))


def write_decode_params(path: str | Path, options: SearchOptions, *, best: Trial | None = None,
                        greedy: tuple[float, float] | None = None, trials: Sequence[Trial] = (),
                        meta: dict[str, Any] | None = None) -> Path:
    """The file `transcribe --decode-params` reads: {"decode": settings, ...}; the LM path is stored relative
    to the file's folder when it lies below it, so an experiment folder can move."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = options.to_json()
    lm = Path(settings["lm"]).resolve() if settings["lm"] else None
    if lm is not None:
        try:
            settings["lm"] = str(lm.relative_to(path.parent.resolve()))
        except ValueError:
            settings["lm"] = str(lm)
    body: dict[str, Any] = {"decode": settings}
    if best is not None:
        body["dev"] = {"wer": best.wer, "cer": best.cer}
        if greedy is not None:
            body["dev"].update(greedy_wer=greedy[0], greedy_cer=greedy[1])
    body.update(meta or {})
    if trials:
        body["trials"] = [asdict(t) for t in trials]
    return atomic_write(path, json.dumps(body, indent=1) + "\n")

