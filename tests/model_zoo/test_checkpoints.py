"""Checkpoint references and downloads of :mod:`sqr.model_zoo`, served on 127.0.0.1."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import re
import shlex
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO

import numpy as np
import pytest
import torch

from sqr import model_zoo
from sqr.engine.checkpoint import CheckpointFileError, load_checkpoint_file
from sqr.model_zoo import DownloadError, ZooEntry, checkpoints, downloads

PAYLOAD = os.urandom(200_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def _torch_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.arange(20_000, dtype=torch.float32)}}, buffer)
    return buffer.getvalue()


#: Real checkpoints, served under /full/, /short/ and /cut/ (see _Handler).
CHECKPOINT_BYTES = {
    ".pth": _torch_bytes(),  # a zip archive
    ".pkl": pickle.dumps({"model": {"w": np.arange(20_000, dtype=np.float32)}}, protocol=2),
}
#: /trickle.bin sends this many bytes, one every TRICKLE_GAP seconds (3 s in all), so that
#: the server thread always ends by itself even if the client never hangs up.
TRICKLE_BYTES = 30
TRICKLE_GAP = 0.1


@dataclass
class Server:
    base: str
    httpd: ThreadingHTTPServer
    requests: list[str] = field(default_factory=list)

    def stop(self) -> None:
        """Stop serving and close the socket; idempotent."""
        if self.httpd.socket.fileno() != -1:
            self.httpd.shutdown()
            self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    requests: list[str]  # set per server on a subclass

    def do_GET(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
        self.requests.append(self.path)
        path = self.path.split("?", 1)[0]
        if path.startswith(("/full/", "/short/", "/cut/")):
            # A real checkpoint; /short/ announces a Content-Length 1000 bytes below its size
            # (the client stops there), /cut/ sends no Content-Length and closes half-way.
            body = CHECKPOINT_BYTES[os.path.splitext(path)[1]]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            if not path.startswith("/cut/"):
                short = 1000 if path.startswith("/short/") else 0
                self.send_header("Content-Length", str(len(body) - short))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if path.startswith("/cut/") else body)
            self.close_connection = True
        elif path.endswith("/truncated.bin"):
            # Promise more bytes than are sent, then drop the connection.
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:1000])
            self.wfile.flush()
            self.close_connection = True
        elif path.endswith("/trickle.bin"):
            # Each byte resets a per-read socket timeout, so only an overall deadline stops this.
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(TRICKLE_BYTES))
            self.end_headers()
            for _ in range(TRICKLE_BYTES):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:  # the client gave up and closed the connection
                    return
                time.sleep(TRICKLE_GAP)
        elif path.endswith("/nolength.bin"):
            # No Content-Length: the body ends when the connection closes (HTTP/1.0).
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif path.endswith("/page.html"):
            self._send(b"<html>confirm download</html>", "text/html; charset=utf-8")
        elif path.endswith(".pkl"):  # checked as a pickle stream: random bytes would fail
            self._send(CHECKPOINT_BYTES[".pkl"], "application/octet-stream")
        elif path.endswith(".bin") or path.endswith("/uc"):
            self._send(PAYLOAD, "application/octet-stream")
        else:
            self.send_error(404, "Not Found")

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output quiet
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    host, port = httpd.server_address[:2]
    srv = Server(base=f"http://{host}:{port}", httpd=httpd, requests=requests)
    try:
        yield srv
    finally:
        srv.stop()
        thread.join(timeout=5)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("SQR_CACHE", str(root))
    monkeypatch.delenv("SQR_DETECTRON2_PREFIX", raising=False)
    return root


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_cache_dir_env(cache: Path) -> None:
    assert model_zoo.cache_dir() == cache


def test_cache_dir_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SQR_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert model_zoo.cache_dir() == tmp_path / ".cache" / "sqr"


def test_download_success_with_sha(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "a" / "b" / "file.bin"
    out = model_zoo.download(
        f"{server.base}/file.bin", dest, sha256=PAYLOAD_SHA.upper(), progress=False
    )
    assert out == dest
    assert dest.read_bytes() == PAYLOAD
    assert _files(tmp_path) == [dest]


def test_resolve_url_downloads_then_uses_cache(server: Server, cache: Path) -> None:
    url = f"{server.base}/models/file.bin"
    first = model_zoo.resolve(url, progress=False)
    assert Path(first).read_bytes() == PAYLOAD
    port = server.base.rsplit(":", 1)[1]
    assert Path(first) == cache / f"127.0.0.1_{port}" / "models" / "file.bin"
    assert server.requests == ["/models/file.bin"]

    second = model_zoo.resolve(url, progress=False)
    assert second == first
    assert server.requests == ["/models/file.bin"]  # no new request


def test_cached_file_needs_no_server(server: Server, cache: Path) -> None:
    url = f"{server.base}/file.bin"
    first = model_zoo.resolve(url, progress=False)
    server.stop()
    # With the server gone any network access would fail, so success proves a cache hit.
    assert model_zoo.resolve(url, progress=False) == first
    assert Path(first).read_bytes() == PAYLOAD


def test_sha_mismatch(server: Server, cache: Path) -> None:
    wrong = "0" * 64
    dest = cache / "x" / "file.bin"
    with pytest.raises(DownloadError) as info:
        model_zoo.download(f"{server.base}/file.bin", dest, sha256=wrong, progress=False)
    msg = str(info.value)
    assert wrong in msg and PAYLOAD_SHA in msg and str(dest) in msg
    assert _files(cache) == []


def test_http_404(server: Server, cache: Path) -> None:
    url = f"{server.base}/missing.pth"
    with pytest.raises(DownloadError, match="404") as info:
        model_zoo.resolve(url, progress=False)
    assert url in str(info.value)
    assert _files(cache) == []


def test_truncated_body(server: Server, cache: Path) -> None:
    url = f"{server.base}/truncated.bin"
    with pytest.raises(DownloadError, match="incomplete") as info:
        model_zoo.resolve(url, progress=False)
    assert f"1000 of {len(PAYLOAD)}" in str(info.value)
    assert _files(cache) == []


def test_html_page_rejected(server: Server, cache: Path) -> None:
    with pytest.raises(DownloadError, match="HTML"):
        model_zoo.resolve(f"{server.base}/page.html", progress=False)
    assert _files(cache) == []


def test_connection_refused(cache: Path) -> None:
    with pytest.raises(DownloadError, match="127.0.0.1:9"):
        model_zoo.resolve("http://127.0.0.1:9/nothing.bin", progress=False)
    assert _files(cache) == []


def test_sqr_scheme_uses_table(
    server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = ZooEntry(
        url=f"{server.base}/zoo/model.bin", sha256=PAYLOAD_SHA, filename="zoo/my_model.pth"
    )
    monkeypatch.setitem(model_zoo.CHECKPOINTS, "my_model", entry)
    out = model_zoo.resolve("sqr://my_model", progress=False)
    assert Path(out) == cache / "zoo" / "my_model.pth"
    assert Path(out).read_bytes() == PAYLOAD
    assert model_zoo.resolve("sqr://my_model", progress=False) == out
    assert server.requests == ["/zoo/model.bin"]


def test_sqr_scheme_failure_includes_note(
    server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = ZooEntry(
        url=f"{server.base}/zoo/model.bin",
        sha256="f" * 64,
        filename="bad.pth",
        note="put it there by hand",
    )
    monkeypatch.setitem(model_zoo.CHECKPOINTS, "bad", entry)
    with pytest.raises(DownloadError, match="put it there by hand") as info:
        model_zoo.resolve("sqr://bad", progress=False)
    assert str(cache / "bad.pth") in str(info.value)
    assert _files(cache) == []


def test_sqr_unknown_name_lists_known() -> None:
    with pytest.raises((KeyError, ValueError)) as info:
        model_zoo.resolve("sqr://no_such_model")
    msg = str(info.value)
    assert "no_such_model" in msg
    for name in ("dab_detr_r50_50ep", "R-50", "sqr_adamixer_r50_1x"):
        assert name in msg


def test_detectron2_prefix_override(
    server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "DETECTRON2_PREFIX", f"{server.base}/d2/")
    out = model_zoo.resolve("detectron2://ImageNetPretrained/torchvision/R-50.pkl", progress=False)
    assert Path(out).read_bytes() == CHECKPOINT_BYTES[".pkl"]
    assert server.requests == ["/d2/ImageNetPretrained/torchvision/R-50.pkl"]

    monkeypatch.setenv("SQR_DETECTRON2_PREFIX", f"{server.base}/env")  # no trailing slash
    model_zoo.resolve("detectron2://x/R-101.pkl", progress=False)
    assert server.requests[-1] == "/env/x/R-101.pkl"


def test_detectron2_default_prefix_maps_like_table(cache: Path) -> None:
    # sqr://R-50 and the detectron2:// spelling must share one cache file: pre-place it by hand.
    entry = model_zoo.CHECKPOINTS["R-50"]
    assert entry.url == (
        "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/torchvision/R-50.pkl"
    )
    target = cache / entry.filename
    target.parent.mkdir(parents=True)
    target.write_bytes(b"weights")
    assert model_zoo.resolve("sqr://R-50") == str(target)
    assert model_zoo.resolve("detectron2://ImageNetPretrained/torchvision/R-50.pkl") == str(target)


def test_checkpoint_table() -> None:
    table = model_zoo.CHECKPOINTS
    assert table["dab_detr_r50_50ep"].url.endswith("/v0.1.0/dab_detr_r50_50ep.pth")
    drive = table["sqr_dab_detr_r50_50ep"]
    assert drive.url.endswith("id=1Zz298GPYvDfF1RjSTk1e_ZoBy3NtXxWd") and drive.note
    assert "mmdet" in table["sqr_adamixer_r101_7stage_300q_3x"].note
    assert all(e.sha256 is None for e in table.values())
    assert len({e.filename for e in table.values()}) == len(table)


def test_local_paths(tmp_path: Path) -> None:
    existing = tmp_path / "model.pth"
    existing.write_bytes(b"x")
    assert model_zoo.resolve(str(existing)) == str(existing)
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        model_zoo.resolve(str(missing))


@pytest.mark.parametrize("bad", ["", None])
def test_empty_reference(bad: str | None) -> None:
    with pytest.raises(ValueError):
        model_zoo.resolve(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "ref", ["ftp://host/file.pth", "http://host/", "http://host/../etc/passwd"]
)
def test_bad_urls(ref: str, cache: Path) -> None:
    with pytest.raises(ValueError):
        model_zoo.resolve(ref, progress=False)


def _parts(root: Path) -> list[Path]:
    return sorted(root.rglob("*.part"))


@pytest.mark.parametrize("name", ["model.pth", "R-50.pkl"])
def test_complete_checkpoints_are_cached(name: str, server: Server, cache: Path) -> None:
    out = model_zoo.resolve(f"{server.base}/full/{name}", progress=False)
    assert Path(out).read_bytes() == CHECKPOINT_BYTES[os.path.splitext(name)[1]]
    assert load_checkpoint_file(out)["model"]["w"][-1] == 19_999


@pytest.mark.parametrize("how", ["short", "cut"])
@pytest.mark.parametrize("name", ["model.pth", "R-50.pkl"])
def test_a_checkpoint_cut_short_is_not_cached(
    how: str, name: str, server: Server, cache: Path
) -> None:
    # The byte count matches what the server announced (or it announced nothing): only the
    # file's own structure shows that it is incomplete.
    url = f"{server.base}/{how}/{name}"
    for attempt in (1, 2):  # nothing is cached, so a retry downloads again
        with pytest.raises(DownloadError, match="incomplete") as info:
            model_zoo.resolve(url, progress=False)
        assert url in str(info.value)
        assert _files(cache) == []
        assert server.requests == [f"/{how}/{name}"] * attempt


def test_stale_part_files_are_removed_by_the_next_download(server: Server, cache: Path) -> None:
    port = server.base.rsplit(":", 1)[1]
    folder = cache / f"127.0.0.1_{port}"
    folder.mkdir(parents=True)
    stale, live = folder / "other.pth.k9x2.part", folder / "file.bin.a1b2.part"
    stale.write_bytes(b"left by a kill -9")
    live.write_bytes(b"another process is writing this one")
    old = time.time() - downloads.STALE_PART_SECONDS - 60
    os.utime(stale, (old, old))
    model_zoo.resolve(f"{server.base}/file.bin", progress=False)
    assert not stale.exists()
    assert live.exists()


def test_a_cached_file_that_fails_to_load_says_how_to_remove_it(
    server: Server, cache: Path
) -> None:
    url = f"{server.base}/full/model.pth"
    path = Path(model_zoo.resolve(url, progress=False))
    path.write_bytes(CHECKPOINT_BYTES[".pth"][:30_000])  # damaged after the download
    with pytest.raises(CheckpointFileError, match="truncated or corrupt") as info:
        load_checkpoint_file(model_zoo.resolve(url, progress=False))
    assert f"rm {shlex.quote(str(path))}" in str(info.value)


def test_deadline_stops_trickling_server(server: Server, cache: Path) -> None:
    url = f"{server.base}/trickle.bin"
    dest = cache / "trickle.bin"
    start = time.monotonic()
    with pytest.raises(DownloadError, match="deadline") as info:
        model_zoo.download(url, dest, deadline=0.5, progress=False)
    # 0.5 s deadline plus at most one 0.1 s gap between bytes; the whole trickle takes 3 s.
    assert time.monotonic() - start < 2.0
    msg = str(info.value)
    assert url in msg and str(dest) in msg
    got = re.search(r"after (\d+) bytes", msg)
    assert got is not None and 0 < int(got.group(1)) < TRICKLE_BYTES
    assert _files(cache) == []


def test_deadline_constant_applies_to_resolve(
    server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downloads, "DEADLINE", 0.3)
    start = time.monotonic()
    with pytest.raises(DownloadError, match="deadline"):
        model_zoo.resolve(f"{server.base}/trickle.bin", progress=False)
    assert time.monotonic() - start < 2.0
    assert _files(cache) == []


@pytest.mark.parametrize("name", ["file.bin", "nolength.bin"])
def test_size_limit_rejects_larger_body(name: str, server: Server, cache: Path) -> None:
    # file.bin announces its size (refused before reading); nolength.bin is cut off mid-stream.
    url = f"{server.base}/{name}"
    dest = cache / name
    limit = len(PAYLOAD) - 1
    with pytest.raises(DownloadError, match="size limit") as info:
        model_zoo.download(url, dest, max_bytes=limit, progress=False)
    msg = str(info.value)
    assert url in msg and f"{limit} bytes" in msg and str(dest) in msg
    assert _files(cache) == []


@pytest.mark.parametrize("name", ["file.bin", "nolength.bin"])
def test_size_limit_allows_exact_size(name: str, server: Server, cache: Path) -> None:
    dest = cache / name
    model_zoo.download(f"{server.base}/{name}", dest, max_bytes=len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize(("kwarg", "value"), [("deadline", 0.0), ("max_bytes", -1)])
def test_download_rejects_nonpositive_limits(
    kwarg: str, value: float, server: Server, cache: Path
) -> None:
    with pytest.raises(ValueError, match=f"{kwarg}={value}"):
        model_zoo.download(f"{server.base}/file.bin", cache / "f.bin", **{kwarg: value})
    assert server.requests == []


@pytest.mark.parametrize(
    "ref",
    [
        "http://../x.pth",
        "http://./x.pth",
        "http://..:80/x.pth",
        "http://a\\..\\..\\x/x.pth",
        "http://user:secret@host/x.pth",
        "http://host:port/x.pth",
        "http://%2e%2e/x.pth",
    ],
)
def test_unsafe_host_rejected(ref: str, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(url: str, dest: Path, **kwargs: object) -> Path:
        raise AssertionError(f"would download {url} to {dest}")

    monkeypatch.setattr(checkpoints, "download", no_download)
    with pytest.raises(ValueError) as info:
        model_zoo.resolve(ref, progress=False)
    assert repr(ref) in str(info.value)  # URLs are quoted with repr, as elsewhere in the module


@pytest.mark.parametrize("filename", ["../escape.pth", "sub/../../escape.pth", "ABSOLUTE"])
def test_cache_path_stays_inside_cache(
    filename: str, server: Server, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Defence in depth: even a table entry must not place a file outside the cache.
    if filename == "ABSOLUTE":
        filename = str(tmp_path / "escape.pth")
    entry = ZooEntry(url=f"{server.base}/zoo/model.bin", sha256=None, filename=filename)
    monkeypatch.setitem(model_zoo.CHECKPOINTS, "escape", entry)
    with pytest.raises(ValueError, match="outside the cache") as info:
        model_zoo.resolve("sqr://escape", progress=False)
    assert filename in str(info.value)
    assert _files(tmp_path) == []
    assert server.requests == []


class _FullDisk:
    """A real ``.part`` file whose every write fails as on a full disk."""

    def __init__(self, real: IO[bytes]) -> None:
        self._real = real
        self.name = real.name

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._real.close()


@pytest.mark.parametrize("fault", ["mkdir", "create", "write", "rename"])
def test_local_write_errors_name_url_and_file(
    fault: str, server: Server, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{server.base}/file.bin"
    port = server.base.rsplit(":", 1)[1]
    dest = cache / f"127.0.0.1_{port}" / "file.bin"
    # Tests run as root, where a chmod 0o500 directory stays writable, so faults are injected.
    real_tempfile = tempfile.NamedTemporaryFile
    if fault == "mkdir":
        # $SQR_CACHE points at a file, so the host directory cannot be created.
        cache.write_bytes(b"not a directory")
        advice = "SQR_CACHE"
    elif fault == "create":

        def read_only(*args: object, **kwargs: object) -> None:
            raise OSError(errno.EROFS, "Read-only file system", str(kwargs["dir"]))

        monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
        advice = "SQR_CACHE"
    elif fault == "write":

        def full_disk(*args: object, **kwargs: object) -> _FullDisk:
            return _FullDisk(real_tempfile(*args, **kwargs))  # type: ignore[arg-type]

        monkeypatch.setattr(tempfile, "NamedTemporaryFile", full_disk)
        advice = "Free space"
    else:
        # A directory in the way of the final rename; the whole body was already written.
        dest.mkdir(parents=True)
        advice = "SQR_CACHE"
    with pytest.raises(DownloadError) as info:
        model_zoo.resolve(url, progress=False)
    msg = str(info.value)
    assert url in msg and str(dest) in msg and advice in msg
    assert _parts(tmp_path) == []
    assert not dest.is_file()
