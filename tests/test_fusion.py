"""Word-LM shallow fusion (asrkit.models.fusion) in the transducer's beam search and the attention decoder's:
a toy ARPA ("hat sat" far likelier than "cat sat") flips each search's answer at weight > 0 only, on hand-built
model outputs where "cat sat" wins acoustically by a little."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import needs_kenlm

from asrkit.models.fusion import WordFusion, WordLMScorer
from asrkit.models.las_search import EOS, beam_search
from asrkit.models.transducer_search import BeamSearch

pytestmark = needs_kenlm

VOCAB = ["", " ", "a", "c", "h", "s", "t"]  # id 0: blank / EOS
ID = {c: i for i, c in enumerate(VOCAB)}

# log10 probabilities: "hat sat" is far likelier than "cat sat"
ARPA = """
\\data\\
ngram 1=6
ngram 2=6

\\1-grams:
-99\t<s>\t-0.3
-1.0\t</s>
-2.0\t<unk>
-0.7\tcat\t-0.3
-0.7\that\t-0.3
-0.7\tsat\t-0.3

\\2-grams:
-1.0\t<s> cat
-0.1\t<s> hat
-2.0\tcat sat
-0.1\that sat
-0.1\tsat </s>
-1.0\tcat </s>

\\end\\
"""


@pytest.fixture()
def lm(tmp_path: Path):  # noqa: ANN201
    from asrkit.lm import WordLM

    path = tmp_path / "hat.arpa"
    path.write_text(ARPA.lstrip(), encoding="utf-8")
    return WordLM(path, VOCAB)


def log_row(probs: dict[str, float]) -> torch.Tensor:
    """Log-probs over VOCAB from {token: p}; the rest of the mass spread over the others."""
    rest = (1.0 - sum(probs.values())) / (len(VOCAB) - len(probs))
    return torch.tensor([probs.get(c, rest) for c in VOCAB]).log()


# ---------------------------------------------------------------------------------------------- transducer

# Frame t offers row t to a hypothesis of exactly t tokens (one token a frame); after it, only the blank.
FRAMES = [{"c": 0.52, "h": 0.46}, {"a": 0.97}, {"t": 0.97}, {" ": 0.97}, {"s": 0.97}, {"a": 0.97}, {"t": 0.97},
          {"": 0.97}]


class CountingPredictor:
    """Its output is the number of tokens emitted so far (the start symbol counts none)."""

    def step(self, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None):  # noqa: ANN201
        n = tokens.shape[0]
        count = torch.zeros(1, n, 2) if state is None else state[0].clone()
        if state is not None:
            count[0, :, 0] += 1
        return count[0], (count, count)


class FrameJoiner:
    """Logits of frame t (encoder input: t) for a hypothesis of u tokens: row t if u == t, else only the blank."""

    class _Out:
        out_features = len(VOCAB)
        in_features = 2

    out = _Out()
    rows = torch.stack([log_row(r) for r in FRAMES])

    def pred_proj(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def __call__(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        t = int(enc[0, 0])
        u = pred[:, 0]
        blank_only = torch.full((len(VOCAB),), -1e9)
        blank_only[0] = 0.0
        return torch.where((u == t)[:, None], self.rows[t][None, :], blank_only[None, :])


def transducer_text(fusion: WordFusion | None) -> str:
    search = BeamSearch(CountingPredictor(), FrameJoiner(), 8, 2, torch.device("cpu"),  # type: ignore[arg-type]
                        fusion=fusion)
    enc = torch.zeros(1, len(FRAMES), 2)
    enc[0, :, 0] = torch.arange(len(FRAMES))
    search.advance(enc)
    return "".join(VOCAB[t] for t in search.paths()[0].tokens)


def test_transducer_fusion_flips_the_answer_at_weight_above_zero(lm) -> None:  # noqa: ANN001
    assert transducer_text(None) == "cat sat"
    assert transducer_text(WordFusion(lm, VOCAB, weight=0.0)) == "cat sat"
    assert transducer_text(WordFusion(lm, VOCAB, weight=0.5)) == "hat sat"


def test_fused_paths_are_ranked_by_the_fused_score(lm) -> None:  # noqa: ANN001
    fusion = WordFusion(lm, VOCAB, weight=0.5)
    search = BeamSearch(CountingPredictor(), FrameJoiner(), 8, 2, torch.device("cpu"),  # type: ignore[arg-type]
                        fusion=fusion)
    enc = torch.zeros(1, len(FRAMES), 2)
    enc[0, :, 0] = torch.arange(len(FRAMES))
    search.advance(enc)
    scores = [p.score for p in search.paths()]
    assert scores == sorted(scores, reverse=True) and len(scores) > 1


# ----------------------------------------------------------------------------------------------- attention

# The next-token distribution after each prefix: "cat sat" (0.52) narrowly beats "hat sat" (0.46).
NEXT = {"": {"c": 0.52, "h": 0.46}, "c": {"a": 0.97}, "h": {"a": 0.97}, "ca": {"t": 0.97}, "ha": {"t": 0.97},
        "cat": {" ": 0.97}, "hat": {" ": 0.97}}
SECOND = "sat"


def next_row(prefix: str) -> torch.Tensor:
    if prefix in NEXT:
        return log_row(NEXT[prefix])
    word = prefix.rsplit(" ", 1)[-1]
    if " " in prefix and SECOND.startswith(word):
        return log_row({SECOND[len(word)]: 0.97} if len(word) < len(SECOND) else {"": 0.97})  # "": EOS
    return log_row({"": 0.97})


def step(prev: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """state[0]: (N, L) tokens so far (-1 padded); state[3]: dummy attention weights."""
    history = state[0]
    pos = int((history[0] >= 0).sum()) if history.shape[1] else 0
    grown = torch.cat([history, torch.full((history.shape[0], 1), -1)], dim=1)
    if pos > 0 or int(prev[0]) != EOS or history.shape[1] > 0:
        grown[:, pos] = prev
    first = history.shape[1] == 0
    if first:
        grown = torch.full((history.shape[0], 1), -1)
    rows = []
    for r in range(grown.shape[0]):
        prefix = "".join(VOCAB[t] for t in grown[r].tolist() if t > 0)
        rows.append(next_row(prefix))
    return torch.stack(rows), (grown, state[1], state[2], state[3])


def attention_text(scorers: list, att_weight: float = 1.0) -> str:
    k = 4
    state = (torch.zeros(k, 0, dtype=torch.long), torch.zeros(k, 1), torch.zeros(k, 1), torch.zeros(k, 1, 1))
    found = beam_search(step, state, [16], k, scorers=scorers, att_weight=att_weight)[0]
    best = max(found, key=lambda f: f.score)
    return "".join(VOCAB[t] for t in best.tokens)


def test_attention_fusion_flips_the_answer_at_weight_above_zero(lm) -> None:  # noqa: ANN001
    assert attention_text([]) == "cat sat"
    assert attention_text([WordLMScorer(WordFusion(lm, VOCAB, weight=0.0))]) == "cat sat"
    assert attention_text([WordLMScorer(WordFusion(lm, VOCAB, weight=0.5))]) == "hat sat"


def test_word_fusion_scores_completed_words_and_sentencepiece_word_starts(lm) -> None:  # noqa: ANN001
    chars = WordFusion(lm, VOCAB, weight=1.0, bonus=0.5)
    state = chars.start()
    for c in "hat sa":
        state = chars.extend(state, ID[c])
    assert state.partial == "sa"
    assert state.words == pytest.approx((-0.1) * 2.302585092994046 + 0.5)  # log10 p(hat | <s>) = -0.1
    final = chars.final(state)  # "sa" is no word: <unk>'s score
    pieces = ["", "\u2581hat", "\u2581sat"]
    sp = WordFusion(lm, pieces, weight=1.0)
    s = sp.extend(sp.extend(sp.start(), 1), 2)
    assert s.partial == "sat" and sp.final(s) > final


# ----------------------------------------------------------------------------------------- through the models

def test_resolve_fusion_settings() -> None:
    from asrkit.errors import AsrkitError
    from asrkit.search import SearchOptions, resolve

    fused = resolve(SearchOptions(lm="x.arpa", lm_weight=0.5), "transducer")
    assert fused.beam_size == 8  # a fusion LM needs a beam: the transducer's default one with an LM
    assert resolve(SearchOptions(), "transducer").beam_size == 1
    with pytest.raises(AsrkitError, match="word LM"):
        resolve(SearchOptions(lm="x.arpa", lm_weight=0.5, lm_units="tokens"), "transducer")
    with pytest.raises(AsrkitError, match="needs both an LM"):
        resolve(SearchOptions(lm="x.arpa"), "transducer")
    with pytest.raises(AsrkitError, match="unknown lm_units"):
        SearchOptions(lm_units="chars")


@pytest.mark.parametrize("family", ["transducer", "las"])
def test_models_decode_with_a_word_lm(lm, family: str, tmp_path: Path) -> None:  # noqa: ANN001
    """The word LM reaches the search of both models (loaded once, outside the model): the n-best lists come back
    ranked by the fused score, and a large weight moves them towards the LM's words."""
    from asrkit.config import build_config
    from asrkit.data.tokenizer import CharTokenizer
    from asrkit.lm import load_fusion_lm
    from asrkit.models import build_model
    from asrkit.search import SearchOptions

    tok = CharTokenizer(VOCAB[1:])
    sections: dict = {"model": {"family": family}, "features": {"n_mels": 20},
                      "encoder": {"kind": "conformer", "d_model": 16, "layers": 1, "heads": 2, "ff_mult": 2,
                                  "conv_kernel": 3}}
    if family == "las":
        sections["las"] = {"speller_hidden": 16, "embedding_dim": 4, "attention_dim": 8, "speller_layers": 1}
    torch.manual_seed(0)
    model = build_model(build_config(sections), 20, len(tok.vocab)).eval()
    feats, lens = torch.randn(2, 80, 20), torch.tensor([80, 60])
    search = SearchOptions(beam_size=4, nbest=2, lm=str(lm.path), lm_weight=2.0, lm_units="words", lm_bonus=1.0)
    loaded = load_fusion_lm(search.lm, model.fusion_units(search), tok.vocab)
    plain = model.decode(feats, lens, SearchOptions(beam_size=4, nbest=2), tokenizer=tok)
    fused = model.decode(feats, lens, search, loaded, tokenizer=tok)
    assert [len(h) for h in fused] == [2, 2]
    for hyps in fused:
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    known = {"cat", "hat", "sat"}
    share = lambda lists: sum(w in known for hyps in lists for w in hyps[0].text.split())  # noqa: E731
    assert share(fused) >= share(plain)
    assert fused[0][0].score != plain[0][0].score  # the LM's score is part of the ranking score
