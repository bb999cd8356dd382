"""What a training run settles before its first step, and its experiment folder.

Checks of the train config; EXP made (or found, for --resume) and proven writable; the resumed config compared
with the checkpoint's; training utterances too long for a batch set aside with their reason; the tokenizer and the
feature statistics fitted on the training set (rank 0 alone, handed to the others as plain values); dev text the
tokenizer cannot spell announced. `train.fit` calls these in that order, after `load_data` has read the --data
corpora (one or several folders: the union of their train.jsonl, and of their dev.jsonl). Then how the loop uses
the machine: CPU threads, the optimiser, bf16 autocast, torch.compile of the blocks a model declares, TensorBoard.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from asrkit.average import SELECT_KEYS
from asrkit.config import Config
from asrkit.data.audio import load_utterance
from asrkit.data.features import Featurizer
from asrkit.data.manifest import read_manifest
from asrkit.data.text import NORMALISER_FILE, read_normaliser
from asrkit.data.tokenizer import (
    Tokenizer,
    describe_unencodable,
    find_unencodable,
    tokenizer_from_dict,
    train_tokenizer,
)
from asrkit.errors import AsrkitError, AudioError
from asrkit.io import atomic_write
from asrkit.models.layers import ASRModel
from asrkit.progress import Progress, say
from asrkit.records import Utterance

# Keys that may change when resuming; any other difference from the checkpoint's config is an error.
RESUMABLE_CHANGES = {"epochs", "max_steps", "num_workers", "device", "save_every_steps", "log_every_steps",
                     "max_bad_steps", "accum_steps", "patience", "keep_epochs", "features_on", "compile",
                     "select"}


def check_train_config(cfg: Config) -> None:
    """The train settings a TOML type check cannot catch, named with their valid values."""
    t = cfg.train
    for key, choice, valid in (("features_on", t.features_on, ("auto", "device", "workers")),
                               ("precision", t.precision, ("auto", "bf16", "fp32")),
                               ("select", t.select, tuple(SELECT_KEYS))):
        if choice not in valid:
            raise AsrkitError(f"unknown train.{key} {choice!r}; valid: {', '.join(valid)}")
    for name, value, low in (("accum_steps", t.accum_steps, 1), ("patience", t.patience, 0),
                             ("keep_epochs", t.keep_epochs, 0)):
        if value < low:
            raise AsrkitError(f"train.{name} = {value}: must be {low} or more")
    f = cfg.features
    for name, value in (("freq_masks", f.freq_masks), ("freq_mask_width", f.freq_mask_width),
                        ("time_masks", f.time_masks), ("time_mask_width", f.time_mask_width),
                        ("time_warp", f.time_warp)):
        if value < 0:
            raise AsrkitError(f"features.{name} = {value}: must be 0 (off) or more")


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


def with_normaliser(cfg: Config, folders: Sequence[Path]) -> Config:
    """`cfg` with tokenizer.normaliser set to the text normaliser the --data folders record beside their manifests
    (normaliser.json, written by `asrkit prepare`), so the checkpoints carry it. Folders without a record (manifests
    made by hand) leave the config's; folders that record different ones, or a config that names another, are
    errors."""
    recorded = {folder: name for folder in folders if (name := read_normaliser(folder)) is not None}
    names = set(recorded.values())
    if len(names) > 1:
        each = ", ".join(f"{folder / NORMALISER_FILE}: {name}" for folder, name in recorded.items())
        raise AsrkitError(f"the --data folders' transcripts went through different text normalisers ({each}); a "
                          "model learns one spelling: prepare them with the same normaliser")
    given = cfg.tokenizer.normaliser
    if not names or names == {given}:
        return cfg
    name, folder = names.pop(), next(iter(recorded))
    if given != "default":
        raise AsrkitError(f"tokenizer.normaliser = {given!r}, but {folder / NORMALISER_FILE} records that the "
                          f"transcripts went through {name!r}; leave tokenizer.normaliser out (the data's is "
                          "recorded) or prepare the data again")
    return replace(cfg, tokenizer=replace(cfg.tokenizer, normaliser=name))


@dataclass
class Corpus:
    """One --data folder: its train.jsonl and, when there is one, its dev.jsonl."""

    name: str  # the folder's name; more of its path when two folders share a name
    folder: Path
    train: list[Utterance]
    dev: list[Utterance]


@dataclass
class TrainingData:
    """The --data corpora of a run: the union of their training sets and of their dev sets, ids unique."""

    corpora: list[Corpus]
    train: list[Utterance]
    dev: list[Utterance]
    dev_corpus: dict[str, str]  # dev utterance id -> corpus name (dev WER per corpus)
    sources: list[str]  # the folders, resolved: recorded in the checkpoint, --resume must give the same
    notes: list[str]  # for rank 0 to say once the run starts (the corpora, ids prefixed)

    def manifests(self, split: str) -> str:
        """The split's manifest files, for messages."""
        return ", ".join(str(c.folder / f"{split}.jsonl") for c in self.corpora
                         if split == "train" or c.dev)


