#!/usr/bin/env python3
"""Perplexity and OOV rate of a KenLM model (from `asrkit lm build`) on a manifest's transcripts.

    lm_perplexity.py LM.bin MANIFEST.jsonl

Perplexity two ways: over every word and </s> with out-of-vocabulary words scored as KenLM's <unk> (what the
decoder sees), and over in-vocabulary words only (SRILM's convention). OOV: words missing from the LM's word list
(LM.unigrams.txt beside it), as tokens and as distinct words.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import kenlm


def main(lm_path: str, manifest: str) -> None:
    model = kenlm.Model(lm_path)
    vocab = set(Path(lm_path).with_suffix(".unigrams.txt").read_text(encoding="utf-8").split())
    total = total_known = 0.0
    tokens = known = words = oov = 0
    types: set[str] = set()
    oov_types: set[str] = set()
    for line in open(manifest, encoding="utf-8"):
        text = json.loads(line)["text"].split()
        words += len(text)
        for logprob, _, is_oov in model.full_scores(" ".join(text)):
            total, tokens = total + logprob, tokens + 1
            if not is_oov:
                total_known, known = total_known + logprob, known + 1
        types.update(text)
        missing = [w for w in text if w not in vocab]
        oov += len(missing)
        oov_types.update(missing)
    print(f"{lm_path} on {manifest}: perplexity {10 ** (-total / tokens):.1f} (OOVs as <unk>), "
          f"{10 ** (-total_known / known):.1f} (OOVs left out); OOV {oov}/{words} words "
          f"({100 * oov / words:.2f}%), {len(oov_types)}/{len(types)} distinct "
          f"({100 * len(oov_types) / len(types):.2f}%)"
          f"; LM vocabulary {len(vocab)}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
