"""What a training run settles before its first step, and its experiment folder.

Checks of the train config; EXP made (or found, for --resume) and proven writable; the resumed config compared
with the checkpoint's; training utterances too long for a batch set aside with their reason; the tokenizer and the
feature statistics fitted on the training set (rank 0 alone, handed to the others as plain values); dev text the
tokenizer cannot spell announced. `train.fit` calls these in that order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asrkit.config import Config
from asrkit.data.audio import load_utterance
from asrkit.data.features import Featurizer
from asrkit.data.tokenizer import Tokenizer, describe_unencodable, find_unencodable, train_tokenizer
from asrkit.errors import AsrkitError, AudioError
from asrkit.io import atomic_write
from asrkit.progress import Progress, say
from asrkit.records import Utterance

# Keys that may change when resuming; any other difference from the checkpoint's config is an error.
RESUMABLE_CHANGES = {"epochs", "max_steps", "num_workers", "device", "save_every_steps", "log_every_steps",
                     "max_bad_steps", "accum_steps", "patience", "keep_epochs", "features_on", "compile"}


def check_train_config(cfg: Config) -> None:
    """The train settings a TOML type check cannot catch, named with their valid values."""
    t = cfg.train
    for key, choice, valid in (("features_on", t.features_on, ("auto", "device", "workers")),
                               ("precision", t.precision, ("auto", "bf16", "fp32"))):
        if choice not in valid:
            raise AsrkitError(f"unknown train.{key} {choice!r}; valid: {', '.join(valid)}")
    for name, value, low in (("accum_steps", t.accum_steps, 1), ("patience", t.patience, 0),
                             ("keep_epochs", t.keep_epochs, 0)):
        if value < low:
            raise AsrkitError(f"train.{name} = {value}: must be {low} or more")


def prepare_exp_dir(exp_dir: Path, resume: bool) -> None:
    """EXP created and proven writable; a new run refuses a trained EXP, --resume needs its last.pt."""
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


def last_checkpoint(exp_dir: Path, rank: int) -> Path:
    """EXP/last.pt as this rank sees it."""
    path = exp_dir / "last.pt"
    if not path.is_file():  # rank 0 has it (checked): this rank runs on another node
        raise AsrkitError(f"--resume: rank {rank} does not see {path}; with several nodes, EXP must be on storage "
                          "that every node mounts at the same path")
    return path


def resumed_config(saved: Config, given: Config) -> Config:
    """The config to resume with: `given`, if it differs from the checkpoint's only in RESUMABLE_CHANGES."""
    old, new = saved.to_dict(), given.to_dict()
    diffs = [f"{s}.{k}" for s in old for k in old[s] if old[s][k] != new[s][k]
             and not (s == "train" and k in RESUMABLE_CHANGES)]
    if diffs:
        raise AsrkitError(f"--resume: config differs from the checkpoint's in {', '.join(diffs)}; resume with the "
                          "same config or start a new --exp")
    return given


def drop_too_long(utts: list[Utterance], max_duration: float,
                  manifest: Path) -> tuple[list[Utterance], dict[str, str]]:
    """The utterances no longer than `max_duration` seconds (0: all), and {id: reason} for the others: one
    hour of audio in a batch would exhaust memory rather than teach the model anything."""
    if max_duration < 0:
        raise AsrkitError(f"train.max_duration = {max_duration}: must be 0 (no limit) or more seconds")
    if not max_duration:
        return utts, {}
    kept = [u for u in utts if u.duration <= max_duration]
    too_long = {u.id: f"{u.duration:.1f} s is longer than train.max_duration = {max_duration:g} s; cut the "
                      "recording into shorter utterances or raise train.max_duration" for u in utts
                if u.duration > max_duration}
    if not kept:
        raise AsrkitError(f"{manifest}: all {len(utts)} utterance(s) are longer than train.max_duration = "
                          f"{max_duration:g} s; raise train.max_duration (0: no limit) or cut the audio shorter")
    return kept, too_long


def fit_data(cfg: Config, utts: list[Utterance], data_dir: Path,
             progress: bool) -> tuple[dict[str, Any], tuple[Any, Any], dict[str, str]]:
    """Tokenizer and feature statistics from the training set (rank 0 alone), as plain values to hand out."""
    skipped: dict[str, str] = {}
    tokenizer = _tokenizer(cfg, utts, data_dir)
    featurizer = _fit_featurizer(cfg, utts, progress, skipped)
    return tokenizer.to_dict(), (featurizer.mean, featurizer.std), skipped


def _tokenizer(cfg: Config, utts: list[Utterance], data_dir: Path) -> Tokenizer:
    empty = [u.id for u in utts if not u.text.strip()]
    if empty:
        raise AsrkitError(f"{data_dir / 'train.jsonl'}: empty transcript in {', '.join(empty[:5])}"
                          f"{' ...' if len(empty) > 5 else ''}; remove these lines or add their text")
    return train_tokenizer(cfg.tokenizer.kind, [u.text for u in utts], cfg.tokenizer.vocab_size)


def check_dev_text(tokenizer: Tokenizer, dev_utts: list[Utterance], data_dir: Path) -> None:
    """Warn (with the utterance ids) about dev characters the tokenizer never saw: they can only be errors."""
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
                        yield load_utterance(utt, cfg.features.sample_rate)
                    except AudioError as err:
                        say(f"skipping {utt.id}: {err}")
                        skipped[utt.id] = str(err)
            featurizer.fit_stats(waves())
    return featurizer


def write_lines(path: Path, lines: list[str]) -> None:
    """Rewrite a small text file atomically (`atomic_write`: temp file + fsync + rename)."""
    atomic_write(path, "".join(line + "\n" for line in lines))
