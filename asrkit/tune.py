"""Tune the search weights of any model on a dev manifest, and write the best to the decode-params file.

CTC models: the LM weight alpha and the word bonus beta of CTC beam search with a KenLM word n-gram. The acoustic
model runs once (batched); its emissions are kept in memory and decoded again for every (alpha, beta), by a pool of
processes that load the LM once.

Transducer and attention models: the weight (lm_weight) and per-word bonus (lm_bonus) of a word n-gram fused into
their beam search (lm_units "words", asrkit.models.fusion), and for an attention model with a CTC head the weight of
joint CTC scoring (ctc_weight, tunable without an LM too). The dev manifest is decoded by the model for every
setting (asrkit.inference.decode_utterances; the LM is loaded once).

The best setting is written to a small JSON file (by default `tune.json` beside the checkpoint) that `asrkit
transcribe` and `asrkit evaluate` read: its "decode" holds [decode] values (asrkit.search.SearchOptions), over the
checkpoint's own.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from asrkit.checkpoint import Loaded, load_checkpoint, pick_device, resolve_checkpoint
from asrkit.data.manifest import read_manifest
from asrkit.decoding import DecoderPool
from asrkit.errors import AsrkitError
from asrkit.inference import DECODE_PARAMS_NAME, compute_emissions, decode_utterances, decode_workers, prepare_search
from asrkit.io import atomic_write
from asrkit.lm import load_fusion_lm, resolve_lm
from asrkit.metrics import ErrorRate
from asrkit.progress import Progress
from asrkit.records import Failure, Utterance
from asrkit.search import CTC_BEAM, FUSION_BEAM, SearchOptions, reads

METHODS = ("grid", "random")
# The option that sets the range searched of each tuned setting (named in the errors and the edge notes).
RANGE_OPTIONS = {"alpha": "--alpha-range", "beta": "--beta-range", "lm_weight": "--weight-range",
                 "lm_bonus": "--bonus-range", "ctc_weight": "--ctc-weight-range"}
OFF_AT_ZERO = ("alpha", "lm_weight", "ctc_weight")  # 0 turns the LM / the CTC scores off: not "an edge"
DEFAULT_RANGES = {"lm_weight": (0.0, 1.5), "lm_bonus": (0.0, 3.0), "ctc_weight": (0.0, 0.6)}
CTC_STEPS = 9  # grid points per axis: CTC re-decodes cached emissions, cheap
FUSION_STEPS = 4  # ... the other models decode the dev set again for each point: fewer


@dataclass(frozen=True)
class Trial:
    alpha: float
    beta: float
    wer: float
    cer: float


@dataclass(frozen=True)
class FusionTrial:
    """A setting of a transducer or attention model's search (lm_bonus is 0 where lm_weight is: no LM) and its
    dev error rates."""

    lm_weight: float
    lm_bonus: float
    ctc_weight: float
    wer: float
    cer: float


@dataclass
class TuneResult:
    best: Trial | FusionTrial
    greedy_wer: float
    greedy_cer: float
    trials: Sequence[Trial | FusionTrial]
    options: SearchOptions  # the settings written to `path`
    path: Path
    failures: list[Failure] = field(default_factory=list)  # dev utterances left out (unreadable audio)
    utterances: int = 0  # dev utterances tuned on
    names: tuple[str, ...] = ("alpha", "beta")  # the settings searched

    def summary(self) -> str:
        chosen = " ".join(f"{name} {getattr(self.best, name):g}" for name in self.names)
        text = (f"best {chosen}: dev WER {self.best.wer:.2%} CER "
                f"{self.best.cer:.2%} (greedy WER {self.greedy_wer:.2%} CER {self.greedy_cer:.2%}; "
                f"{len(self.trials)} settings tried) -> {self.path}")
        return text + "".join(f"\nnote: {e}" for e in self.at_edge())

    def at_edge(self) -> list[str]:
        """The best value lies on the border of a searched range (so the optimum may lie beyond it)."""
        notes = []
        for name in self.names:
            value = getattr(self.best, name)
            trials = self.trials
            if name == "lm_bonus":  # the bonus of a word LM: only where the LM was on
                if not getattr(self.best, "lm_weight", 0.0):
                    continue
                trials = [t for t in trials if getattr(t, "lm_weight", 0.0)]
            values = [getattr(t, name) for t in trials]
            low, high = min(values), max(values)
            if high > low and value in (low, high) and not (name in OFF_AT_ZERO and value == 0.0):
                notes.append(f"the best {name} {value:g} is at the edge of the range searched ({low:g},{high:g}); "
                             f"widen {RANGE_OPTIONS[name]} to look beyond it")
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


def check_range(name: str, value: tuple[float, float]) -> tuple[float, float]:
    """A searched range of lm_weight, lm_bonus or ctc_weight, as MIN,MAX within the setting's valid values."""
    low, high = value
    option = RANGE_OPTIONS[name]
    if not (math.isfinite(low) and math.isfinite(high)):
        raise AsrkitError(f"{option} {low:g},{high:g}: MIN and MAX must be finite numbers")
    if name == "lm_weight" and not 0 <= low <= high:
        raise AsrkitError(f"{option} {low:g},{high:g}: need 0 <= MIN <= MAX (lm_weight 0 turns the LM off)")
    if name == "ctc_weight" and not 0 <= low <= high < 1:
        raise AsrkitError(f"{option} {low:g},{high:g}: need 0 <= MIN <= MAX < 1 (ctc_weight 0: attention scores "
                          "alone; 1 would drop them)")
    if not low <= high:
        raise AsrkitError(f"{option} {low:g},{high:g}: need MIN <= MAX")
    return low, high