def load_data(folders: Sequence[Path]) -> TrainingData:
    """Read every --data folder's train.jsonl (and dev.jsonl when present). When corpora share an utterance id,
    every id (train and dev, of every corpus) is prefixed with its corpus name, `NAME/ID`, and a note says so."""
    if not folders:
        raise AsrkitError("no --data folder given: pass --data DIR (a folder holding train.jsonl)")
    seen: dict[Path, Path] = {}
    for folder in folders:
        if folder.is_file():
            raise AsrkitError(f"--data {folder}: a file; --data takes the folder that holds train.jsonl (and "
                              f"dev.jsonl): --data {folder.parent}")
        if not folder.is_dir():
            raise AsrkitError(f"--data {folder}: folder not found ({folder / 'train.jsonl'}: manifest not found); "
                              "prepare a corpus there with `asrkit prepare ...`")
        if folder.resolve() in seen:
            raise AsrkitError(f"--data {folder}: given twice (also as --data {seen[folder.resolve()]}); give each "
                              "corpus once")
        seen[folder.resolve()] = folder
    corpora = [Corpus(name, folder, read_manifest(folder / "train.jsonl"),
                      read_manifest(folder / "dev.jsonl") if (folder / "dev.jsonl").is_file() else [])
               for name, folder in zip(_corpus_names(folders), folders, strict=True)]
    for c in corpora:
        empty = [u.id for u in c.train if not u.text.strip()]
        if empty:
            raise AsrkitError(f"{c.folder / 'train.jsonl'}: empty transcript in {', '.join(empty[:5])}"
                              f"{' ...' if len(empty) > 5 else ''}; remove these lines or add their text")
    notes = []
    if len(corpora) > 1:
        each = ", ".join(f"{c.name} ({len(c.train)} train, {len(c.dev)} dev)" for c in corpora)
        notes.append(f"training on {len(corpora)} corpora: {each}; {sum(len(c.train) for c in corpora)} train, "
                     f"{sum(len(c.dev) for c in corpora)} dev utterances in all")
    shared = _shared_id(corpora, "train") or _shared_id(corpora, "dev")
    if shared:
        utt_id, first, second, split = shared
        corpora = [replace(c, train=_prefixed(c.name, c.train), dev=_prefixed(c.name, c.dev)) for c in corpora]
        notes.append(f"note: utterance id {utt_id!r} is in both {first.folder / split}.jsonl and "
                     f"{second.folder / split}.jsonl: every utterance id is prefixed with its corpus name "
                     f"({second.name}/{utt_id}); skipped.tsv and messages use these ids")
        still = _shared_id(corpora, "train") or _shared_id(corpora, "dev")
        if still:  # a corpus name with a slash can make NAME/ID ambiguous
            raise AsrkitError(f"utterance id {still[0]!r} is in both {still[1].folder / still[3]}.jsonl and "
                              f"{still[2].folder / still[3]}.jsonl, even prefixed with the corpus name; give "
                              "the lines distinct ids")
    return TrainingData(corpora, [u for c in corpora for u in c.train], [u for c in corpora for u in c.dev],
                        {u.id: c.name for c in corpora for u in c.dev}, [str(f.resolve()) for f in folders], notes)


def _corpus_names(folders: Sequence[Path]) -> list[str]:
    """Each folder's name; folders that share it are named by as much more of their path as tells them apart."""
    parts = [folder.resolve().parts for folder in folders]
    depth = [1] * len(folders)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth, strict=True)]
        clashes = {n for n in names if names.count(n) > 1}
        if not clashes:
            return names
        depth = [d + 1 if n in clashes else d for n, d in zip(names, depth, strict=True)]


def _shared_id(corpora: list[Corpus], split: str) -> tuple[str, Corpus, Corpus, str] | None:
    """The first utterance id of `split` that two corpora share: (id, first corpus, second corpus, split)."""
    owner: dict[str, Corpus] = {}
    for c in corpora:
        for u in c.train if split == "train" else c.dev:
            if u.id in owner:
                return u.id, owner[u.id], c, split
            owner[u.id] = c
    return None


def _prefixed(name: str, utts: list[Utterance]) -> list[Utterance]:
    return [replace(u, id=f"{name}/{u.id}") for u in utts]


