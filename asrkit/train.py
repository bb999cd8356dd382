"""fit(): one training loop you can read top to bottom.

Set-up (manifests, tokenizer, feature statistics, model, optimiser) -> epochs of SortaGrad batches with
warm-up + per-epoch annealing, gradient clipping and bf16 autocast on CUDA -> dev WER/CER after each
epoch -> `last.pt` (and `best.pt` on a new best dev WER) written atomically. A `last.pt` also holds the
optimiser, the sampler position and the RNG states, so `resume=True` continues after a kill.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from asrkit.checkpoint import Loaded, load_checkpoint, save_checkpoint
from asrkit.config import Config
from asrkit.data.audio import load_audio
from asrkit.data.features import Featurizer
from asrkit.data.loader import DurationBatchSampler, SpeechDataset, make_loader
from asrkit.data.manifest import read_manifest
from asrkit.data.tokenizer import Tokenizer, describe_unencodable, find_unencodable, train_tokenizer
from asrkit.errors import AsrkitError, AudioError
from asrkit.models import ASRModel, build_model
from asrkit.progress import Progress, say
from asrkit.records import Utterance
from asrkit.transcribe import decode_utterances, pick_device, score

# Keys that may change when resuming; any other difference from the checkpoint's config is an error.
RESUMABLE_CHANGES = {"epochs", "max_steps", "num_workers", "device", "save_every_steps", "log_every_steps",
                     "max_bad_steps"}


@dataclass
class FitResult:
    steps: int
    epochs: int
    best_wer: float
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # utterance id -> why its audio was left out


def fit(cfg: Config, data_dir: str | Path, exp_dir: str | Path, *, resume: bool = False,
        progress: bool = True) -> FitResult:
    """Train on data_dir/train.jsonl (dev WER on data_dir/dev.jsonl when present) into exp_dir."""
    data_dir, exp_dir = Path(data_dir), Path(exp_dir)
    train_utts = read_manifest(data_dir / "train.jsonl")
    dev_utts = read_manifest(data_dir / "dev.jsonl") if (data_dir / "dev.jsonl").is_file() else []
    _prepare_exp_dir(exp_dir, resume)
    device = pick_device(cfg.train.device)
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)  # before the model is built: its initial weights depend on it
    if resume:
        loaded = load_checkpoint(exp_dir / "last.pt", device)
        cfg = _resumed_config(loaded.config, cfg)
        tokenizer, featurizer, model, state = loaded.tokenizer, loaded.featurizer, loaded.model, loaded.state
    else:
        tokenizer = _train_tokenizer(cfg, train_utts, data_dir)
        skipped: dict[str, str] = {}
        featurizer = _fit_featurizer(cfg, train_utts, progress, skipped)
        model = build_model(cfg, cfg.features.n_mels, len(tokenizer.vocab)).to(device)
        state = {"skipped": skipped}
    _check_dev_text(tokenizer, dev_utts, data_dir)
    optimizer = _make_optimizer(cfg, model)
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_torch"])
        random.setstate(_as_tuple(state["rng_python"]))
    (exp_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
    loop = _Loop(cfg, model, optimizer, tokenizer, featurizer, train_utts, dev_utts, exp_dir, device, state)
    return loop.run(progress)


class _Loop:
    """The training state that survives a kill (step, epoch, position, best WER, history) and the loop."""

    def __init__(self, cfg: Config, model: ASRModel, optimizer: torch.optim.Optimizer, tokenizer: Tokenizer,
                 featurizer: Featurizer, train_utts: list[Utterance], dev_utts: list[Utterance], exp_dir: Path,
                 device: torch.device, state: dict[str, Any]) -> None:
        self.cfg, self.model, self.optimizer = cfg, model, optimizer
        self.tokenizer, self.featurizer = tokenizer, featurizer
        self.dev_utts, self.exp_dir, self.device = dev_utts, exp_dir, device
        t = cfg.train
        self.dataset = SpeechDataset(train_utts, featurizer, tokenizer, augment=True, seed=t.seed,
                                     manifest="train.jsonl")
        self.sampler = DurationBatchSampler([u.duration for u in train_utts], t.batch_seconds, t.max_batch_size,
                                            sortagrad=t.sortagrad, seed=t.seed)
        self.step = int(state.get("step", 0))
        self.epoch = int(state.get("epoch", 0))
        self.batch_in_epoch = int(state.get("batch_in_epoch", 0))
        self.best_wer = float(state.get("best_wer", math.inf))
        self.history: list[dict[str, Any]] = list(state.get("history", []))
        self.skipped: dict[str, str] = dict(state.get("skipped", {}))
        if self.skipped:
            _write_lines(exp_dir / "skipped.tsv", ["id\treason"] + [f"{k}\t{v}" for k, v in self.skipped.items()])
        self.nonfinite = int(state.get("nonfinite", 0))  # batches skipped for a non-finite loss, in all
        self.bad_steps = 0
        use_bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext())
        self.writer = _tensorboard(exp_dir / "tb")

    def run(self, progress: bool) -> FitResult:
        t = self.cfg.train
        try:
            while self.epoch < t.epochs and not self._done():
                self._train_epoch(progress)
                if self.batch_in_epoch == 0:  # the epoch finished (not stopped by max_steps)
                    self._end_epoch()
        except KeyboardInterrupt:
            self._save("last.pt")
            say(f"interrupted at step {self.step}; `last.pt` saved. Continue with --resume.")
            raise
        finally:
            if self.writer is not None:
                self.writer.close()
        if self.batch_in_epoch:
            self._save("last.pt")
        if self.nonfinite:
            say(f"{self.nonfinite} batch(es) skipped for a non-finite loss (never applied to the weights)")
        if self.skipped:
            say(f"{len(self.skipped)} training utterance(s) skipped because their audio could not be read; "
                f"listed in {self.exp_dir / 'skipped.tsv'}")
        return FitResult(self.step, self.epoch, self.best_wer, self.history, self.skipped)

    def _done(self) -> bool:
        return bool(self.cfg.train.max_steps) and self.step >= self.cfg.train.max_steps

    def _lr(self) -> float:
        t = self.cfg.train
        warm = min(1.0, (self.step + 1) / t.warmup_steps) if t.warmup_steps > 0 else 1.0
        return t.lr * warm * t.anneal**self.epoch

    def _train_epoch(self, progress: bool) -> None:
        t = self.cfg.train
        self.model.train()
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
        self.dataset.set_epoch(self.epoch)
        loader = make_loader(self.dataset, self.sampler, t.num_workers, pin_memory=self.device.type == "cuda")
        total = len(self.sampler) + self.batch_in_epoch
        started, utts, loss_avg = time.monotonic(), 0, None
        with Progress(f"epoch {self.epoch + 1}/{t.epochs}", total, enabled=progress) as bar:
            bar.advance(self.batch_in_epoch)
            for batch in loader:
                self._note_failed(batch.failed)
                loss = self._step(batch.to(self.device, non_blocking=True)) if batch.ids else None
                self.batch_in_epoch += 1
                utts += len(batch.ids)
                if loss is not None:
                    loss_avg = loss if loss_avg is None else 0.9 * loss_avg + 0.1 * loss
                rate = utts / max(time.monotonic() - started, 1e-6)
                bar.advance(1, loss=loss_avg, rate=rate)
                if t.save_every_steps and self.step % t.save_every_steps == 0:
                    self._save("last.pt")
                if self._done():
                    return
        self.batch_in_epoch = 0

    def _note_failed(self, failed: list[tuple[str, str]]) -> None:
        """Unreadable audio: say so once per utterance, keep the list in skipped.tsv and the checkpoint."""
        new = [(utt_id, reason) for utt_id, reason in failed if utt_id not in self.skipped]
        for utt_id, reason in new:
            say(f"skipping {utt_id}: {reason}")
            self.skipped[utt_id] = reason
        if new:
            lines = [f"{k}\t{v}" for k, v in self.skipped.items()]
            _write_lines(self.exp_dir / "skipped.tsv", ["id\treason", *lines])

    def _step(self, batch: Any) -> float | None:
        """One optimiser step; a non-finite loss skips the batch (counted, logged, never saved)."""
        t = self.cfg.train
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr()
        self.model.on_step(self.step)
        with self.autocast:
            loss = self.model.loss(batch)
        if not torch.isfinite(loss):
            self.bad_steps += 1
            self.nonfinite += 1
            if self.writer is not None:
                self.writer.add_scalar("train/nonfinite_batches", self.nonfinite, self.step)
            say(f"step {self.step}: non-finite loss on {', '.join(batch.ids[:3])}...; batch skipped "
                f"({self.bad_steps} in a row)")
            if self.bad_steps >= t.max_bad_steps:
                raise AsrkitError(f"{self.bad_steps} non-finite losses in a row; lower train.lr or check the data "
                                  f"(utterances whose transcript is longer than the audio allows)")
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.bad_steps = 0
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.optimizer.step()
        self.step += 1
        value = float(loss.detach())
        if self.writer is not None and self.step % max(t.log_every_steps, 1) == 0:
            self.writer.add_scalar("train/loss", value, self.step)
            self.writer.add_scalar("train/lr", self._lr(), self.step)
            self.writer.add_scalar("train/grad_norm", float(grad_norm), self.step)
        return value

    def _end_epoch(self) -> None:
        record: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.step}
        if self.dev_utts:
            result = self.evaluate()
            record.update(dev_wer=result[0], dev_cer=result[1])
            if self.writer is not None:
                self.writer.add_scalar("dev/wer", result[0], self.step)
                self.writer.add_scalar("dev/cer", result[1], self.step)
        self.history.append(record)
        self.epoch += 1
        improved = "dev_wer" in record and record["dev_wer"] < self.best_wer
        if improved:
            self.best_wer = record["dev_wer"]
        self._save("last.pt")
        if improved or not self.dev_utts:
            shutil.copyfile(self.exp_dir / "last.pt", self.exp_dir / ".best.pt.tmp")
            (self.exp_dir / ".best.pt.tmp").replace(self.exp_dir / "best.pt")
        _write_lines(self.exp_dir / "history.jsonl", [json.dumps(h) for h in self.history])
        dev = f" dev WER {record['dev_wer']:.2%} CER {record['dev_cer']:.2%}" if "dev_wer" in record else ""
        say(f"epoch {record['epoch']} step {self.step}{dev}{' (best)' if improved else ''}")

    def evaluate(self) -> tuple[float, float]:
        self.model.eval()
        loaded = Loaded(self.cfg, self.tokenizer, self.featurizer, self.model, {}, self.exp_dir)
        result = score(list(decode_utterances(loaded, self.dev_utts, batch_size=self.cfg.decode.batch_size)))
        self.model.train()
        return result.wer, result.cer

    def _save(self, name: str) -> None:
        state = {
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "best_wer": self.best_wer, "history": self.history, "optimizer": self.optimizer.state_dict(),
            "rng_torch": torch.get_rng_state(), "rng_python": list(random.getstate()), "skipped": self.skipped,
            "nonfinite": self.nonfinite,
        }
        save_checkpoint(self.exp_dir / name, config=self.cfg, tokenizer=self.tokenizer,
                        featurizer=self.featurizer, model=self.model, train_state=state)


def _prepare_exp_dir(exp_dir: Path, resume: bool) -> None:
    if resume and not (exp_dir / "last.pt").is_file():
        raise AsrkitError(f"--resume: {exp_dir / 'last.pt'} not found; start without --resume")
    if not resume and (exp_dir / "last.pt").is_file():
        raise AsrkitError(f"{exp_dir} already holds a trained model; continue it with --resume or choose a new --exp")
    try:
        exp_dir.mkdir(parents=True, exist_ok=True)
        probe = exp_dir / ".write-test"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as err:
        raise AsrkitError(f"cannot write to experiment folder {exp_dir}: {err.strerror}") from None


def _resumed_config(saved: Config, given: Config) -> Config:
    old, new = saved.to_dict(), given.to_dict()
    diffs = [f"{s}.{k}" for s in old for k in old[s] if old[s][k] != new[s][k]
             and not (s == "train" and k in RESUMABLE_CHANGES)]
    if diffs:
        raise AsrkitError(f"--resume: config differs from the checkpoint's in {', '.join(diffs)}; resume with the "
                          "same config or start a new --exp")
    return given


def _train_tokenizer(cfg: Config, utts: list[Utterance], data_dir: Path) -> Tokenizer:
    empty = [u.id for u in utts if not u.text.strip()]
    if empty:
        raise AsrkitError(f"{data_dir / 'train.jsonl'}: empty transcript in {', '.join(empty[:5])}"
                          f"{' ...' if len(empty) > 5 else ''}; remove these lines or add their text")
    return train_tokenizer(cfg.tokenizer.kind, [u.text for u in utts], cfg.tokenizer.vocab_size)


def _check_dev_text(tokenizer: Tokenizer, dev_utts: list[Utterance], data_dir: Path) -> None:
    bad = find_unencodable(tokenizer, dev_utts)
    if bad:
        say(f"warning: {data_dir / 'dev.jsonl'}: characters never seen in training (they count as errors in "
            f"dev WER): {describe_unencodable(bad)}")


def _fit_featurizer(cfg: Config, utts: list[Utterance], progress: bool, skipped: dict[str, str]) -> Featurizer:
    """Mean/variance statistics over the training set (every utterance; it is one cheap pass).
    Unreadable audio is recorded in `skipped` (and said once) instead of stopping the run."""
    featurizer = Featurizer(cfg.features)
    if cfg.features.normalize:
        with Progress("feature statistics", len(utts), enabled=progress) as bar:
            def waves() -> Any:
                for utt in utts:
                    bar.advance(1)
                    try:
                        yield load_audio(utt.audio_filepath, cfg.features.sample_rate)
                    except AudioError as err:
                        say(f"skipping {utt.id}: {err}")
                        skipped[utt.id] = str(err)
            featurizer.fit_stats(waves())
    return featurizer


def _write_lines(path: Path, lines: list[str]) -> None:
    """Rewrite a small text file atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)


def _make_optimizer(cfg: Config, model: ASRModel) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, nesterov=True,
                               weight_decay=t.weight_decay)
    raise AsrkitError(f"unknown train.optimizer {t.optimizer!r}; valid: adamw, sgd")


def _tensorboard(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        say("note: tensorboard is not installed; no TensorBoard scalars will be written")
        return None
    return SummaryWriter(str(log_dir))


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value
