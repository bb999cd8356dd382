"""Fetching and unpacking corpus archives: resumable HTTP downloads with checksums, and safe tar extraction.

`download` writes to `<dest>.part`, resumes it with an HTTP Range request after an interruption, verifies
the checksum and only then renames it to `dest`. `safe_extract` refuses archive members that would land
outside the destination folder (absolute paths, `..`, links pointing out, device files).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from asrkit.errors import AsrkitError
from asrkit.progress import say

LIBRISPEECH_URL = "https://www.openslr.org/resources/12"
MINI_LIBRISPEECH_URL = "https://www.openslr.org/resources/31"  # dev-clean-2, train-clean-5 (no MD5 recorded here)
MINI_LIBRISPEECH_SUBSETS = ("dev-clean-2", "train-clean-5")
LIBRISPEECH_URL_ENV = "ASRKIT_LIBRISPEECH_URL"  # overrides LIBRISPEECH_URL (a mirror, or a test server)

# Official archive MD5s, as published in https://www.openslr.org/resources/12/md5sum.txt.
LIBRISPEECH_MD5: dict[str, str | None] = {
    "dev-clean": "42e2234ba48799c1f50f24a7926300a1",
    "dev-other": "c8d0bcc9cca99d4f8b62fcc847357931",
    "test-clean": "32fa31d27d2e1cad72775fee3f4849a9",
    "test-other": "fb5a50374b501bb3bac4815ee91d3135",
    "train-clean-100": "2a93770f6d5c6c964bc36631d331a522",
    "train-clean-360": "c0e676e450a7ff2f54aeade5171606fa",
    "train-other-500": "d1a0fd59409feb2c614ce4d30c387708",
}

_CHUNK = 1 << 20


def librispeech_url(subset: str, base_url: str | None = None) -> str:
    """URL of `<subset>.tar.gz`: `base_url`, else $ASRKIT_LIBRISPEECH_URL, else the official OpenSLR one."""
    official = MINI_LIBRISPEECH_URL if subset in MINI_LIBRISPEECH_SUBSETS else LIBRISPEECH_URL
    base = base_url or os.environ.get(LIBRISPEECH_URL_ENV) or official
    return f"{base.rstrip('/')}/{subset}.tar.gz"


def download(url: str, dest: str | Path, *, sha256: str | None = None, md5: str | None = None,
             progress: bool = True, attempts: int = 3, timeout: float = 60.0) -> Path:
    """Download `url` to `dest`, resuming `<dest>.part` with Range requests; verify sha256 or md5 if given.

    An existing `dest` that matches the checksum (or any existing `dest` when no checksum is given) is kept
    and nothing is fetched. An existing `dest` that does not match is renamed to `<dest>.bad` (never
    deleted) and fetched again. A downloaded file that does not match is removed and `AsrkitError` names
    the expected and actual checksums. Up to `attempts` transfers resume one another before giving up;
    the `.part` file stays so that a rerun resumes too.
    """
    dest = Path(dest)
    if attempts < 1:
        raise AsrkitError(f"attempts {attempts} must be at least 1")
    algo, expected = _checksum_spec(sha256, md5)
    if dest.is_file():
        if expected is None:
            return dest
        actual = file_digest(dest, algo)
        if actual == expected:
            return dest
        aside = _move_aside(dest)
        say(f"{dest}: {algo} {actual} does not match the expected {expected}; moved it to {aside} "
            "and downloading again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _fetch_resuming(url, part, attempts=attempts, progress=progress, timeout=timeout)
    if expected is not None:
        actual = file_digest(part, algo)
        if actual != expected:
            part.unlink()
            raise AsrkitError(f"{url}: {algo} checksum mismatch: expected {expected}, got {actual}; the "
                              "download was discarded. Rerun to fetch it again, or check that the server "
                              f"(for LibriSpeech, the mirror in ${LIBRISPEECH_URL_ENV}) serves the official file")
    os.replace(part, dest)
    return dest


def _fetch_resuming(url: str, part: Path, *, attempts: int, progress: bool, timeout: float) -> None:
    """Up to `attempts` transfers, each resuming the `.part` left by the one before."""
    for attempt in range(1, attempts + 1):
        try:
            _fetch(url, part, progress=progress, timeout=timeout)
            return
        except _Interrupted as err:
            if attempt == attempts:
                raise AsrkitError(f"{url}: download interrupted ({err}) after {attempts} attempt(s); "
                                  f"{part} is kept, rerun to resume") from None
            say(f"{url}: transfer interrupted ({err}); resuming (attempt {attempt + 1} of {attempts})")


def _move_aside(path: Path) -> Path:
    """Rename `path` to `<path>.bad` (or .bad1, .bad2, ... if taken) and return the new name."""
    for n in range(1000):
        aside = path.with_name(f"{path.name}.bad{n or ''}")
        if not aside.exists():
            os.replace(path, aside)
            return aside
    raise AsrkitError(f"{path}: too many {path.name}.bad* files; delete them and rerun")


def file_digest(path: str | Path, algo: str) -> str:
    """Hex digest of a file (`algo` is a hashlib name such as "md5" or "sha256"), read in 1 MiB chunks."""
    digest = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _checksum_spec(sha256: str | None, md5: str | None) -> tuple[str, str | None]:
    if sha256 and md5:
        raise AsrkitError("give sha256 or md5, not both")
    for algo, value, length in (("sha256", sha256, 64), ("md5", md5, 32)):
        if value:
            value = value.strip().lower()
            if len(value) != length or any(c not in "0123456789abcdef" for c in value):
                raise AsrkitError(f"{algo} {value!r} is not a {length}-digit hex checksum")
            return algo, value
    return "sha256", None


class _Interrupted(Exception):
    """A transfer that stopped early; the `.part` file holds what arrived."""


def _fetch(url: str, part: Path, *, progress: bool, timeout: float) -> None:
    """One transfer into `part`, resuming from its current size. Raises _Interrupted on a short read."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "asrkit", "Accept-Encoding": "identity"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have and _total_from_range(err.headers.get("Content-Range")) == have:
            return  # the .part is already complete
        if err.code == 416:
            part.unlink()
            raise _Interrupted("the server refused to resume; starting over") from None
        raise AsrkitError(f"{url}: HTTP {err.code} {err.reason}; check the URL (for LibriSpeech, the mirror "
                          f"in ${LIBRISPEECH_URL_ENV}), or download the file by hand") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise AsrkitError(f"{url}: cannot connect ({reason}); check the network and the URL (for LibriSpeech, "
                          f"the mirror in ${LIBRISPEECH_URL_ENV}), or download the file by hand") from None
    with response:
        resumed = have > 0 and response.status == 206
        if have and not resumed:
            say(f"{url}: the server does not support resuming; starting over")
        length = response.headers.get("Content-Length")
        remaining = int(length) if length is not None else None
        start = have if resumed else 0
        total = start + remaining if remaining is not None else None
        written = _copy(response, part, append=resumed, start=start, total=total, label=url, progress=progress)
    if remaining is not None and written < remaining:
        raise _Interrupted(f"got {start + written:,} of {total:,} bytes")