def check_resumed_data(state: dict[str, Any], data: TrainingData) -> None:
    """--resume continues on the --data folders the checkpoint was trained on, in the same order (the batches of
    an epoch, and so the position saved in it, depend on them)."""
    saved = state.get("data")
    if saved is None:  # a checkpoint written before the data list was recorded
        return
    if list(saved) != data.sources:
        raise AsrkitError(f"--resume: the checkpoint was trained on --data {' --data '.join(saved)}, but this run "
                          f"has --data {' --data '.join(data.sources)}; resume with the same --data folders in the "
                          "same order, or start a new --exp")


def drop_too_long(utts: list[Utterance], max_duration: float,
                  manifest: Path | str) -> tuple[list[Utterance], dict[str, str]]:
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


def fit_data(cfg: Config, utts: list[Utterance],
             progress: bool) -> tuple[dict[str, Any], tuple[Any, Any], dict[str, str]]:
    """Tokenizer and feature statistics from the training set (rank 0 alone), as plain values to hand out.
    `load_data` has refused empty transcripts."""
    skipped: dict[str, str] = {}
    tokenizer = train_tokenizer(cfg.tokenizer.kind, [u.text for u in utts], cfg.tokenizer.vocab_size)
    featurizer = _fit_featurizer(cfg, utts, progress, skipped)
    return tokenizer.to_dict(), (featurizer.mean, featurizer.std), skipped


def check_dev_text(tokenizer: Tokenizer, data: TrainingData) -> None:
    """Warn (with the utterance ids) about dev characters the tokenizer never saw: they can only be errors."""
    for corpus in data.corpora:
        bad = find_unencodable(tokenizer, corpus.dev)
        if bad:
            say(f"warning: {corpus.folder / 'dev.jsonl'}: characters never seen in training (they count as errors "
                f"in dev WER): {describe_unencodable(bad)}")


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


def set_cpu_threads(device: torch.device, num_workers: int, world: int) -> None:
    """On the CPU, leave a core to each loader worker and share the rest between ranks: OpenMP threads that
    outnumber the cores spin against each other and run several times slower. OMP_NUM_THREADS wins."""
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, ((os.cpu_count() or 1) - num_workers * world) // max(world, 1)))


def make_optimizer(cfg: Config, model: ASRModel) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adamw":  # fused (one kernel for all parameters) when they are all on a GPU
        fused = all(p.is_cuda for p in model.parameters()) or None
        return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=fused)
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, nesterov=True,
                               weight_decay=t.weight_decay)
    raise AsrkitError(f"unknown train.optimizer {t.optimizer!r}; valid: adamw, sgd")


def load_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """The saved optimiser state, keeping this run's implementation choice (fused on a GPU; a checkpoint
    written on a GPU can resume on the CPU and the other way round)."""
    chosen: list[dict[str, Any]] = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, keys in zip(optimizer.param_groups, chosen, strict=True):
        group.update(keys)


def cpu_has_bf16() -> bool:
    """Does this CPU compute in bf16 natively (AVX512-BF16 or AMX)? Without, autocast emulates it."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: assume it can
        return True


def autocast(precision: str, device: torch.device, say_: Callable[[str], None]) -> AbstractContextManager[Any]:
    """train.precision's context for the forward pass: bf16 autocast ("auto": on CUDA only), else nothing."""
    if not (precision == "bf16" or (precision == "auto" and device.type == "cuda")):
        return nullcontext()
    if device.type == "cpu" and not cpu_has_bf16():
        say_("warning: train.precision = bf16 on a CPU without native bf16 (AVX512-BF16 or AMX) is emulated, 10-50x "
             "slower than fp32, and can fail in LSTMs; set train.precision = fp32 (or auto)")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def compile_model(model: ASRModel, device: torch.device, say_: Callable[[str], None]) -> None:
    """train.compile: torch.compile, in place (state_dict keys do not change) and with dynamic shapes, of the blocks
    the model declares (`ASRModel.compile_blocks`), on CUDA."""
    blocks = model.compile_blocks()
    if not blocks:
        say_(f"note: train.compile: this model ({type(model).__name__}) has no blocks to compile; training runs "
             "uncompiled")
    elif device.type != "cuda":  # seen with torch 2.14: a recompilation for nearly every new batch length
        say_("note: train.compile applies on CUDA only (on the CPU, inductor recompiles the convolutions for new "
             "batch lengths); training runs uncompiled")
    else:
        for block in blocks:
            block.compile(dynamic=True)