def fusion_space(method: str, ranges: dict[str, tuple[float, float]], *, steps: int = FUSION_STEPS,
                 trials: int = 40, seed: int = 0) -> list[dict[str, float]]:
    """Settings of lm_weight / lm_bonus / ctc_weight (the keys of `ranges`) to try: a grid of `steps` points per
    axis, or `trials` random points; in order, without repeats (lm_bonus is 0 where lm_weight is: no LM, no bonus)."""
    names = list(ranges)
    bounds = [check_range(name, ranges[name]) for name in names]
    if method == "grid":
        if steps < 1:
            raise AsrkitError(f"--steps {steps} must be at least 1")
        axes = [np.linspace(low, high, steps) if high > low else [low] for low, high in bounds]
        points = [[round(float(v), 4) for v in values] for values in itertools.product(*axes)]
    elif method == "random":
        if trials < 1:
            raise AsrkitError(f"--trials {trials} must be at least 1")
        rng = random.Random(seed)
        points = [[round(rng.uniform(low, high), 4) for low, high in bounds] for _ in range(trials)]
    else:
        raise AsrkitError(f"unknown search method {method!r}; valid: {', '.join(METHODS)}")
    out: list[dict[str, float]] = []
    for values in points:
        point = dict(zip(names, values, strict=True))
        if "lm_bonus" in point and not point.get("lm_weight"):
            point["lm_bonus"] = 0.0
        if point not in out:
            out.append(point)
    return out


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


Range = tuple[float, float]


def tune(model: str | Path, manifest: str | Path, lm: str | Path | None = None, *, out: str | Path | None = None,
         method: str = "grid", alpha_range: Range | None = None, beta_range: Range | None = None,
         weight_range: Range | None = None, bonus_range: Range | None = None, ctc_weight_range: Range | None = None,
         steps: int | None = None, trials: int = 40, seed: int = 0, base: SearchOptions | None = None,
         beam_size: int | None = None, backend: str | None = None, device: str = "auto", batch_size: int = 16,
         workers: int = 0, progress: bool = True) -> TuneResult:
    """Search the weights of a model's search on a dev manifest, write the best to `out` (default: tune.json beside
    the checkpoint) and return every trial with the greedy baseline. `base`: the other settings (default: the
    checkpoint's [decode]); the file holds them all: the [decode] values that transcribe and evaluate then use.

    CTC model (needs `lm`): alpha over `alpha_range` (default 0,2) and beta over `beta_range` (-1,3) on cached
    emissions; `beam_size` (default: base's, else 32) and `backend` over base. Transducer (needs `lm`) and
    attention model: lm_weight over `weight_range` (0,1.5) and lm_bonus over `bonus_range` (0,3) of the word LM
    `lm`, and with a CTC head ctc_weight over `ctc_weight_range` (0,0.6); `beam_size` default 8. `steps`: grid
    points per axis (default 9 for CTC, 4 for the others)."""
    fusion_given = {"weight_range": weight_range, "bonus_range": bonus_range, "ctc_weight_range": ctc_weight_range}
    ctc_given = {"alpha_range": alpha_range, "beta_range": beta_range, "backend": backend}
    checkpoint = resolve_checkpoint(model)
    loaded = load_checkpoint(checkpoint, pick_device(device))
    family, objective = loaded.config.model.family, loaded.model.objective
    if reads(objective, "alpha"):
        wrong = [_option_name(k) for k, v in fusion_given.items() if v is not None]
        if wrong:
            raise AsrkitError(f"{checkpoint}: {', '.join(wrong)} tune(s) the search of a transducer or attention "
                              f"model; a {family} model (CTC beam search) tunes --alpha-range and --beta-range")
        if lm is None:
            raise AsrkitError(f"{checkpoint}: tune searches the LM weight alpha and word bonus beta of CTC beam "
                              "search: pass --lm LM (a KenLM word n-gram, `asrkit lm build`)")
        return _tune_ctc(loaded, checkpoint, manifest, lm, out=out, method=method,
                         alpha_range=alpha_range or (0.0, 2.0), beta_range=beta_range or (-1.0, 3.0),
                         steps=CTC_STEPS if steps is None else steps, trials=trials, seed=seed, base=base,
                         beam_size=beam_size, backend=backend, batch_size=batch_size, workers=workers,
                         progress=progress)
    wrong = [_option_name(k) for k, v in ctc_given.items() if v is not None]
    if wrong:
        raise AsrkitError(f"{checkpoint}: {', '.join(wrong)} tune(s) CTC beam search; a {family} model tunes "
                          "--weight-range and --bonus-range (with --lm), and --ctc-weight-range (with a CTC head)")
    return _tune_fusion(loaded, checkpoint, manifest, lm, out=out, method=method, weight_range=weight_range,
                        bonus_range=bonus_range, ctc_weight_range=ctc_weight_range,
                        steps=FUSION_STEPS if steps is None else steps, trials=trials, seed=seed, base=base,
                        beam_size=beam_size, batch_size=batch_size, workers=workers, progress=progress)


