"""How to search: one frozen dataclass holding every search setting of every model family, the `[decode]`
config section (saved in each checkpoint), written by `asrkit tune` and overridden by the transcribe / evaluate
options (precedence: the checkpoint's [decode] < tune.json or --decode-params < the command line).

Each objective reads some of the settings (`SETTINGS`); one that is set but not read by the model is an error
that says which models read it (`resolve`). The models are stateless: `ASRModel.decode(feats, feat_lens,
search, lm)`.

    CTC          greedy (best path), or beam search over the emissions with a KenLM word n-gram (asrkit.decoding)
    attention    greedy or beam search of the attention decoder, joint CTC scoring, LM shallow fusion (a unit LM
                 over the model's tokens, or a word n-gram)
    transducer   greedy or time-synchronous beam search, word-LM shallow fusion
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from asrkit.errors import AsrkitError

BACKENDS = ("flashlight", "asrkit", "pyctcdecode")
CTC_BEAM = 32  # CTC beam search's beam when beam_size is 0 (measured in bench/ctc_decode.py)
DEFAULT_BEAMS = {"ctc": 1, "attention": 4, "transducer": 1}  # beam_size 0: this (CTC: CTC_BEAM with an LM)
FUSION_BEAM = 8  # the transducer's beam when beam_size is 0 and a fusion LM is set
LM_UNITS = ("", "tokens", "words")
CTC_LM_KEYS = ("lm", "alpha", "beta", "beam_prune_logp", "token_min_logp", "token_top_k", "lm_lookahead",
               "prune_history", "hotwords", "hotword_weight", "unk_score_offset", "backend")
SETTINGS: dict[str, tuple[str, ...]] = {  # the settings each objective's search reads
    "ctc": ("beam_size", "nbest", *CTC_LM_KEYS),
    "attention": ("beam_size", "nbest", "lm", "lm_weight", "lm_units", "lm_bonus", "length_penalty",
                  "coverage_penalty", "max_len_ratio", "ctc_weight"),
    "transducer": ("beam_size", "nbest", "max_symbols", "lm", "lm_weight", "lm_units", "lm_bonus"),
}


@dataclass(frozen=True)
class SearchOptions:
    """Every search setting. [a]: CTC beam search's asrkit (and pyctcdecode) backend only; flashlight falls back to
    asrkit for hotwords and n-best lists."""

    beam_size: int = 0  # hypotheses kept per step; 1: greedy; 0: the model's default (CTC: greedy, 32 with an LM)
    nbest: int = 1  # hypotheses returned per utterance, best first (at most beam_size)
    # CTC beam search with a word n-gram: argmax log p(y|x) + alpha ln p_LM(y) + beta words(y)
    lm: str = ""  # KenLM model (CTC: a word n-gram; attention: a unit LM over the model's tokens, for shallow fusion)
    alpha: float = 0.5  # LM weight (on the natural log of the LM probability)
    beta: float = 1.0  # word insertion bonus (per word)
    beam_prune_logp: float = -8.0  # drop beams this far (natural log) below the best one
    token_min_logp: float = -5.0  # tokens below this in a frame are not expanded (flashlight: blank runs cut only)
    token_top_k: int = 0  # expand at most this many of a frame's most likely tokens (0: no limit)
    lm_lookahead: bool = True  # score a word being spelt by its likeliest completion's unigram (flashlight: always)
    prune_history: bool = False  # keep one of beams whose last (order - 1) words agree (off when nbest > 1) [a]
    hotwords: tuple[str, ...] = ()  # words or phrases to boost [a]
    hotword_weight: float = 10.0  # score added per hotword match [a]
    unk_score_offset: float = -10.0  # log10 score added for a word the LM does not know (flashlight: none spelt) [a]
    backend: str = "flashlight"  # flashlight (C++, falls back to asrkit where it cannot) | asrkit | pyctcdecode
    # the attention decoder
    length_penalty: float = 0.0  # GNMT alpha: hypotheses ranked by log p / ((5 + length) / 6)^alpha
    coverage_penalty: float = 0.0  # GNMT beta: + beta * sum over frames of log min(attention received, 1)
    max_len_ratio: float = 2.0  # at most this many output tokens per encoder frame
    ctc_weight: float = 0.0  # joint decoding: (1 - w) attention + w CTC prefix score (needs the model's CTC head)
    lm_weight: float = 0.0  # shallow fusion: weight of the `lm` log-probability (0 = no fusion)
    lm_units: str = ""  # shallow fusion: the LM's words are "tokens" (a unit LM) or "words" ("": attention tokens,
    # transducer words); a word LM is scored as words complete (asrkit.models.fusion)
    lm_bonus: float = 0.0  # shallow fusion with a word LM: score added per word
    # the transducer
    max_symbols: int = 8  # most tokens per encoder frame; >= the longest burst the model emits (chars: 5-8)

    def __post_init__(self) -> None:
        if self.beam_size < 0:
            raise AsrkitError(f"beam size {self.beam_size} must be at least 1, or 0 for the model's default "
                              "(try --beam-size 32)")
        if self.nbest < 1:
            raise AsrkitError(f"nbest {self.nbest} must be at least 1")
        if self.beam_size and self.nbest > self.beam_size:
            raise AsrkitError(f"nbest {self.nbest} is larger than the beam size {self.beam_size}; "
                              f"raise --beam-size to at least {self.nbest}")
        if self.beam_prune_logp >= 0 or self.token_min_logp >= 0:
            raise AsrkitError(f"beam_prune_logp {self.beam_prune_logp} and token_min_logp {self.token_min_logp} "
                              "are log-probabilities and must be negative")
        for name in ("alpha", "beta", "hotword_weight", "unk_score_offset", "length_penalty", "coverage_penalty",
                     "lm_weight", "max_len_ratio", "ctc_weight"):
            if not math.isfinite(getattr(self, name)):
                raise AsrkitError(f"{name} {getattr(self, name)} must be a finite number")
        if self.backend not in BACKENDS:
            raise AsrkitError(f"unknown decoding backend {self.backend!r}; valid: {', '.join(BACKENDS)}")
        if self.alpha < 0:
            raise AsrkitError(f"alpha {self.alpha} must be >= 0 (0 turns the LM off)")
        if self.token_top_k < 0:
            raise AsrkitError(f"token_top_k {self.token_top_k} must be >= 0 (0: no limit)")
        if self.lm_weight < 0:
            raise AsrkitError(f"lm_weight {self.lm_weight} must be >= 0 (0 turns shallow fusion off)")
        if self.max_len_ratio <= 0:
            raise AsrkitError(f"max_len_ratio {self.max_len_ratio} must be positive")
        if not 0.0 <= self.ctc_weight < 1.0:
            raise AsrkitError(f"ctc_weight {self.ctc_weight} must be in [0, 1) (0: attention scores alone)")
        if self.lm_units not in LM_UNITS:
            raise AsrkitError(f"unknown lm_units {self.lm_units!r}; valid: '', tokens, words")
        if not math.isfinite(self.lm_bonus):
            raise AsrkitError(f"lm_bonus {self.lm_bonus} must be a finite number")
        if self.max_symbols < 1:
            raise AsrkitError(f"max_symbols {self.max_symbols} must be at least 1")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["hotwords"] = list(self.hotwords)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> SearchOptions:
        valid = {f.name for f in fields(SearchOptions)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise AsrkitError(f"{where}: unknown decode setting(s) {', '.join(unknown)}; "
                              f"valid: {', '.join(sorted(valid))}")
        kwargs = dict(data)
        if "hotwords" in kwargs:
            kwargs["hotwords"] = tuple(str(h) for h in kwargs["hotwords"])
        try:
            return SearchOptions(**kwargs)
        except (TypeError, AsrkitError) as err:
            raise AsrkitError(f"{where}: {err}") from None

    def search_options(self) -> SearchOptions:
        """These settings as a plain SearchOptions (the [decode] section holds batch_size besides)."""
        return SearchOptions(**{f.name: getattr(self, f.name) for f in fields(SearchOptions)})


def changed(search: SearchOptions) -> list[str]:
    """The settings that differ from their defaults."""
    defaults = SearchOptions()
    return [f.name for f in fields(SearchOptions) if getattr(search, f.name) != getattr(defaults, f.name)]


def reads(objective: str, setting: str) -> bool:
    """Does the search of a model with this objective read `setting`?"""
    return setting in SETTINGS[objective]


def resolve(search: SearchOptions, objective: str, ctc_head: bool = False) -> SearchOptions:
    """The search a model with `objective` (and a CTC head or not) runs for `search`: beam_size 0 made the model's
    default, and a setting the model does not read (or cannot use) refused with an error that says so."""
    ignored = [name for name in changed(search) if not reads(objective, name)]
    if ignored:
        readers = sorted({o for name in ignored for o in SETTINGS if reads(o, name)})
        raise AsrkitError(f"decode setting(s) {', '.join(ignored)} set, but a model with the {objective} objective "
                          f"does not read them (they apply to {' and '.join(readers) or 'no'} models); "
                          "drop them or decode another model")
    if objective == "attention" and search.ctc_weight and not ctc_head:
        raise AsrkitError(f"ctc_weight {search.ctc_weight:g} (joint CTC decoding) needs the CTC head that "
                          "las.ctc_weight > 0 trains; this model has none: set decode.ctc_weight = 0")
    if objective == "transducer" and search.lm_units == "tokens":
        raise AsrkitError("a transducer fuses a word LM (decode.lm_units = \"words\"), not a unit LM")
    if objective in ("attention", "transducer"):
        if bool(search.lm) != bool(search.lm_weight):
            raise AsrkitError("shallow fusion needs both an LM (--lm / decode.lm) and its weight "
                              f"(decode.lm_weight, now {search.lm_weight:g}); set both, or neither")
    beam = search.beam_size
    if not beam:
        beam = DEFAULT_BEAMS[objective]
        if objective == "ctc" and (search.lm or search.hotwords or search.nbest > 1):
            beam = CTC_BEAM
        if objective == "transducer" and search.lm:
            beam = FUSION_BEAM
        beam = max(beam, search.nbest)
    return replace(search, beam_size=beam)


def is_greedy(search: SearchOptions) -> bool:
    """A resolved search that keeps one hypothesis and mixes in no other score (LM, CTC, hotwords)."""
    return search.beam_size == 1 and not (search.lm or search.hotwords or search.ctc_weight)


def ctc_beam(search: SearchOptions, objective: str) -> bool:
    """Is this resolved search a CTC beam search over emissions (asrkit.decoding), which inference batches over
    processes?"""
    return objective == "ctc" and not is_greedy(search)


def describe(search: SearchOptions, objective: str) -> str:
    """A resolved search in a few words, for reports: "greedy", "beam 32, LM alpha 0.5 beta 1", "beam 4 + CTC 0.3"."""
    if is_greedy(search):
        return "greedy"
    text = f"beam {search.beam_size}"
    if objective == "ctc":
        return text + (f", LM alpha {search.alpha:g} beta {search.beta:g}" if search.lm else "")
    return (text + (f" + CTC {search.ctc_weight:g}" if search.ctc_weight else "")
            + (f" + LM {search.lm_weight:g}" if search.lm else ""))


def read_decode_params(path: str | Path) -> SearchOptions:
    """The `decode` settings of a JSON file written by `asrkit tune` (a relative LM path is taken from the
    file's folder). A file written before [decode] existed holds only the CTC settings; it reads the same."""
    return SearchOptions.from_json(decode_params(path), str(path))


def decode_params(path: str | Path) -> dict[str, Any]:
    """The settings a decode-params file holds, as they are written (only those: the others come from elsewhere)."""
    path = Path(path)
    if not path.is_file():
        raise AsrkitError(f"decode parameters {path} not found; write them with `asrkit tune MODEL DEV --lm LM`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AsrkitError(f"{path}: not a JSON file ({err}); write it with `asrkit tune`") from None
    if not isinstance(data, dict) or not isinstance(data.get("decode"), dict):
        raise AsrkitError(f"{path}: no \"decode\" settings; write the file with `asrkit tune`")
    settings = dict(data["decode"])
    lm = settings.get("lm")
    if isinstance(lm, str) and lm and not Path(lm).is_absolute():
        settings["lm"] = str(path.parent / lm)
    checked = SearchOptions.from_json(settings, str(path))  # checked alone, so that an error names this file
    return {name: getattr(checked, name) for name in settings}
