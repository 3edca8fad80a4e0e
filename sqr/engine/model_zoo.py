"""Resolve checkpoint references to local files, downloading them into a cache when needed.

A checkpoint reference (e.g. ``train.init_checkpoint`` in a config) is one of:

* a local path, such as ``/data/ckpt/model_final.pth``: returned unchanged if it exists, otherwise
  :class:`FileNotFoundError`;
* ``sqr://NAME``: an entry of :data:`CHECKPOINTS`, downloaded to ``cache_dir() / entry.filename``
  and verified against ``entry.sha256`` when that is known;
* ``detectron2://PATH``: rewritten to ``DETECTRON2_PREFIX + PATH`` (detectron2's public file
  server; ``$SQR_DETECTRON2_PREFIX`` overrides it) and then handled as an ``https://`` URL;
* ``http://...`` or ``https://...``: downloaded to ``cache_dir() / <host> / <url path>``, so one
  URL always maps to one file. A file already there is returned without any network access.

The cache is ``$SQR_CACHE`` when set, else ``~/.cache/sqr``. Downloads are atomic: the data is
written to a ``.part`` file next to the destination and renamed only once complete and verified,
so an interrupted or failed download never leaves a file that looks like a checkpoint.

Some checkpoints live on Google Drive, which often refuses scripted downloads (a confirmation page
or a quota error). When a download fails, the error names the cache path: download the file by
hand, save it there, and the next ``resolve`` call uses it without touching the network.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

__all__ = [
    "CHECKPOINTS",
    "DETECTRON2_PREFIX",
    "DownloadError",
    "ZooEntry",
    "cache_dir",
    "download",
    "resolve",
]

logger = logging.getLogger(__name__)

#: Public download prefix for ``detectron2://`` references; ``$SQR_DETECTRON2_PREFIX`` wins.
DETECTRON2_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"
#: Seconds to wait for the connection and for each read before giving up.
TIMEOUT = 60.0
#: Read size of the download loop.
CHUNK_SIZE = 1 << 20

_DETREX_RELEASE = "https://github.com/IDEA-Research/detrex-storage/releases/download/v0.1.0/"
_SCHEME_SEP = "://"


class DownloadError(RuntimeError):
    """A download failed; the message names the URL and where to place the file by hand."""


@dataclass(frozen=True)
class ZooEntry:
    """One official checkpoint.

    Attributes:
        url: Direct-download URL.
        sha256: Hex digest of the file, verified after download when not ``None``.
        filename: Path of the file relative to :func:`cache_dir`.
        note: Extra advice shown when the download fails (e.g. for Google Drive files).
    """

    url: str
    sha256: str | None
    filename: str
    note: str = ""


def cache_dir() -> Path:
    """Return the checkpoint cache directory.

    Returns:
        ``$SQR_CACHE`` if set and non-empty, else ``~/.cache/sqr``. The directory is not created.
    """
    env = os.environ.get("SQR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sqr"


def _detectron2_prefix() -> str:
    # Read at call time, not import time, so tests and mirrors can override it late.
    prefix = os.environ.get("SQR_DETECTRON2_PREFIX") or DETECTRON2_PREFIX
    return prefix if prefix.endswith("/") else prefix + "/"


def _url_cache_relpath(url: str) -> Path:
    """Map a URL to a cache-relative path ``<host>/<url path>``, rejecting unsafe paths."""
    parts = urllib.parse.urlsplit(url)
    if not parts.netloc:
        raise ValueError(f"URL {url!r} has no host")
    # ':' (host:port) is not allowed in Windows file names.
    host = parts.netloc.replace(":", "_")
    segments = [urllib.parse.unquote(s) for s in parts.path.split("/") if s]
    if not segments:
        raise ValueError(f"URL {url!r} has no file path; cannot choose a cache file name for it")
    for seg in segments:
        # A crafted URL must not escape the cache directory.
        if seg in (".", "..") or "/" in seg or "\\" in seg:
            raise ValueError(f"URL {url!r} has an unsafe path segment {seg!r}")
    if parts.query:
        # Distinct queries (e.g. Drive's ?id=...) must not share one cache file.
        digest = hashlib.sha256(parts.query.encode()).hexdigest()[:12]
        segments[-1] = f"{segments[-1]}-{digest}"
    return Path(host, *segments)


def _gdrive(file_id: str, fmt: str = "") -> tuple[str, str]:
    url = f"https://drive.google.com/uc?export=download&id={file_id}"
    note = (
        "This file is hosted on Google Drive, which often requires a confirmation step or hits "
        f"a download quota. Open https://drive.google.com/file/d/{file_id} in a browser, download "
        "it, and save it at the cache path given above."
    )
    if fmt:
        note += f" The checkpoint is in {fmt} format."
    return url, note


def _build_table() -> dict[str, ZooEntry]:
    table: dict[str, ZooEntry] = {}
    detrex = {
        "dab_detr_r50_50ep": "dab_detr_r50_50ep.pth",  # detrex, 43.3 AP
        # The original Deformable-DETR weights in detrex names: their neck convolutions have
        # biases, so load them into a model built with model.neck.bias=True.
        "deformable_detr_r50_converted": "converted_deformable_detr_r50.pth",
        "deformable_detr_r50_box_refine_converted": (
            "converted_deformable_detr_r50_with_box_refine_50ep.pth"
        ),
        "deformable_detr_r50_two_stage_converted": "converted_deformable_detr_two_stage_50ep.pth",
    }
    for name, fname in detrex.items():
        table[name] = ZooEntry(url=_DETREX_RELEASE + fname, sha256=None, filename=fname)
    drive = {
        "sqr_dab_detr_r50_50ep": ("1Zz298GPYvDfF1RjSTk1e_ZoBy3NtXxWd", ""),
        "sqr_deformable_detr_r50_50ep": ("1JTWmHXPngUJY7EaYMneVHYYlvK_5GDfV", "mmdet"),
        "sqr_adamixer_r50_1x": ("1-io4kMQ-6h814AMmE7wKKUcEmTjLdpIa", "mmdet"),
        "sqr_adamixer_r101_7stage_300q_3x": ("1alJNY8eJy-E7mURJDj5LZFHNZ6SG88CF", "mmdet"),
    }
    for name, (file_id, fmt) in drive.items():
        url, note = _gdrive(file_id, fmt)
        table[name] = ZooEntry(url=url, sha256=None, filename=f"{name}.pth", note=note)
    for name in ("R-50", "R-101"):
        url = DETECTRON2_PREFIX + f"ImageNetPretrained/torchvision/{name}.pkl"
        # Same cache file as the equivalent detectron2:// reference, so either spelling hits it.
        table[name] = ZooEntry(url=url, sha256=None, filename=_url_cache_relpath(url).as_posix())
    return table


#: Official checkpoints, addressable as ``sqr://NAME``.
CHECKPOINTS: dict[str, ZooEntry] = _build_table()


def _by_hand(url: str, dest: Path) -> str:
    return f"To download it yourself, fetch {url} and save it as {dest}"


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` atomically, optionally verifying its SHA-256.

    The body is streamed into a ``.part`` temporary file in ``dest``'s directory and moved onto
    ``dest`` only after it is complete and verified; on any failure the temporary file is deleted.

    Args:
        url: ``http://`` or ``https://`` URL to fetch.
        dest: Destination file; parent directories are created. An existing file is replaced.
        sha256: Expected hex digest (case-insensitive); ``None`` skips verification.
        progress: Show a tqdm progress bar.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        DownloadError: On HTTP/network errors, a body shorter than its ``Content-Length``, an
            HTML page instead of a file, or a hash mismatch. The message names the URL and
            ``dest``, where the file can be placed by hand.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    hand = _by_hand(url, dest)
    request = urllib.request.Request(url, headers={"User-Agent": "sqr-model-zoo"})
    logger.info("Downloading %s to %s", url, dest)
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        e.close()  # the error carries the open response; release its socket now
        raise DownloadError(f"Download of {url} failed: HTTP {e.code} {e.reason}. {hand}") from e
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"Download of {url} failed: {reason}. {hand}") from e

    with response:
        content_type = response.headers.get("Content-Type", "")
        if content_type.lower().startswith("text/html"):
            # Checkpoints are never HTML: this is a login, confirmation or quota page
            # (Google Drive does this), which must not be cached as a checkpoint.
            raise DownloadError(
                f"Download of {url} returned an HTML page instead of a file "
                f"(likely a confirmation or quota page). {hand}"
            )
        length_header = response.headers.get("Content-Length")
        expected = int(length_header) if length_header and length_header.isdigit() else None

        tmp = tempfile.NamedTemporaryFile(
            dir=dest.parent, prefix=dest.name + ".", suffix=".part", delete=False
        )
        tmp_path = Path(tmp.name)
        try:
            hasher = hashlib.sha256()
            received = 0
            with (
                tmp,
                tqdm(
                    total=expected,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=not progress,
                ) as bar,
            ):
                while True:
                    try:
                        chunk = response.read(CHUNK_SIZE)
                    except (http.client.HTTPException, OSError) as e:
                        raise DownloadError(
                            f"Download of {url} failed after {received} bytes: {e}. {hand}"
                        ) from e
                    if not chunk:
                        break
                    tmp.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if expected is not None and received != expected:
                raise DownloadError(
                    f"Download of {url} is incomplete: got {received} of {expected} bytes. {hand}"
                )
            actual = hasher.hexdigest()
            if sha256 is not None and actual != sha256.lower():
                raise DownloadError(
                    f"SHA-256 mismatch for {url}: expected {sha256.lower()}, got {actual}. {hand}"
                )
            # NamedTemporaryFile creates mode 0600; a shared cache should stay readable.
            os.chmod(tmp_path, 0o644)
            os.replace(tmp_path, dest)
        except BaseException:
            # Includes KeyboardInterrupt: never leave a .part file behind.
            tmp_path.unlink(missing_ok=True)
            raise
    logger.info("Saved %s (%d bytes)", dest, received)
    return dest


def _resolve_url(url: str, progress: bool) -> str:
    dest = cache_dir() / _url_cache_relpath(url)
    if dest.is_file():
        logger.debug("Using cached %s for %s", dest, url)
        return str(dest)
    return str(download(url, dest, progress=progress))


def _resolve_zoo(name: str, progress: bool) -> str:
    entry = CHECKPOINTS.get(name)
    if entry is None:
        known = ", ".join(sorted(CHECKPOINTS))
        raise ValueError(f"Unknown checkpoint 'sqr://{name}'. Known names: {known}")
    dest = cache_dir() / entry.filename
    if dest.is_file():
        # Not re-hashed: a file the user placed by hand is trusted, and hashing GBs is slow.
        logger.debug("Using cached %s for sqr://%s", dest, name)
        return str(dest)
    try:
        return str(download(entry.url, dest, sha256=entry.sha256, progress=progress))
    except DownloadError as e:
        if not entry.note:
            raise
        raise DownloadError(f"{e}\nNote: {entry.note}") from e


def resolve(path_or_url: str, *, progress: bool = True) -> str:
    """Turn a checkpoint reference into a local file path, downloading it if needed.

    See the module docstring for the accepted forms (local path, ``sqr://``, ``detectron2://``,
    ``http(s)://``).

    Args:
        path_or_url: The checkpoint reference.
        progress: Show a progress bar while downloading.

    Returns:
        Path of an existing local file.

    Raises:
        ValueError: Empty reference, unsupported scheme, or unknown ``sqr://`` name (the message
            lists the known names).
        FileNotFoundError: A local path that does not exist.
        DownloadError: The download failed (see :func:`download`).
    """
    if not path_or_url:
        raise ValueError(
            f"Empty checkpoint reference {path_or_url!r}; skip loading instead of resolving it"
        )
    if _SCHEME_SEP not in path_or_url:
        path = os.path.expanduser(path_or_url)
        if not os.path.exists(path):
            raise FileNotFoundError(f"Checkpoint file {path_or_url!r} does not exist")
        return path

    scheme, rest = path_or_url.split(_SCHEME_SEP, 1)
    scheme = scheme.lower()
    if scheme == "sqr":
        return _resolve_zoo(rest, progress)
    if scheme == "detectron2":
        return _resolve_url(_detectron2_prefix() + rest.lstrip("/"), progress)
    if scheme in ("http", "https"):
        return _resolve_url(path_or_url, progress)
    raise ValueError(
        f"Unsupported checkpoint scheme {scheme!r} in {path_or_url!r}; "
        "use a local path, sqr://, detectron2://, http:// or https://"
    )