def _option_name(arg: str) -> str:
    return "--" + arg.replace("_", "-")


def _tune_ctc(loaded: Loaded, checkpoint: Path, manifest: str | Path, lm: str | Path, *, out: str | Path | None,
              method: str, alpha_range: Range, beta_range: Range, steps: int, trials: int, seed: int,
              base: SearchOptions | None, beam_size: int | None, backend: str | None, batch_size: int,
              workers: int, progress: bool) -> TuneResult:
    """alpha and beta of CTC beam search, on emissions computed once."""
    settings = search_space(method, alpha_range, beta_range, steps=steps, trials=trials, seed=seed)
    lm_path = resolve_lm(lm)
    out = Path(out) if out is not None else checkpoint.parent / DECODE_PARAMS_NAME
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


def _has_ctc_head(loaded: Loaded) -> bool:
    """Can this model score with a CTC head (joint CTC / attention decoding)? As its search says."""
    if not reads(loaded.model.objective, "ctc_weight"):
        return False
    try:
        loaded.model.resolve_search(SearchOptions(ctc_weight=0.5))
    except AsrkitError:
        return False
    return True


def _tune_fusion(loaded: Loaded, checkpoint: Path, manifest: str | Path, lm: str | Path | None, *,
                 out: str | Path | None, method: str, weight_range: Range | None, bonus_range: Range | None,
                 ctc_weight_range: Range | None, steps: int, trials: int, seed: int, base: SearchOptions | None,
                 beam_size: int | None, batch_size: int, workers: int, progress: bool) -> TuneResult:
    """lm_weight / lm_bonus of a fused word LM and ctc_weight of a transducer or attention model: the dev set is
    decoded by the model for every setting."""
    family = loaded.config.model.family
    ctc_head = _has_ctc_head(loaded)
    if lm is None and (weight_range is not None or bonus_range is not None):
        raise AsrkitError("--weight-range and --bonus-range weight a word LM fused into the search: pass --lm LM")
    if ctc_weight_range is not None and not ctc_head:
        raise AsrkitError(f"{checkpoint}: --ctc-weight-range tunes joint CTC / attention decoding, but this {family} "
                          "model has no CTC head (an attention model trained with las.ctc_weight > 0 has one)")
    if lm is None and not ctc_head:
        raise AsrkitError(f"{checkpoint}: nothing to tune: pass --lm LM (a KenLM word n-gram) to tune the weight "
                          f"and word bonus of its fusion into the {family} model's beam search")
    ranges: dict[str, Range] = {}
    if lm is not None:
        ranges["lm_weight"] = weight_range or DEFAULT_RANGES["lm_weight"]
        ranges["lm_bonus"] = bonus_range or DEFAULT_RANGES["lm_bonus"]
    if ctc_head:
        ranges["ctc_weight"] = ctc_weight_range or DEFAULT_RANGES["ctc_weight"]
    settings = fusion_space(method, ranges, steps=steps, trials=trials, seed=seed)
    lm_path = resolve_lm(lm) if lm is not None else None
    out = Path(out) if out is not None else checkpoint.parent / DECODE_PARAMS_NAME
    base = base or loaded.config.decode.search_options()
    options = replace(base, nbest=1, beam_size=beam_size or FUSION_BEAM)
    if lm_path is not None:
        options = replace(options, lm=str(lm_path), lm_units="words")
    searches = [_fused(options, point, lm_path) for point in settings]
    for search in searches:  # every setting checked against the model before any decoding
        try:
            loaded.model.resolve_search(search)
        except AsrkitError as err:
            raise AsrkitError(f"{checkpoint}: {err}") from None
    # the LM, loaded once: the word LM tuned, or the one of the [decode] settings (its weight kept)
    if lm_path is not None:
        word_lm = load_fusion_lm(str(lm_path), "words", loaded.tokenizer.vocab)
    else:
        word_lm = prepare_search(loaded, options)[1]

    utts = read_manifest(manifest)
    failures: list[Failure] = []
    greedy = replace(options, beam_size=1, lm="", lm_weight=0.0, lm_bonus=0.0, lm_units="", ctc_weight=0.0)
    baseline = list(decode_utterances(loaded, utts, search=greedy, batch_size=batch_size, failures=failures,
                                      workers=workers))
    failed = {f.id for f in failures}
    readable: list[Utterance] = [u for u, _ in baseline if u.id not in failed]
    if not readable:
        raise AsrkitError(f"{manifest}: none of its {len(utts)} utterances could be read; nothing to tune on")
    refs = [u.text for u in readable]
    greedy_wer, greedy_cer = error_rates(refs, [h.text for u, h in baseline if u.id not in failed])
    done: list[FusionTrial] = []
    with Progress(f"tune {'/'.join(ranges)}", len(settings), enabled=progress, unit="settings/s") as bar:
        for search in searches:
            pairs = decode_utterances(loaded, readable, search=search, lm=word_lm if search.lm else None,
                                      batch_size=batch_size, failures=[], workers=workers)
            wer, cer = error_rates(refs, [h.text for _, h in pairs])
            done.append(FusionTrial(search.lm_weight, search.lm_bonus, search.ctc_weight, wer, cer))
            bar.advance()
    best = min(done, key=lambda t: (t.wer, t.cer, t.lm_weight, abs(t.lm_bonus), t.ctc_weight))
    chosen = searches[done.index(best)]
    names = tuple(ranges)
    write_decode_params(out, chosen, best=best, greedy=(greedy_wer, greedy_cer), trials=done, names=names,
                        meta={"model": str(checkpoint), "manifest": str(manifest), "method": method,
                              "utterances": len(readable)})
    return TuneResult(best, greedy_wer, greedy_cer, done, chosen, out, failures, len(readable), names)