def tensorboard(log_dir: Path) -> Any:
    """A SummaryWriter into log_dir, or None (with a note) where tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        say("note: tensorboard is not installed; no TensorBoard scalars will be written")
        return None
    return SummaryWriter(str(log_dir))


# The same part under another attribute name in another family: LAS calls its encoder the listener, the CTC
# model calls its CTC output layer the head (the transducer's auxiliary one and LAS's are `ctc`).
ROLES = {"listener": "encoder", "head": "ctc"}


def _role(name: str) -> str:
    head, _, rest = name.partition(".")
    return f"{ROLES.get(head, head)}.{rest}" if rest else name


def init_weights(model: ASRModel, source: Path, tokenizer: Tokenizer | None = None) -> str:
    """Copy into `model` every parameter and buffer of the checkpoint `source` (a file or an experiment folder)
    whose name and shape match, the encoder and CTC head matched by role across families (ROLES): e.g. a CTC
    run's Conformer encoder and CTC layer into a transducer (its auxiliary CTC head) or LAS (its listener) with
    the same [encoder]. Where the model's `tokenizer` differs from the checkpoint's (another corpus's characters),
    the token-indexed layers (model.vocab_layers) get the rows of the tokens both have, by token; the other rows
    stay fresh. The rest keep their fresh initialisation. Returns the line to print; an error when nothing
    matches."""
    from asrkit.checkpoint import read_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(source)
    data = read_checkpoint(path)
    weights = {_role(k): v for k, v in data.get("model", {}).items()}
    own = model.state_dict()
    by_role = {_role(k): k for k in own}
    shared = {by_role[r]: v for r, v in weights.items() if r in by_role}
    by_token, tokens_shared = _rows_by_token(model, own, shared, data.get("tokenizer"), tokenizer)
    shared = {k: v for k, v in shared.items() if k not in by_token}
    same = {k: v for k, v in shared.items() if tuple(own[k].shape) == tuple(v.shape)}
    same.update(by_token)
    other_shape = sorted(k for k in shared if k not in same)
    if not same:
        raise AsrkitError(f"--init {source}: none of its {len(weights)} weight tensors matches this model by name and "
                          f"shape (another family or encoder?); --init copies the weights the two models share, e.g. "
                          f"the encoder of a run with the same [encoder] section")
    model.load_state_dict({**own, **same})
    fresh = sorted(k for k in own if k not in same)
    values = sum(v.numel() for v in same.values())
    total = sum(v.numel() for v in own.values())
    line = (f"initialised {len(same)} of {len(own)} weight tensors ({values:,} of {total:,} values) from {path}"
            + (f"; {len(by_token)} token-indexed tensor(s) copied row by token ({tokens_shared} of "
               f"{own[next(iter(by_token))].shape[0]} tokens in both vocabularies)" if by_token else "")
            + (f"; kept fresh: {_summary(fresh)}" if fresh else ""))
    return line + (f"; not copied, other shape: {_summary(other_shape)}" if other_shape else "")


def _rows_by_token(model: ASRModel, own: dict[str, torch.Tensor], shared: dict[str, torch.Tensor],
                   saved: dict[str, Any] | None, tokenizer: Tokenizer | None) -> tuple[dict[str, torch.Tensor], int]:
    """({name: own-shaped tensor whose rows come from the checkpoint's row of the same token}, tokens in both) for
    the token-indexed tensors of `model`, where the two vocabularies differ; ({}, 0) where they are the same or
    unknown (then rows are copied by position, with the rest)."""
    if tokenizer is None or not saved:
        return {}, 0
    mine, theirs = tokenizer.vocab, tokenizer_from_dict(saved).vocab
    if mine == theirs:
        return {}, 0
    index = {token: i for i, token in enumerate(theirs)}
    pairs = [(i, index[token]) for i, token in enumerate(mine) if token in index]
    rows_mine = torch.tensor([i for i, _ in pairs], dtype=torch.long)
    rows_theirs = torch.tensor([j for _, j in pairs], dtype=torch.long)
    out = {}
    for name, value in shared.items():
        layer = any(name == p or name.startswith(p + ".") for p in model.vocab_layers)
        if not layer or own[name].dim() == 0 or own[name].shape[0] != len(mine) or value.shape[0] != len(theirs) \
                or own[name].shape[1:] != value.shape[1:]:
            continue
        rows = own[name].clone()
        rows[rows_mine] = value[rows_theirs].to(rows.dtype)
        out[name] = rows
    return out, len(pairs)


def _summary(names: list[str], shown: int = 4) -> str:
    """Parameter names grouped by their first component: "joiner (4), predictor (6)"."""
    groups: dict[str, int] = {}
    for name in names:
        head = name.split(".")[0]
        groups[head] = groups.get(head, 0) + 1
    items = [f"{head} ({n})" for head, n in groups.items()]
    return ", ".join(items[:shown]) + (" ..." if len(items) > shown else "")
