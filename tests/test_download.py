"""download() against a local HTTP server (Range resume, checksums) and safe_extract() on hostile tarballs."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from asrkit.errors import AsrkitError
from asrkit.prepare.download import download as fetch
from asrkit.prepare.download import librispeech_url, safe_extract


class _Server(ThreadingHTTPServer):
    """Serves `payload` at /data.bin; optionally cuts the next transfer short or ignores Range headers."""

    daemon_threads = True

    def __init__(self, payload: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.payload = payload
        self.cut_next = 0  # >0: send only that many body bytes of the next response, then close
        self.ranges_ok = True
        self.requests: list[str | None] = []  # the Range header of each request

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/data.bin"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        srv, rng = self.server, self.headers.get("Range")
        srv.requests.append(rng)
        if self.path != "/data.bin":
            self.send_error(404)
            return
        data, start = srv.payload, 0
        if rng and srv.ranges_ok:
            start = int(rng.split("=", 1)[1].split("-", 1)[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_next:
            body, srv.cut_next = body[:srv.cut_next], 0
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(bytes(range(256)) * 4096)  # 1 MiB
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_download_verifies_md5_and_leaves_no_part_file(server: _Server, tmp_path: Path) -> None:
    dest = fetch(server.url, tmp_path / "data.bin", md5=_md5(server.payload), progress=False)
    assert dest.read_bytes() == server.payload
    assert not (tmp_path / "data.bin.part").exists()
    assert server.requests == [None]


def test_interrupted_transfer_resumes_with_a_range_request(server: _Server, tmp_path: Path) -> None:
    server.cut_next = 300_000
    sha = hashlib.sha256(server.payload).hexdigest()
    dest = fetch(server.url, tmp_path / "data.bin", sha256=sha, progress=False, attempts=2)
    assert dest.read_bytes() == server.payload
    assert server.requests == [None, "bytes=300000-"]


def test_interrupted_download_keeps_part_and_a_rerun_resumes(server: _Server, tmp_path: Path) -> None:
    server.cut_next = 123_456
    with pytest.raises(AsrkitError, match="interrupted.*rerun to resume"):
        fetch(server.url, tmp_path / "data.bin", progress=False, attempts=1)
    part = tmp_path / "data.bin.part"
    assert part.stat().st_size == 123_456 and not (tmp_path / "data.bin").exists()
    fetch(server.url, tmp_path / "data.bin", md5=_md5(server.payload), progress=False)
    assert (tmp_path / "data.bin").read_bytes() == server.payload
    assert server.requests[-1] == "bytes=123456-"


def test_complete_part_file_gets_416_and_is_accepted(server: _Server, tmp_path: Path) -> None:
    (tmp_path / "data.bin.part").write_bytes(server.payload)
    fetch(server.url, tmp_path / "data.bin", md5=_md5(server.payload), progress=False)
    assert (tmp_path / "data.bin").read_bytes() == server.payload


def test_server_without_range_support_starts_over(server: _Server, tmp_path: Path) -> None:
    server.ranges_ok = False
    (tmp_path / "data.bin.part").write_bytes(b"stale bytes")
    fetch(server.url, tmp_path / "data.bin", md5=_md5(server.payload), progress=False)
    assert (tmp_path / "data.bin").read_bytes() == server.payload


def test_wrong_checksum_is_detected_and_the_file_not_used(server: _Server, tmp_path: Path) -> None:
    wrong = "0" * 32
    with pytest.raises(AsrkitError) as err:
        fetch(server.url, tmp_path / "data.bin", md5=wrong, progress=False)
    message = str(err.value)
    assert wrong in message and _md5(server.payload) in message and "mismatch" in message
    assert not (tmp_path / "data.bin").exists() and not (tmp_path / "data.bin.part").exists()


def test_existing_file_with_bad_checksum_is_moved_aside_not_deleted(server: _Server, tmp_path: Path) -> None:
    (tmp_path / "data.bin").write_bytes(b"the user's own file")
    fetch(server.url, tmp_path / "data.bin", md5=_md5(server.payload), progress=False)
    assert (tmp_path / "data.bin").read_bytes() == server.payload
    assert (tmp_path / "data.bin.bad").read_bytes() == b"the user's own file"


def test_existing_file_with_good_checksum_is_not_fetched(server: _Server, tmp_path: Path) -> None:
    (tmp_path / "data.bin").write_bytes(server.payload)
    fetch(server.url, tmp_path / "data.bin", md5=_md5(server.payload), progress=False)
    assert server.requests == []


def test_http_error_names_the_url_and_status(server: _Server, tmp_path: Path) -> None:
    missing = server.url.replace("data.bin", "nope.tar.gz")
    with pytest.raises(AsrkitError, match=r"nope\.tar\.gz: HTTP 404"):
        fetch(missing, tmp_path / "nope.tar.gz", progress=False)


def test_unreachable_server_says_how_to_fix(tmp_path: Path) -> None:
    srv = _Server(b"")
    url = srv.url
    srv.server_close()  # nothing listens on that port any more
    with pytest.raises(AsrkitError, match="cannot connect.*download the file by hand"):
        fetch(url, tmp_path / "x", progress=False, timeout=5)
    assert not (tmp_path / "x").exists()


def test_malformed_checksum_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AsrkitError, match="32-digit hex"):
        fetch("http://127.0.0.1:9/x", tmp_path / "x", md5="abc")


def test_librispeech_url_base_is_overridable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASRKIT_LIBRISPEECH_URL", raising=False)
    assert librispeech_url("dev-clean") == "https://www.openslr.org/resources/12/dev-clean.tar.gz"
    monkeypatch.setenv("ASRKIT_LIBRISPEECH_URL", "http://127.0.0.1:8000/mirror/")
    assert librispeech_url("dev-clean") == "http://127.0.0.1:8000/mirror/dev-clean.tar.gz"
    assert librispeech_url("dev-clean", "http://h/x") == "http://h/x/dev-clean.tar.gz"


# --- safe_extract -----------------------------------------------------------------------------------------


def _tar(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            data = b"payload" if info.isfile() else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def test_safe_extract_extracts_a_normal_archive(tmp_path: Path) -> None:
    tar = _tar(tmp_path / "ok.tar.gz", [_file("LibriSpeech/a/b.txt"), _link("LibriSpeech/a/c.txt", "b.txt"),
                                        _link("LibriSpeech/x/up.txt", "../a/b.txt")])
    out = safe_extract(tar, tmp_path / "out")
    assert (out / "LibriSpeech" / "a" / "b.txt").read_bytes() == b"payload"
    assert (out / "LibriSpeech" / "x" / "up.txt").read_bytes() == b"payload"


@pytest.mark.parametrize("member", ["../evil.txt", "LibriSpeech/../../evil.txt", "ABSOLUTE"])
def test_safe_extract_refuses_path_traversal(tmp_path: Path, member: str) -> None:
    if member == "ABSOLUTE":
        member = str(tmp_path / "evil.txt")
    tar = _tar(tmp_path / "bad.tar.gz", [_file("LibriSpeech/ok.txt"), _file(member)])
    with pytest.raises(AsrkitError, match="refusing archive member") as err:
        safe_extract(tar, tmp_path / "deep" / "out")
    assert member in str(err.value)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep" / "evil.txt").exists()


@pytest.mark.parametrize("member", [_link("a/link", "/etc/passwd"), _link("a/link", "../../outside"),
                                    _link("a/hard", "../outside", tarfile.LNKTYPE)])
def test_safe_extract_refuses_links_pointing_outside(tmp_path: Path, member: tarfile.TarInfo) -> None:
    tar = _tar(tmp_path / "bad.tar.gz", [member])
    with pytest.raises(AsrkitError, match=r"refusing archive member 'a/(link|hard)'.*points outside"):
        safe_extract(tar, tmp_path / "out")
    assert not (tmp_path / "out" / "a" / "link").is_symlink()


def test_safe_extract_reports_a_truncated_archive(tmp_path: Path) -> None:
    tar = _tar(tmp_path / "ok.tar.gz", [_file(f"f{i}.txt") for i in range(50)])
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(tar.read_bytes()[:100])
    with pytest.raises(AsrkitError, match="cannot extract.*download it again"):
        safe_extract(cut, tmp_path / "out")
