"""Downloads into the checkpoint cache: atomic, verified, bounded in time and size.

Every cache file lies inside :func:`cache_dir` (``$SQR_CACHE`` when set, else ``~/.cache/sqr``);
a URL is stored at ``<host>/<url path>`` under it (:func:`url_cache_relpath`), so one URL always
maps to one file, and a host or path that would leave the cache is rejected. Downloads are atomic:
the data is written to a ``.part`` file next to the destination and renamed only once complete and
verified (the byte count against ``Content-Length``, the SHA-256 where known, and the structure of
a zip archive or a ``.pkl`` pickle, which shows a body cut short even when the server announced no
length or a wrong one), so an interrupted or failed download never leaves a file that looks like a
checkpoint. The ``.part`` files of a killed download are removed by the next download into their
directory once they are :data:`STALE_PART_SECONDS` old. A download is bounded in time
(:data:`DEADLINE`) and size (:data:`MAX_BYTES`), and failures to write the cache (read-only
directory, full disk) are reported with the URL, the file and what to do.

Which references name which files (``sqr://NAME``, ``detectron2://``, URLs) is
:mod:`sqr.model_zoo.checkpoints`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import logging
import os
import pickletools
import re
import shlex
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

__all__ = [
    "DownloadError",
    "cache_dir",
    "cache_path",
    "cached_file_advice",
    "download",
    "url_cache_relpath",
]

logger = logging.getLogger(__name__)

#: Seconds to wait for the connection and for each read before giving up.
TIMEOUT = 60.0
#: Seconds allowed for one whole download. TIMEOUT alone does not bound it: each byte a stalled
#: server trickles restarts that timer. Three hours still lets a 4 GiB file arrive at ~400 kB/s.
DEADLINE = 3 * 60 * 60.0
#: Largest body accepted, in bytes. Detection checkpoints are far smaller, so a larger body is a
#: wrong URL or a misbehaving server, and must not fill the disk that holds the cache.
MAX_BYTES = 4 << 30
#: Read size of the download loop.
CHUNK_SIZE = 1 << 20
#: Age in seconds after which a ``.part`` file is taken for the leftover of a killed download. A
#: live download writes to its own at least every :data:`TIMEOUT` seconds, or fails.
STALE_PART_SECONDS = 15 * 60.0

# A plain host (DNS labels or an IPv4 address) or a bracketed IPv6 literal, with an optional
# numeric port. Anything else (".", "..", separators, "user@", "%2e") could name a path outside
# the cache or a surprising directory once used as a directory name.
_HOST_RE = re.compile(r"(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?")


class DownloadError(RuntimeError):
    """A download failed; the message names the URL and where to place the file by hand."""


def cache_dir() -> Path:
    """Return the checkpoint cache directory.

    Returns:
        ``$SQR_CACHE`` if set and non-empty, else ``~/.cache/sqr``. The directory is not created.
    """
    env = os.environ.get("SQR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sqr"


def url_cache_relpath(url: str) -> Path:
    """Map a URL to a cache-relative path ``<host>/<url path>``, rejecting unsafe paths."""
    parts = urllib.parse.urlsplit(url)
    if not parts.netloc:
        raise ValueError(f"URL {url!r} has no host")
    if not _HOST_RE.fullmatch(parts.netloc):
        raise ValueError(
            f"URL {url!r} has an unsupported host {parts.netloc!r}; expected HOST or HOST:PORT"
        )
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


def cache_path(relpath: str | Path, ref: str) -> Path:
    """Join ``relpath`` to :func:`cache_dir`, refusing a result outside it.

    Checked after joining, independently of :func:`url_cache_relpath`, so that no URL or table
    entry (``..`` segments, an absolute filename) can place a file elsewhere.
    """
    root = cache_dir()
    dest = root / relpath
    # Lexical on purpose: symlinks inside the cache are the user's choice, ".." in a name is not.
    normal_root = Path(os.path.normpath(root))
    normal_dest = Path(os.path.normpath(dest))
    if normal_dest == normal_root or not normal_dest.is_relative_to(normal_root):
        raise ValueError(
            f"Checkpoint {ref!r} maps to {normal_dest}, outside the cache directory {root}; "
            f"its cache file name {str(relpath)!r} is unsafe"
        )
    return dest


def cached_file_advice(path: str | os.PathLike) -> str:
    """What to do about a cache file that does not load: the command that removes it.

    Returns:
        ``""`` when ``path`` is not inside :func:`cache_dir`.
    """
    root, real = Path(os.path.realpath(cache_dir())), Path(os.path.realpath(path))
    if real == root or not real.is_relative_to(root):
        return ""
    return (
        f"It is a cached download: remove it (rm {shlex.quote(os.fspath(path))}) and run again "
        "to download it afresh"
    )


def _remove_stale_parts(folder: Path) -> None:
    """Delete the ``.part`` files that downloads killed before their clean-up left in
    ``folder`` (older than :data:`STALE_PART_SECONDS`; younger ones may be live downloads)."""
    too_old = time.time() - STALE_PART_SECONDS
    for part in folder.glob("*.part"):
        with contextlib.suppress(OSError):  # gone already, or not ours to remove
            if part.is_file() and part.stat().st_mtime < too_old:
                part.unlink()
                logger.info("Removed %s, left by an interrupted download", part)


def _check_structure(path: Path, dest: Path) -> str | None:
    """Why the file at ``path`` (to become ``dest``) is not a complete checkpoint, or ``None``.

    A zip archive (``torch.save``'s format) must have its central directory, which comes last;
    a ``.pkl`` file must be a pickle stream that reaches its STOP opcode. Other contents are not
    judged here (loading them names any problem).
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path):
                return None
        except (zipfile.BadZipFile, OSError) as e:
            return f"it is not a whole zip archive ({e})"
    if dest.suffix == ".pkl":
        try:
            with open(path, "rb") as f:
                for _ in pickletools.genops(f):  # reads opcodes only; builds no object
                    pass
        except (ValueError, EOFError) as e:
            return f"it is not a whole pickle stream ({e})"
    return None