def _fused(options: SearchOptions, point: dict[str, float], lm_path: Path | None) -> SearchOptions:
    """The search of one tuned setting: `options` with its ctc_weight, and its word-LM weight and bonus (the LM
    dropped where the weight is 0: no LM, no bonus)."""
    search = replace(options, ctc_weight=point["ctc_weight"]) if "ctc_weight" in point else options
    if lm_path is None:
        return search
    weight = point["lm_weight"]
    if not weight:
        return replace(search, lm="", lm_units="", lm_weight=0.0, lm_bonus=0.0)
    return replace(search, lm=str(lm_path), lm_units="words", lm_weight=weight, lm_bonus=point["lm_bonus"])


def write_decode_params(path: str | Path, options: SearchOptions, *, best: Trial | FusionTrial | None = None,
                        greedy: tuple[float, float] | None = None, trials: Sequence[Trial | FusionTrial] = (),
                        meta: dict[str, Any] | None = None, names: Sequence[str] | None = None) -> Path:
    """The file `transcribe --decode-params` reads: {"decode": settings, ...}; the LM path is stored relative
    to the file's folder when it lies below it, so an experiment folder can move. `names`: the settings each
    trial lists (default: all its fields), besides its WER and CER."""
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
        keep = None if names is None else {*names, "wer", "cer"}
        body["trials"] = [{k: v for k, v in asdict(t).items() if keep is None or k in keep} for t in trials]
    return atomic_write(path, json.dumps(body, indent=1) + "\n")