def _copy(response: object, part: Path, *, append: bool, start: int, total: int | None, label: str,
          progress: bool) -> int:
    """Stream the body into `part`; returns bytes written. A dropped connection is a short count, not a crash."""
    written = 0
    read = response.read  # type: ignore[attr-defined]
    with part.open("ab" if append else "wb") as f, _byte_bar(label, start, total, progress) as advance:
        while True:
            try:
                chunk = read(_CHUNK)
            except (OSError, ValueError, http.client.HTTPException) as err:  # e.g. IncompleteRead, reset
                say(f"{label}: connection lost ({type(err).__name__})")
                break
            if not chunk:
                break
            f.write(chunk)
            written += len(chunk)
            advance(len(chunk))
    return written


def _total_from_range(content_range: str | None) -> int | None:
    """The total size in a `Content-Range: bytes */1234` header, or None."""
    if not content_range or "/" not in content_range:
        return None
    total = content_range.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


@contextmanager
def _byte_bar(label: str, start: int, total: int | None, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich bytes/speed/ETA bar on stderr when it is a terminal; yields `advance(nbytes)`."""
    if not (enabled and sys.stderr.isatty()):
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"downloading {label.rsplit('/', 1)[-1]}", total=total, completed=start)
        yield lambda n: bar.update(task, advance=n)


def safe_extract(tar_path: str | Path, dest: str | Path) -> Path:
    """Extract a tar archive (any compression) into `dest`, refusing anything that would escape it.

    Raises `AsrkitError` naming the member for an absolute path, a `..` component, a symlink or hard link
    pointing outside `dest`, or a device / FIFO entry; members before it may already be extracted (all of
    them inside `dest`). Returns `dest`.
    """
    tar_path, dest = Path(tar_path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            for member in tar:
                _check_member(member, root, tar_path)
                try:
                    tar.extract(member, root, filter="data")
                except tarfile.FilterError as err:
                    raise AsrkitError(f"{tar_path}: refusing archive member {member.name!r} ({err})") from None
    except (tarfile.TarError, EOFError, OSError) as err:
        raise AsrkitError(f"{tar_path}: cannot extract ({err}); if the archive is damaged or incomplete, "
                          "delete it and download it again") from None
    return dest


def _check_member(member: tarfile.TarInfo, root: Path, tar_path: Path) -> None:
    name = member.name
    if _is_absolute(name) or ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise AsrkitError(f"{tar_path}: refusing archive member {name!r}: an absolute path or '..' would "
                          f"leave {root}; the archive is not safe to extract")
    if member.issym() and _outside(member.linkname, root, PurePosixPath(name).parent):
        raise AsrkitError(f"{tar_path}: refusing archive member {name!r}: symlink to {member.linkname!r} "
                          f"points outside {root}")
    if member.islnk() and _outside(member.linkname, root, PurePosixPath(".")):
        raise AsrkitError(f"{tar_path}: refusing archive member {name!r}: hard link to {member.linkname!r} "
                          f"points outside {root}")
    if member.ischr() or member.isblk() or member.isfifo():
        raise AsrkitError(f"{tar_path}: refusing archive member {name!r}: device or FIFO entries are not "
                          "corpus data")


def _is_absolute(name: str) -> bool:
    """An empty name, a POSIX or Windows absolute path, or a drive-letter path (`C:...`)."""
    return (not name or name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute()
            or (len(name) >= 2 and name[1] == ":" and name[0].isalpha()))


def _outside(link: str, root: Path, base: PurePosixPath) -> bool:
    """True if a link target (relative to `base` inside the archive) is absolute or resolves outside `root`."""
    if _is_absolute(link):
        return True
    target = (root / base / link).resolve()
    return target != root and root not in target.parents
