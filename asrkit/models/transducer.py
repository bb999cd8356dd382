"""RNN-Transducer (Graves 2012; He et al. 2018): an LSTM encoder, a prediction network and a joint network,
trained with torchaudio's `rnnt_loss` (fused log-softmax), decoded greedily or by beam search
(transducer_search.py), and streamable.

Shapes: B batch, T feature frames, F mel bins, R = input_stack * time_reduction, T' = ceil(T / R) encoder frames,
D encoder output (H, or 2H bidirectional), U target tokens, P predictor units, J joint size, V vocabulary
(blank = 0, also the predictor's start symbol).

    feats (B, T, F) -> stack `input_stack` frames -> LSTM x reduction_after -> stack `time_reduction` frames
                    -> LSTM x (encoder_layers - reduction_after) -> enc (B, T', D)
    targets (B, U) -> [blank, y_1 .. y_U] -> embedding -> LSTM -> pred (B, U+1, P)
    joint: logits[b, t, u] = W_o tanh(W_e enc[b, t] + W_p pred[b, u]) + b_o  -> (B, T', U+1, V)
    optional auxiliary CTC (ctc_weight > 0): enc -> Linear -> CTC loss, loss = (1 - w) RNN-T + w CTC. The head
    only shapes the encoder while training (it gives every frame a direct gradient, which shortens the all-blank
    stage a transducer starts with); decoding never uses it.

Memory of the loss. The joint tensor is the big one: B*T'*(U+1)*V logits plus as many gradients (rnnt_loss with
fused log-softmax writes the gradient next to the logits), and the B*T'*(U+1)*J tanh activations with their
gradients. W_e and W_p are applied before the broadcast ("function merging", Li et al. 2019), so only the output
layer runs on the 4-D tensor. The loss runs over sub-batches and takes each one's gradient with respect to the
small inputs (enc and pred projections, W_o, b_o) at once, so one sub-batch's joint is alive at a time:

    peak bytes ~= 8 * B' * T'_max * (U'_max + 1) * (V + J)      (float32, B' utterances of one sub-batch)

Sub-batches are formed (longest first) so that B' * T'_max * (U'_max + 1) * (V + J) <= joint_max_elements;
50M elements ~= 400 MB. E.g. V = 1024, J = 320, 15 s utterances (T' = 250 at R = 6) with U = 80: 1 utterance
is ~27M elements, ~220 MB; a batch of 32 runs as 32 sub-batches instead of needing 7 GB. One utterance above the
cap still runs, alone. Sub-batches are cut to their own longest T' and U, which also saves padding.
Measured on the CPU (B = 8, T' = 100, U = 40, V = 1024, J = 320: 44M elements): one sub-batch raised the peak
RSS by 304 MB (the formula says 336 MB); a cap of 6M elements (one utterance per sub-batch) by 99 MB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from asrkit.data.tokenizer import Tokenizer
from asrkit.models.fusion import WordFusion
from asrkit.models.layers import ASRModel, EncoderModule, length_mask, pack, unpack
from asrkit.models.transducer_search import BLANK, BeamSearch, GreedySearch, LSTMState, to_hypothesis
from asrkit.records import Batch, Hypothesis
from asrkit.search import SearchOptions

# ------------------------------------------------------------------------------------------------------
# Encoder: frame stacking + LSTM layers; runs on a padded batch, or chunk by chunk with carried state
# ------------------------------------------------------------------------------------------------------


class Stack(nn.Module):
    """Concatenate `factor` consecutive frames: (B, T, D) -> (B, ceil(T / factor), factor * D). Frames past a
    length are zeros, so a last, partial group is zero-padded, as the streaming path pads it at the end."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.factor == 1:
            return x, lengths
        b, t, d = x.shape
        x = x * length_mask(lengths, t)[:, :, None].to(x.dtype)
        x = F.pad(x, (0, 0, 0, (-t) % self.factor))
        lengths = torch.div(lengths + self.factor - 1, self.factor, rounding_mode="floor")
        return x.reshape(b, -1, self.factor * d), lengths

    def step(self, x: torch.Tensor, carry: torch.Tensor, final: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Streaming: (1, t, D) new frames + frames carried from before -> whole groups, and the rest to carry."""
        x = torch.cat([carry, x], dim=1)
        groups = x.shape[1] // self.factor
        if final and x.shape[1] % self.factor:
            x = F.pad(x, (0, 0, 0, self.factor - x.shape[1] % self.factor))
            groups += 1
        used = groups * self.factor
        return x[:, :used].reshape(1, groups, self.factor * x.shape[2]), x[:, used:]


class EncoderLayer(nn.Module):
    """LSTM [-> LayerNorm] -> dropout. Directions are concatenated (D = 2H when bidirectional)."""

    def __init__(self, input_size: int, hidden: int, bidirectional: bool, layer_norm: bool, dropout: float) -> None:
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden, batch_first=True, bidirectional=bidirectional)
        self.out_dim = hidden * (2 if bidirectional else 1)
        self.norm = nn.LayerNorm(self.out_dim) if layer_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, _ = self.rnn(pack(x, lengths))
        return self.dropout(self.norm(unpack(out, x.shape[1]))), lengths

    def step(self, x: torch.Tensor, state: LSTMState | None) -> tuple[torch.Tensor, LSTMState | None]:
        if x.shape[1] == 0:
            return x.new_zeros(1, 0, self.out_dim), state
        out, state = self.rnn(x, state)
        return self.dropout(self.norm(out)), state


class Encoder(EncoderModule):
    """Transcription network: (B, T, F) -> (B, T', D) with T' = ceil(T / time_reduction)."""

    def __init__(self, n_feats: int, *, layers: int = 4, hidden: int = 320, bidirectional: bool = False,
                 input_stack: int = 3, time_reduction: int = 2, reduction_after: int = 1, layer_norm: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"encoder_layers must be at least 1, got {layers}")
        if input_stack < 1 or time_reduction < 1:
            raise ValueError(f"input_stack and time_reduction must be at least 1, got {input_stack}, {time_reduction}")
        if not 0 <= reduction_after <= layers:
            raise ValueError(f"reduction_after must be 0-{layers} (the encoder layers), got {reduction_after}")
        stages: list[nn.Module] = [Stack(input_stack)]
        dim = n_feats * input_stack
        for i in range(layers + 1):
            if i == reduction_after:
                stages.append(Stack(time_reduction))
                dim *= time_reduction
            if i < layers:
                layer = EncoderLayer(dim, hidden, bidirectional, layer_norm, dropout)
                stages.append(layer)
                dim = layer.out_dim
        self.stages = nn.ModuleList(stages)
        self.n_feats = n_feats
        self.out_dim = dim
        self.bidirectional = bidirectional
        self.streaming = not bidirectional
        self.time_reduction = input_stack * time_reduction

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = feats
        for stage in self.stages:
            x, lengths = stage(x, lengths)
        return x, lengths  # (B, T', D), (B,)

    def init_stream(self, device: torch.device) -> list[torch.Tensor | LSTMState | None]:
        """Streaming state: the frames each Stack carries, each LSTM's (h, c) (None before the first frame)."""
        if self.bidirectional:
            raise ValueError("a bidirectional encoder needs the whole utterance and cannot stream; "
                             "train with transducer.bidirectional = false")
        state: list[torch.Tensor | LSTMState | None] = []
        dim = self.n_feats
        for stage in self.stages:
            if isinstance(stage, Stack):
                state.append(torch.zeros(1, 0, dim, device=device))
                dim *= stage.factor
            elif isinstance(stage, EncoderLayer):
                state.append(None)
                dim = stage.out_dim
        return state

    def step(self, feats: torch.Tensor, state: list, final: bool = False) -> tuple[torch.Tensor, list]:
        """(1, t, F) new feature frames -> (1, t', D) encoder frames ready now; `final` flushes the carried frames."""
        x, new_state = feats, []
        for stage, s in zip(self.stages, state, strict=True):
            if isinstance(stage, Stack):
                x, s = stage.step(x, s, final)
            elif isinstance(stage, EncoderLayer):
                x, s = stage.step(x, s)
            new_state.append(s)
        return x, new_state


# ------------------------------------------------------------------------------------------------------
# Prediction and joint networks
# ------------------------------------------------------------------------------------------------------


class Predictor(nn.Module):
    """Prediction network: the tokens so far -> (.., P); the blank (0) is the start symbol."""

    def __init__(self, vocab_size: int, *, embed: int = 128, layers: int = 1, hidden: int = 320,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"predictor_layers must be at least 1, got {layers}")
        self.embed = nn.Embedding(vocab_size, embed)
        self.rnn = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = hidden

    def forward(self, targets: torch.Tensor) -> torch.Tensor:
        """(B, U) -> (B, U+1, P): output u has seen the start symbol and targets[:, :u]."""
        start = targets.new_full((targets.shape[0], 1), BLANK)
        x = self.dropout(self.embed(torch.cat([start, targets], dim=1)))  # (B, U+1, E)
        out, _ = self.rnn(x)
        return self.dropout(out)

    def step(self, tokens: torch.Tensor, state: LSTMState | None) -> tuple[torch.Tensor, LSTMState]:
        """One token per hypothesis: (N,) -> (N, P) and the new state."""
        out, state = self.rnn(self.embed(tokens[:, None]), state)
        return out[:, 0], state


class Joiner(nn.Module):
    """Joint network: logits = out(tanh(enc_proj(enc) + pred_proj(pred))). Project first, then broadcast."""

    def __init__(self, enc_dim: int, pred_dim: int, joint_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.enc_proj = nn.Linear(enc_dim, joint_dim)
        self.pred_proj = nn.Linear(pred_dim, joint_dim, bias=False)
        self.out = nn.Linear(joint_dim, vocab_size)

    def forward(self, enc_j: torch.Tensor, pred_j: torch.Tensor) -> torch.Tensor:
        """Projected encoder and predictor outputs that broadcast against each other -> logits (.., V)."""
        return self.out(torch.tanh(enc_j + pred_j))


# ------------------------------------------------------------------------------------------------------
# Loss: rnnt_loss over memory-capped sub-batches
# ------------------------------------------------------------------------------------------------------


def plan_sub_batches(enc_lens: Sequence[int], target_lens: Sequence[int], width: int,
                     max_elements: int) -> list[list[int]]:
    """Group utterance indices, longest first, so that each group's n * T'_max * (U_max + 1) * width stays within
    `max_elements` (`width` = V + J); an utterance above the cap on its own forms a group."""
    order = sorted(range(len(enc_lens)), key=lambda i: (-enc_lens[i], -target_lens[i]))
    groups: list[list[int]] = []
    t_max = u_max = 0
    for i in order:
        t, u = max(t_max, enc_lens[i]), max(u_max, target_lens[i])
        if groups and (len(groups[-1]) + 1) * t * (u + 1) * width <= max_elements:
            groups[-1].append(i)
            t_max, u_max = t, u
        else:
            groups.append([i])
            t_max, u_max = enc_lens[i], target_lens[i]
    return groups


def _sub_batch_loss(enc_j: torch.Tensor, pred_j: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    targets: torch.Tensor, enc_lens: torch.Tensor, target_lens: torch.Tensor) -> torch.Tensor:
    """Summed RNN-T loss of one sub-batch, cut to its own longest T' and U."""
    t_max, u_max = int(enc_lens.max()), int(target_lens.max())
    hidden = torch.tanh(enc_j[:, :t_max, None, :] + pred_j[:, None, : u_max + 1, :])  # (B', T', U+1, J)
    logits = F.linear(hidden, weight, bias)  # (B', T', U+1, V)
    import torchaudio.functional as taf

    return taf.rnnt_loss(logits, targets[:, :u_max].int().contiguous(), enc_lens.int(), target_lens.int(),
                         blank=BLANK, reduction="sum", fused_log_softmax=True)


class _ChunkedJointLoss(torch.autograd.Function):
    """Sum of RNN-T losses over sub-batches. The forward takes each sub-batch's gradient at once and frees its
    joint tensor, keeping only the gradients of the small inputs; the backward scales them."""

    @staticmethod
    def forward(ctx: Any, enc_j: torch.Tensor, pred_j: torch.Tensor, weight: torch.Tensor,  # type: ignore[override]
                bias: torch.Tensor, targets: torch.Tensor, enc_lens: torch.Tensor, target_lens: torch.Tensor,
                groups: list[list[int]]) -> torch.Tensor:
        inputs = (enc_j, pred_j, weight, bias)
        wants = [bool(n) for n in ctx.needs_input_grad[:4]]
        grads = [torch.zeros_like(x, dtype=torch.float32) for x in inputs]  # (B, T', J), (B, U+1, J), (V, J), (V,)
        total = torch.zeros((), dtype=torch.float32, device=enc_j.device)
        for group in groups:
            idx = torch.tensor(group, device=enc_j.device)
            t_max, u_max = int(enc_lens[idx].max()), int(target_lens[idx].max())
            where = [(idx, slice(0, t_max)), (idx, slice(0, u_max + 1)), (), ()]  # of each input, in this group
            leaves = [x[w].detach().float().requires_grad_(want)
                      for x, w, want in zip(inputs, where, wants, strict=True)]
            with torch.enable_grad(), torch.autocast(enc_j.device.type, enabled=False):
                loss = _sub_batch_loss(leaves[0], leaves[1], leaves[2], leaves[3], targets[idx], enc_lens[idx],
                                       target_lens[idx])
                need = [x for x in leaves if x.requires_grad]
                got = iter(torch.autograd.grad(loss, need) if need else ())
            total += loss.detach()
            for grad, w, want in zip(grads, where, wants, strict=True):
                if want:
                    grad[w] += next(got)
        ctx.save_for_backward(*grads)
        ctx.wants = wants
        ctx.dtypes = [x.dtype for x in inputs]
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        grads = [(g * grad_out).to(dtype) if want else None
                 for g, want, dtype in zip(ctx.saved_tensors, ctx.wants, ctx.dtypes, strict=True)]
        return (*grads, None, None, None, None)


def joint_loss(joiner: Joiner, enc: torch.Tensor, enc_lens: torch.Tensor, pred: torch.Tensor, targets: torch.Tensor,
               target_lens: torch.Tensor, max_elements: int) -> torch.Tensor:
    """Summed RNN-T loss of a batch: enc (B, T', D), pred (B, U+1, P), targets (B, U); memory capped as the
    module docstring says."""
    enc_j = joiner.enc_proj(enc)  # (B, T', J)
    pred_j = joiner.pred_proj(pred)  # (B, U+1, J)
    width = joiner.out.out_features + joiner.out.in_features
    groups = plan_sub_batches(enc_lens.tolist(), target_lens.tolist(), width, max_elements)
    weight, bias = joiner.out.weight, joiner.out.bias
    if torch.is_grad_enabled() and any(x.requires_grad for x in (enc_j, pred_j, weight, bias)):
        return _ChunkedJointLoss.apply(enc_j, pred_j, weight, bias, targets, enc_lens, target_lens, groups)
    total = torch.zeros((), dtype=torch.float32, device=enc.device)
    with torch.autocast(enc.device.type, enabled=False):
        for group in groups:
            idx = torch.tensor(group, device=enc.device)
            total += _sub_batch_loss(enc_j[idx].float(), pred_j[idx].float(), weight.float(), bias.float(),
                                     targets[idx], enc_lens[idx], target_lens[idx])
    return total


# ------------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------------


class Transducer(ASRModel):
    """RNN-T composed of an encoder, a prediction network and a joint network (see the module docstring)."""

    objective = "transducer"
    vocab_layers = ("predictor.embed", "joiner.out", "ctc")

    def __init__(self, encoder: EncoderModule, predictor: Predictor, joiner: Joiner, *,
                 joint_max_elements: int = 50_000_000, ctc_weight: float = 0.0) -> None:
        super().__init__()
        if joint_max_elements < 1:
            raise ValueError(f"joint_max_elements must be positive, got {joint_max_elements}")
        if not 0.0 <= ctc_weight < 1.0:
            raise ValueError(f"transducer.ctc_weight must be in [0, 1), got {ctc_weight}: 0 trains without the "
                             "auxiliary CTC head, 0.1-0.3 is usual")
        self.encoder, self.predictor, self.joiner = encoder, predictor, joiner
        self.time_reduction = encoder.time_reduction
        self.joint_max_elements = joint_max_elements
        self.ctc_weight = ctc_weight
        # the auxiliary CTC head exists only when it is trained, so checkpoints without it load unchanged
        self.ctc = nn.Linear(encoder.out_dim, joiner.out.out_features) if ctc_weight > 0 else None

    def loss(self, batch: Batch) -> torch.Tensor:
        """RNN-T loss summed over each utterance, averaged over the batch; with the auxiliary CTC head
        (1 - ctc_weight) RNN-T + ctc_weight CTC, both summed over each utterance."""
        enc, enc_lens = self.encoder(batch.feats, batch.feat_lens)  # (B, T', D)
        pred = self.predictor(batch.targets)  # (B, U+1, P)
        total = joint_loss(self.joiner, enc, enc_lens, pred, batch.targets, batch.target_lens,
                           self.joint_max_elements)
        if self.ctc is not None:
            log_probs = F.log_softmax(self.ctc(enc).float(), dim=-1).transpose(0, 1)  # (T', B, V)
            ctc = F.ctc_loss(log_probs, batch.targets, enc_lens, batch.target_lens, blank=BLANK, reduction="sum",
                             zero_infinity=True)
            total = (1 - self.ctc_weight) * total + self.ctc_weight * ctc
        return total / len(batch.ids)

    def fusion_units(self, search: SearchOptions) -> str:
        return "words"

    def new_search(self, batch: int, device: torch.device, search: SearchOptions, lm: Any = None,
                   vocab: Sequence[str] = ()) -> GreedySearch | BeamSearch:
        """Greedy search of a batch (resolved beam 1 without an LM), or the beam search of one utterance; with `lm`
        (a WordLM of search.lm) its words are fused with weight search.lm_weight (asrkit.models.fusion)."""
        fusion = None
        if lm is not None and search.lm_weight:
            fusion = WordFusion(lm, vocab, search.lm_weight, search.lm_bonus)
        if search.beam_size == 1 and fusion is None:
            return GreedySearch(self.predictor, self.joiner, batch, search.max_symbols, device)
        return BeamSearch(self.predictor, self.joiner, search.beam_size, search.max_symbols, device, fusion=fusion)

    @torch.no_grad()
    def decode(self, feats: torch.Tensor, feat_lens: torch.Tensor, search: SearchOptions, lm: Any = None, *,
               tokenizer: Tokenizer, frame_shift: float = 0.01) -> list[list[Hypothesis]]:
        """Up to search.nbest hypotheses per utterance, best first."""
        search = self.resolve_search(search)
        enc, enc_lens = self.encoder(feats, feat_lens)
        enc_j = self.joiner.enc_proj(enc)  # (B, T', J)
        shift = frame_shift * self.time_reduction
        if search.beam_size == 1 and not search.lm:
            greedy = self.new_search(len(enc_j), enc_j.device, search)
            greedy.advance(enc_j, enc_lens)
            return [[to_hypothesis(greedy.paths(b)[0], tokenizer, shift)] for b in range(len(enc_j))]
        out = []
        for b in range(len(enc_j)):
            beam = self.new_search(1, enc_j.device, search, lm, tokenizer.vocab)
            beam.advance(enc_j[b : b + 1, : int(enc_lens[b])])
            out.append([to_hypothesis(p, tokenizer, shift) for p in beam.paths()[: search.nbest]])
        return out

    @property
    def streaming(self) -> bool:
        return self.encoder.streaming

    def start_stream(self, search: SearchOptions) -> TransducerStream:
        """Decoding state for one utterance fed chunk by chunk (unidirectional encoders only)."""
        if search.lm:
            raise ValueError("streaming decodes without a language model; drop --lm / decode.lm for --stream")
        return TransducerStream(self, self.resolve_search(search))


class TransducerStream:
    """One utterance decoded as its normalised feature frames arrive. The encoder carries its LSTM states and the
    frames its stacking layers have not used yet; the search is frame-synchronous, so whole-utterance and
    chunk-by-chunk decoding follow the same steps."""

    def __init__(self, model: Transducer, search: SearchOptions) -> None:
        self.model, self.nbest = model, search.nbest
        self.device = next(model.parameters()).device
        self.state = model.encoder.init_stream(self.device)
        self.search = model.new_search(1, self.device, search)
        self.finished = False

    @torch.no_grad()
    def accept(self, feats: torch.Tensor) -> None:
        """Feature frames (t, F) of the next stretch of audio."""
        if self.finished:
            raise RuntimeError("the stream is finished")
        self._run(feats, final=False)

    @torch.no_grad()
    def finish(self) -> None:
        """End of audio: flush the frames the stacking layers still hold."""
        if not self.finished:
            self._run(None, final=True)
            self.finished = True

    def _run(self, feats: torch.Tensor | None, final: bool) -> None:
        x = (torch.zeros(1, 0, self.model.encoder.n_feats, device=self.device) if feats is None
             else feats.to(self.device)[None])
        enc, self.state = self.model.encoder.step(x, self.state, final)
        if enc.shape[1]:
            self.search.advance(self.model.joiner.enc_proj(enc))

    def best(self) -> tuple[int, ...]:
        return self.search.paths()[0].tokens

    def stable(self) -> tuple[int, ...]:
        return self.search.stable()

    def hypotheses(self, tokenizer: Tokenizer, frame_shift: float = 0.01) -> list[Hypothesis]:
        """The n-best list (search.nbest), best first; `frame_shift`: the feature hop in seconds."""
        shift = frame_shift * self.model.time_reduction
        return [to_hypothesis(p, tokenizer, shift) for p in self.search.paths()[: self.nbest]]
