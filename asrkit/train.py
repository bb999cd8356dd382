"""fit(): one training loop you can read top to bottom.

Set-up (manifests, tokenizer, feature statistics, model, optimiser) -> epochs of SortaGrad batches with
warm-up + per-epoch annealing, gradient accumulation, gradient clipping and bf16 autocast on CUDA -> dev
WER/CER after each epoch -> `last.pt` (and `best.pt` on a new best dev WER, `epoch-<k>.pt` with
train.keep_epochs) written atomically; train.patience stops early. A `last.pt` also holds the optimiser, the
sampler position and the RNG states, so `resume=True` continues after a kill. The set-up steps and the
experiment folder are in experiment.py, the ranks' collectives in distributed.py.

Under torchrun (WORLD_SIZE > 1 in the environment) every rank runs this same loop on its own share of the
batches, through DistributedDataParallel. One optimiser step takes `accum_steps` batches on every rank, and
its loss is the mean over all the utterances of the step, on all ranks: N ranks x k micro-batches train
exactly like one process with N*k micro-batches. Rank 0 alone computes the set-up statistics, decodes dev,
writes files and prints; the others receive what it decides.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asrkit import experiment
from asrkit.average import SELECT_NAMES, dev_score, epoch_checkpoints
from asrkit.checkpoint import Loaded, load_checkpoint, save_checkpoint
from asrkit.config import Config
from asrkit.data.device_features import DeviceFeaturizer
from asrkit.data.features import Featurizer
from asrkit.data.loader import DurationBatchSampler, SpeechDataset, make_loader
from asrkit.data.tokenizer import Tokenizer, tokenizer_from_dict
from asrkit.distributed import Group, restore_rng, rng_state
from asrkit.errors import AsrkitError
from asrkit.inference import decode_utterances
from asrkit.io import atomic_path
from asrkit.models import build_model
from asrkit.models.layers import ASRModel
from asrkit.progress import Progress, say
from asrkit.records import Batch, Utterance, WaveBatch
from asrkit.schedule import learning_rate
from asrkit.scoring import score
from asrkit.stop import StopSignals
from asrkit.validation import dev_loss


@dataclass
class FitResult:
    steps: int
    epochs: int
    best_wer: float
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # utterance id -> why its audio was left out
    stopped_early: bool = False  # train.patience epochs passed without a new best dev WER
    audio_seconds: float = 0.0  # audio trained on in this call (all ranks), without padding
    train_seconds: float = 0.0  # wall time of this call's training epochs (no set-up, dev decoding)
    main: bool = True  # False on DDP ranks other than 0: they print nothing
    stopped_by: str | None = None  # a stop signal ("SIGTERM") ended the run after a step; last.pt is saved


def fit(cfg: Config, data_dir: str | Path | Sequence[str | Path], exp_dir: str | Path, *, resume: bool = False,
        progress: bool = True, init: str | Path | None = None) -> FitResult:
    """Train on data_dir/train.jsonl (dev WER on data_dir/dev.jsonl when present) into exp_dir. Several data
    folders: on the union of their train.jsonl, dev WER on the union of their dev.jsonl (and per folder).
    `init`: a checkpoint whose weights start the new model where names and shapes match (experiment.init_weights)."""
    if init is not None and resume:
        raise AsrkitError("--init starts a new run from another model's weights and --resume continues this one from "
                          "EXP/last.pt; give one of them")
    folders = [Path(data_dir)] if isinstance(data_dir, str | Path) else [Path(d) for d in data_dir]
    exp_dir = Path(exp_dir)
    experiment.check_train_config(cfg)
    cfg = experiment.with_normaliser(cfg, folders)  # the data's text normaliser, for the checkpoint
    data = experiment.load_data(folders)
    train_utts, too_long = experiment.drop_too_long(data.train, cfg.train.max_duration, data.manifests("train"))
    dev_utts = data.dev
    group = Group.start(cfg.train.device)
    experiment.set_cpu_threads(group.device, cfg.train.num_workers, group.world)
    for note in data.notes if group.main else []:
        say(note)
    if too_long and group.main:
        say(f"skipping {len(too_long)} training utterance(s) longer than train.max_duration = "
            f"{cfg.train.max_duration:g} s ({', '.join(list(too_long)[:3])}{' ...' if len(too_long) > 3 else ''}); "
            f"listed in {exp_dir / 'skipped.tsv'}")
    try:
        group.from_main(lambda: experiment.prepare_exp_dir(exp_dir, resume))
        random.seed(cfg.train.seed)
        torch.manual_seed(cfg.train.seed)  # before the model is built: its initial weights depend on it
        if resume:
            loaded = load_checkpoint(experiment.last_checkpoint(exp_dir, group.rank), group.device)
            cfg = experiment.resumed_config(loaded.config, cfg)
            experiment.check_resumed_data(loaded.state, data)
            tokenizer, featurizer, model, state = loaded.tokenizer, loaded.featurizer, loaded.model, loaded.state
        else:
            tok, stats, skipped = group.from_main(lambda: experiment.fit_data(cfg, train_utts, progress))
            tokenizer, featurizer = tokenizer_from_dict(tok), Featurizer(cfg.features, *stats)
            model = build_model(cfg, cfg.features.n_mels, len(tokenizer.vocab)).to(group.device)
            state = {"skipped": {**too_long, **skipped}}
            if init is not None:
                line = experiment.init_weights(model, Path(init), tokenizer)
                state["init"] = str(init)
                if group.main:
                    say(line)
        state["data"] = data.sources  # the checkpoints record it: --resume must train on the same folders
        if group.main:
            experiment.check_dev_text(tokenizer, data)
        optimizer = experiment.make_optimizer(cfg, model)
        if "optimizer" in state:
            experiment.load_optimizer(optimizer, state["optimizer"])
            restore_rng(state, group, cfg.train.seed)
        elif group.world > 1:
            torch.manual_seed(cfg.train.seed + group.rank)  # the same weights everywhere, different dropout masks
        if group.main:
            (exp_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
        loop = _Loop(cfg, model, optimizer, tokenizer, featurizer, train_utts, dev_utts, exp_dir, group, state,
                     dev_corpus=data.dev_corpus if len(data.corpora) > 1 else {})
        try:
            return loop.run(progress and group.main)
        finally:
            loop.release()  # DDP's reducer must go before its process group, or gloo can abort at exit
    finally:
        group.close()


class _Loop:
    """The training state that survives a kill (step, epoch, position, best WER, history) and the loop."""

    def __init__(self, cfg: Config, model: ASRModel, optimizer: torch.optim.Optimizer, tokenizer: Tokenizer,
                 featurizer: Featurizer, train_utts: list[Utterance], dev_utts: list[Utterance], exp_dir: Path,
                 group: Group, state: dict[str, Any], dev_corpus: dict[str, str] | None = None) -> None:
        self.cfg, self.model, self.optimizer = cfg, model, optimizer
        self.dev_corpus = dev_corpus or {}  # dev utterance id -> corpus name, for dev WER per corpus
        self.data = state.get("data")  # the data folders, kept in the checkpoints for --resume
        self.init = state.get("init")  # the checkpoint --init started the run from, if any (provenance)
        self.tokenizer, self.featurizer = tokenizer, featurizer
        self.dev_utts, self.exp_dir, self.group, self.device = dev_utts, exp_dir, group, group.device
        self.say = say if group.main else (lambda message: None)  # ranks other than 0 print nothing
        t = cfg.train
        cuda = self.device.type == "cuda"
        # Features on the device: the workers only decode audio; log-mel and SpecAugment run batched in _step.
        on_device = t.features_on == "device" or (t.features_on == "auto" and cuda)
        self.device_features = DeviceFeaturizer(featurizer, self.device) if on_device else None
        self.dataset = SpeechDataset(train_utts, featurizer, tokenizer, augment=True, seed=t.seed,
                                     manifest="train.jsonl", waveforms=on_device)
        self.sampler = DurationBatchSampler([u.duration for u in train_utts], t.batch_seconds, t.max_batch_size,
                                            sortagrad=t.sortagrad, seed=t.seed, rank=group.rank,
                                            world_size=group.world,
                                            speed_factors=cfg.features.speed_factors if cfg.features.speed_perturb
                                            else (), speed_seed=t.seed)
        # On CUDA: page-locked batches (non-blocking copies) and workers that live from one epoch to the next.
        self.loader = make_loader(self.dataset, self.sampler, t.num_workers, pin_memory=cuda, persistent_workers=cuda)
        self.step = int(state.get("step", 0))
        self.epoch = int(state.get("epoch", 0))
        # The cosine schedule's horizon: train.epochs (not max_steps, which may stop a run to resume it later).
        self.total_steps = t.epochs * -(-len(self.sampler.batches(0)) // t.accum_steps)
        self.batch_in_epoch = int(state.get("batch_in_epoch", 0))  # this rank's batches (micro-batches) consumed
        saved_world = int(state.get("world_size", 1))
        if self.batch_in_epoch and saved_world != group.world:  # same global position, rounded up
            self.batch_in_epoch = -(-self.batch_in_epoch * saved_world // group.world)
            self.say(f"note: resuming on {group.world} rank(s) instead of {saved_world}: mid-epoch position rounded")
        self.history: list[dict[str, Any]] = list(state.get("history", []))
        # the best epoch by train.select, from the history (a resume may change train.select): its score, its WER
        scored = [(v, float(h["dev_wer"])) for h in self.history if (v := dev_score(h, t.select)) is not None]
        best: tuple[float, float] = min(scored, key=lambda s: s[0], default=(math.inf, math.inf))
        self.best_score, self.best_wer = best
        self.skipped: dict[str, str] = dict(state.get("skipped", {}))
        if self.skipped:
            self._write_skipped()
        self.nonfinite = int(state.get("nonfinite", 0))  # steps skipped for a non-finite loss, in all
        self.bad_steps = 0
        self.stop, self.stop_agreed = StopSignals(), False  # by every rank, at the same step
        self.stopped_early = self._out_of_patience()
        self.audio_seconds = self.train_seconds = 0.0
        if t.patience and not dev_utts:
            self.say("note: train.patience needs a dev.jsonl to measure WER on; training will not stop early")
        self.autocast = experiment.autocast(t.precision, self.device, self.say)  # bf16: "auto" on CUDA only
        self.writer = experiment.tensorboard(exp_dir / "tb") if group.main else None
        if t.compile:
            experiment.compile_model(model, self.device, self.say)
        # DDP averages gradients in hooks it sets up in its forward(): the loss must be computed through it.
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        self.compute_loss: Callable[[Batch], torch.Tensor] = model.loss
        if group.world > 1:
            self.ddp = group.wrap(model)
            self.compute_loss = self.ddp

    def release(self) -> None:
        """Drop the DistributedDataParallel wrapper (and its communication hooks) while the group still lives, and
        the data loader (its persistent workers end here)."""
        self.compute_loss = self.model.loss
        if hasattr(self, "loader"):
            del self.loader
        if hasattr(self, "ddp"):
            del self.ddp
            import gc

            gc.collect()

    def run(self, progress: bool) -> FitResult:
        t = self.cfg.train
        try:
            with self.stop:
                while self.epoch < t.epochs and not (self._done() or self.stopped_early or self.stop_agreed):
                    self._train_epoch(progress)
                    if self.batch_in_epoch == 0:  # the epoch finished (not stopped by max_steps or a signal)
                        self._end_epoch()
        except KeyboardInterrupt:
            self._save("last.pt", collective=False)
            self.say(f"interrupted at step {self.step}; `last.pt` saved. Continue with --resume.")
            raise
        finally:
            if self.writer is not None:
                self.writer.close()
        if self.batch_in_epoch:
            self._save("last.pt")
        stopped_by = (self.stop.requested or "a signal to another rank") if self.stop_agreed else None
        if stopped_by:
            self.say(f"stopped by {stopped_by} at step {self.step}; `last.pt` saved. Continue with --resume.")
        self.group.barrier()  # the other ranks return once rank 0 has written everything
        if self.nonfinite:
            self.say(f"{self.nonfinite} step(s) skipped for a non-finite loss (never applied to the weights)")
        if self.skipped:
            self.say(f"{len(self.skipped)} training utterance(s) skipped (unreadable audio, or longer than "
                     f"train.max_duration); listed with the reason in {self.exp_dir / 'skipped.tsv'}")
        return FitResult(self.step, self.epoch, self.best_wer, self.history, self.skipped, self.stopped_early,
                         self.audio_seconds, self.train_seconds, self.group.main, stopped_by)

    def _done(self) -> bool:
        return bool(self.cfg.train.max_steps) and self.step >= self.cfg.train.max_steps

    def _lr(self) -> float:
        t = self.cfg.train
        return learning_rate(t, self.step, self.epoch, self.total_steps)

    def _train_epoch(self, progress: bool) -> None:
        t = self.cfg.train
        self.model.train()
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
        self.dataset.set_epoch(self.epoch)
        loader = iter(self.loader)
        total = len(self.sampler) + self.batch_in_epoch
        started, utts, loss_avg = time.monotonic(), 0, None
        try:
            with Progress(f"epoch {self.epoch + 1}/{t.epochs}", total, enabled=progress) as bar:
                bar.advance(self.batch_in_epoch)
                while batches := list(itertools.islice(loader, t.accum_steps)):  # the same count on every rank
                    step_utts, loss = self._step(batches)
                    self.batch_in_epoch += len(batches)
                    utts += step_utts
                    if loss is not None:
                        loss_avg = loss if loss_avg is None else 0.9 * loss_avg + 0.1 * loss
                    bar.advance(len(batches), loss=loss_avg, rate=utts / max(time.monotonic() - started, 1e-6))
                    if t.save_every_steps and self.step % t.save_every_steps == 0:
                        self._save("last.pt")
                    if self._done() or self.stop_agreed:
                        return
            self.batch_in_epoch = 0
        finally:
            self.train_seconds += time.monotonic() - started

    def _step(self, loaded: list[Batch | WaveBatch]) -> tuple[int, float | None]:
        """One optimiser step on this rank's micro-batches -> (utterances in the step on all ranks, mean loss).

        Each micro-batch's mean loss is weighted by its share of all the step's utterances (times the number of
        ranks, as DDP divides the summed gradients by it); gradients are exchanged on the last micro-batch
        only. A non-finite loss or gradient norm skips the step on every rank (counted, logged, never saved)."""
        t = self.cfg.train
        failed = [f for b in loaded for f in b.failed]
        frames = sum(int(b.feat_lens.sum()) for b in loaded)
        batches = [self._on_device(b) for b in loaded if b.ids]
        local = sum(len(b.ids) for b in batches)
        total, empty_ranks, n_failed, stop = self.group.sum(local, local == 0, len(failed), bool(self.stop.requested))
        self.stop_agreed = stop > 0  # this step is finished, then the run stops (_train_epoch)
        if n_failed:
            self._note_failed(self.group.gather(failed))
        if total == 0 or empty_ranks:  # nothing readable here: a rank without a batch cannot join the exchange
            if total:
                self.say(f"step {self.step}: {int(empty_ranks)} rank(s) have no readable audio; step skipped")
            return int(total), None
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = self._lr()
        self.model.on_step(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        losses = []
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            with self.ddp.no_sync() if self.ddp is not None and not last else nullcontext():
                with self.autocast:
                    loss = self.compute_loss(batch)
                (loss * (len(batch.ids) * self.group.world / total)).backward()
            losses.append(loss.detach().float())
        loss_sum = sum(loss * len(b.ids) for loss, b in zip(losses, batches, strict=True))
        loss_total, frames_total = self.group.sum(loss_sum, frames)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip) \
            if math.isfinite(loss_total) else None
        if grad_norm is None or not torch.isfinite(grad_norm):  # the same on every rank: gradients are averaged
            self._skip_step([b.ids for loss, b in zip(losses, batches, strict=True) if not torch.isfinite(loss)])
            return int(total), None
        self.bad_steps = 0
        self.optimizer.step()
        self.step += 1
        self.audio_seconds += frames_total * self.cfg.features.hop_ms / 1000
        value = loss_total / total
        if self.writer is not None and self.step % max(t.log_every_steps, 1) == 0:
            self.writer.add_scalar("train/loss", value, self.step)
            self.writer.add_scalar("train/lr", self._lr(), self.step)
            self.writer.add_scalar("train/grad_norm", float(grad_norm), self.step)
        return int(total), value

    def _on_device(self, batch: Batch | WaveBatch) -> Batch:
        """The batch on the training device (a non-blocking copy); a WaveBatch gets its features there."""
        if isinstance(batch, WaveBatch):
            assert self.device_features is not None
            return self.device_features.batch(batch)
        return batch.to(self.device, non_blocking=True)

    def _skip_step(self, bad_ids: list[list[str]]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_steps += 1
        self.nonfinite += 1
        if self.writer is not None:
            self.writer.add_scalar("train/nonfinite_batches", self.nonfinite, self.step)
        where = f"[rank {self.group.rank}] " if self.group.world > 1 else ""
        ids = [i for part in bad_ids for i in part]
        if ids:  # said by the rank whose batch it was
            say(f"{where}step {self.step}: non-finite loss on {', '.join(ids[:3])}...; step skipped "
                f"({self.bad_steps} in a row)")
        else:
            self.say(f"step {self.step}: non-finite loss on another rank, or gradient norm; step skipped "
                     f"({self.bad_steps} in a row)")
        if self.bad_steps >= self.cfg.train.max_bad_steps:
            raise AsrkitError(f"{self.bad_steps} non-finite losses in a row; lower train.lr or check the data "
                              f"(utterances whose transcript is longer than the audio allows)")

    def _note_failed(self, failed_per_rank: list[list[tuple[str, str]]]) -> None:
        """Unreadable audio: say so once per utterance, keep the list in skipped.tsv and the checkpoint."""
        new = [(utt_id, reason) for part in failed_per_rank for utt_id, reason in part if utt_id not in self.skipped]
        for utt_id, reason in new:
            self.say(f"skipping {utt_id}: {reason}")
            self.skipped[utt_id] = reason
        if new:
            self._write_skipped()

    def _write_skipped(self) -> None:
        """EXP/skipped.tsv: every utterance left out so far, with the reason (rank 0 writes)."""
        if self.group.main:
            lines = [f"{k}\t{v}" for k, v in self.skipped.items()]
            experiment.write_lines(self.exp_dir / "skipped.tsv", ["id\treason", *lines])

    def _end_epoch(self) -> None:
        self.group.average_buffers(self.model)  # BatchNorm statistics of all ranks, before dev is decoded
        record: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.step}
        if self.dev_utts:
            record = self.group.from_main(lambda: {**record, **self.evaluate()})
            if self.writer is not None:
                self.writer.add_scalar("dev/wer", record["dev_wer"], self.step)
                self.writer.add_scalar("dev/cer", record["dev_cer"], self.step)
        self.history.append(record)
        self.epoch += 1
        score = dev_score(record, self.cfg.train.select)
        improved = score is not None and score < self.best_score
        if improved:
            assert score is not None
            self.best_score, self.best_wer = score, record["dev_wer"]
        self.stopped_early = self._out_of_patience()
        self._save("last.pt")
        if self.group.main:
            if improved or not self.dev_utts:
                with atomic_path(self.exp_dir / "best.pt") as tmp:
                    shutil.copyfile(self.exp_dir / "last.pt", tmp)
            if self.cfg.train.keep_epochs:
                self._keep_epoch()
            experiment.write_lines(self.exp_dir / "history.jsonl", [json.dumps(h) for h in self.history])
        by_corpus = ", ".join(f"{name} {wer:.2%}" for name, wer in record.get("dev_wer_by_corpus", {}).items())
        by_corpus = f" ({by_corpus})" if by_corpus else ""  # several corpora: " (an4 10.10%, fsdd 20.00%)"
        dev = f" dev WER {record['dev_wer']:.2%}{by_corpus} CER {record['dev_cer']:.2%}" if "dev_wer" in record else ""
        loss = f" loss {record['dev_loss']:.3f}" if record.get("dev_loss") is not None else ""
        self.say(f"epoch {record['epoch']} step {self.step}{dev}{loss}{' (best)' if improved else ''}")
        if self.stopped_early:
            what = SELECT_NAMES[self.cfg.train.select]
            self.say(f"no new best {what} for {self.cfg.train.patience} epoch(s) (train.patience): stopping; "
                     f"best dev WER {self.best_wer:.2%}")

    def _out_of_patience(self) -> bool:
        """Epochs since the best dev WER or loss (train.select; the first one, as a tie is no improvement) >=
        train.patience."""
        scores = [v for h in self.history if (v := dev_score(h, self.cfg.train.select)) is not None]
        patience = self.cfg.train.patience
        return bool(patience and scores) and len(scores) - 1 - scores.index(min(scores)) >= patience

    def _keep_epoch(self) -> None:
        """EXP/epoch-<k>.pt (weights only, for `asrkit average`); the oldest beyond train.keep_epochs go."""
        save_checkpoint(self.exp_dir / f"epoch-{self.epoch}.pt", config=self.cfg, tokenizer=self.tokenizer,
                        featurizer=self.featurizer, model=self.model,
                        train_state={"step": self.step, "epoch": self.epoch, "history": self.history})
        for _, old in epoch_checkpoints(self.exp_dir)[: -self.cfg.train.keep_epochs]:
            old.unlink(missing_ok=True)

    def evaluate(self) -> dict[str, Any]:
        """dev_wer / dev_cer over the whole dev set; with several corpora also dev_wer_by_corpus and
        dev_cer_by_corpus ({corpus name: rate})."""
        self.model.eval()
        loaded = Loaded(self.cfg, self.tokenizer, self.featurizer, self.model, {}, self.exp_dir)
        pairs = list(decode_utterances(loaded, self.dev_utts, search=self.cfg.decode.search_options(),
                                       batch_size=self.cfg.decode.batch_size, workers=1))
        result = score(pairs)
        dev_loss = self.dev_loss()
        self.model.train()
        record: dict[str, Any] = {"dev_wer": result.wer, "dev_cer": result.cer, "dev_loss": dev_loss}
        if self.dev_corpus:
            names = list(dict.fromkeys(self.dev_corpus[u.id] for u, _ in pairs))
            per = {name: score([(u, h) for u, h in pairs if self.dev_corpus[u.id] == name]) for name in names}
            record["dev_wer_by_corpus"] = {name: r.wer for name, r in per.items()}
            record["dev_cer_by_corpus"] = {name: r.cer for name, r in per.items()}
        return record

    def dev_loss(self) -> float | None:
        """The training loss on dev per utterance (asrkit.validation.dev_loss)."""
        t = self.cfg.train
        return dev_loss(self.model, self.dev_utts, self.featurizer, self.tokenizer, self.device, self.autocast,
                        batch_seconds=t.batch_seconds, max_batch_size=t.max_batch_size, say=self.say)

    def _save(self, name: str, collective: bool = True) -> None:
        """Rank 0 writes; `collective` (every rank calls it): with the RNG states and BatchNorm statistics of all
        ranks. Not after an interrupt, when the other ranks may be anywhere."""
        rng = rng_state(self.device)
        ranks = self.group.gather(rng) if collective and self.group.world > 1 else []
        if collective:
            self.group.average_buffers(self.model)
        if not self.group.main:
            return
        state = {
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "best_wer": self.best_wer, "history": self.history, "optimizer": self.optimizer.state_dict(),
            "rng_torch": rng["torch"], "rng_python": rng["python"], "rng_cuda": rng["cuda"], "rng_ranks": ranks,
            "skipped": self.skipped, "nonfinite": self.nonfinite, "world_size": self.group.world,
            "data": self.data, "init": self.init,
        }
        save_checkpoint(self.exp_dir / name, config=self.cfg, tokenizer=self.tokenizer,
                        featurizer=self.featurizer, model=self.model, train_state=state)
