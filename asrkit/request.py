"""Which search a command runs: the model's [decode] < a decode-params file (`asrkit tune`'s tune.json beside the
model) < the command line's options. Without torch, so that a PyTorch checkpoint (asrkit.inference) and an exported
ONNX model (asrkit.onnx) pick their search by the same rules."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from asrkit.errors import AsrkitError
from asrkit.progress import say
from asrkit.search import SearchOptions, decode_params

DECODE_PARAMS_NAME = "tune.json"  # beside the model: `asrkit tune` writes it, transcribe / evaluate read it


@dataclass(frozen=True)
class DecodeRequest:
    """The search a command asks for on top of the model's [decode]: a decode-params file (default: tune.json
    beside the model, unless an LM is given), greedy, and the settings given as options."""

    params: str | Path | None = None  # --decode-params
    greedy: bool = False  # --greedy: beam 1, no LM, no CTC scoring, no hotwords, whatever else says
    settings: dict[str, Any] = field(default_factory=dict)  # SearchOptions fields given as options (--lm, --set ...)


def choose(base: SearchOptions, folder: Path, request: DecodeRequest) -> SearchOptions:
    """The search of `request` for a model whose [decode] is `base` and which lies in `folder` (where tune.json
    is looked for). Checked against the model when it decodes."""
    given = dict(request.settings)
    if request.greedy:
        if given or request.params is not None:
            raise AsrkitError("--greedy cannot be combined with --lm, --beam-size, --alpha, --beta, --hotword, "
                              "--nbest, --set or --decode-params; drop one of them")
        return replace(base, beam_size=1, nbest=1, lm="", hotwords=(), ctc_weight=0.0, lm_weight=0.0)
    params = request.params
    auto = folder / DECODE_PARAMS_NAME
    if params is None and "lm" not in given and auto.is_file():
        params = auto
        say(f"decoding with the LM settings of {auto} (tuned by `asrkit tune`; --greedy to not use them)")
    settings = {**(decode_params(params) if params is not None else {}), **given}
    if {"alpha", "beta"} & set(given) and not settings.get("lm", base.lm):
        raise AsrkitError("--alpha and --beta weight a language model: pass --lm LM too (or --decode-params)")
    try:
        return replace(base, **settings)
    except TypeError as err:
        raise AsrkitError(str(err)) from None