def _by_hand(url: str, dest: Path) -> str:
    return f"To download it yourself, fetch {url} and save it as {dest}"


@contextlib.contextmanager
def _local_writes(url: str, dest: Path) -> Iterator[None]:
    """Turn an OSError of the local file system into a DownloadError that says what to do.

    A bare OSError names at most a ``.part`` file, not the URL being saved or the way out.
    """
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            advice = (
                f"Free space on the disk that holds {dest.parent}, or set $SQR_CACHE to a "
                "directory on another disk."
            )
        else:
            advice = f"Make sure {dest.parent} is a writable directory, or set $SQR_CACHE to one."
        raise DownloadError(f"Cannot save the download of {url} to {dest}: {e}. {advice}") from e


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    progress: bool = True,
    deadline: float | None = None,
    max_bytes: int | None = None,
) -> Path:
    """Download ``url`` to ``dest`` atomically, optionally verifying its SHA-256.

    The body is streamed into a ``.part`` temporary file in ``dest``'s directory and moved onto
    ``dest`` only after it is complete and verified; on any failure the temporary file is deleted.

    Args:
        url: ``http://`` or ``https://`` URL to fetch.
        dest: Destination file; parent directories are created. An existing file is replaced.
        sha256: Expected hex digest (case-insensitive); ``None`` skips verification.
        progress: Show a tqdm progress bar.
        deadline: Seconds allowed for the whole download; ``None`` uses :data:`DEADLINE`. It is
            checked between reads, each bounded by :data:`TIMEOUT`, so it can be overrun by up
            to that much.
        max_bytes: Largest body accepted; ``None`` uses :data:`MAX_BYTES`.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``deadline`` or ``max_bytes`` is not positive.
        DownloadError: On HTTP/network errors, a body shorter than its ``Content-Length``, a
            zip archive or ``.pkl`` pickle cut short (whatever the length said), an HTML page
            instead of a file, a hash mismatch, a download that overruns ``deadline``
            or ``max_bytes``, or a failure to write ``dest``'s directory (read-only, full). The
            message names the URL and ``dest``, where the file can be placed by hand.
    """
    # Module constants are read here, not as defaults, so that they can be changed at run time.
    deadline = DEADLINE if deadline is None else deadline
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    if deadline <= 0:
        raise ValueError(f"download of {url}: deadline={deadline} must be positive")
    if max_bytes <= 0:
        raise ValueError(f"download of {url}: max_bytes={max_bytes} must be positive")
    give_up_at = time.monotonic() + deadline
    dest = Path(dest)
    with _local_writes(url, dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(dest.parent)
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
        if expected is not None and expected > max_bytes:
            raise DownloadError(
                f"Download of {url} exceeds the size limit of {max_bytes} bytes: its "
                f"Content-Length is {expected}. {hand}"
            )

        with _local_writes(url, dest):
            tmp = tempfile.NamedTemporaryFile(
                dir=dest.parent, prefix=dest.name + ".", suffix=".part", delete=False
            )
        tmp_path = Path(tmp.name)
        try:
            hasher = hashlib.sha256()
            received = 0
            with (
                # Outermost, so that it also sees the final flush when tmp is closed.
                _local_writes(url, dest),
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
                # Bounded by the deadline and the size limit, or by the body's end.
                while True:
                    try:
                        # read1, not read: read blocks until CHUNK_SIZE bytes or the end of the
                        # body arrive, which a trickling server can delay past any deadline.
                        chunk = response.read1(CHUNK_SIZE)
                    except (http.client.HTTPException, OSError) as e:
                        raise DownloadError(
                            f"Download of {url} failed after {received} bytes: {e}. {hand}"
                        ) from e
                    if time.monotonic() > give_up_at:
                        raise DownloadError(
                            f"Download of {url} did not finish within its deadline of "
                            f"{deadline:g} s; stopped after {received} bytes. {hand}"
                        )
                    if not chunk:
                        break
                    if received + len(chunk) > max_bytes:
                        # Only reachable without a Content-Length, which was checked above.
                        raise DownloadError(
                            f"Download of {url} exceeds the size limit of {max_bytes} bytes; "
                            f"stopped before writing more. {hand}"
                        )
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
            broken = _check_structure(tmp_path, dest)
            if broken is not None:
                # The server announced no length, or one shorter than the file.
                raise DownloadError(
                    f"Download of {url} is incomplete: {received} bytes arrived, but {broken}. "
                    f"{hand}"
                )
            with _local_writes(url, dest):
                # NamedTemporaryFile creates mode 0600; a shared cache should stay readable.
                os.chmod(tmp_path, 0o644)
                os.replace(tmp_path, dest)
        except BaseException:
            # Includes KeyboardInterrupt: never leave a .part file behind.
            tmp_path.unlink(missing_ok=True)
            raise
    logger.info("Saved %s (%d bytes)", dest, received)
    return dest
