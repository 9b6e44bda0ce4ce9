"""Downloads into kd's download cache, and files taken out of downloaded tar archives.

The cache is $KD_DOWNLOADS, default ~/.cache/kd/downloads. A URL's file is kept there under a name made from the
URL, so pairs that share a published archive download it once. A download streams into a temporary file that is
renamed only when complete: an interrupted or failed download leaves nothing, and a cached file is always whole.
Every failure is a FetchError whose text is a short reason (an HTTP status, the network error, a truncated file).
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from kd.errors import KDError, one_line

CHUNK = 1 << 20


class FetchError(KDError):
    """A URL that could not be downloaded or did not hold what was expected; its text is the reason."""


def download_cache() -> Path:
    return Path(os.environ.get("KD_DOWNLOADS", Path.home() / ".cache" / "kd" / "downloads")).expanduser()


def file_name(url: str) -> str:
    """The name of the file a URL names ('' for none)."""
    return url.rstrip("/").rsplit("/", 1)[-1].split("?")[0]


def cached_path(url: str) -> Path:
    """Where `url` is kept in the cache: <first 12 hex digits of the URL's sha256>-<the URL's file name>."""
    return download_cache() / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{file_name(url) or 'download'}"


def fetch(url: str, progress=None) -> Path:
    """The cached copy of `url`, downloading it first when the cache has none (a progress bar shows the bytes)."""
    target = cached_path(url)
    if target.is_file():
        return target
    part = target.with_name(f"{target.name}.part-{os.getpid()}")
    task = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            if progress is not None:
                task = progress.add_task(f"downloading {target.name.split('-', 1)[1]}", total=total, bytes=True)
            received = 0
            while chunk := response.read(CHUNK):
                f.write(chunk)
                received += len(chunk)
                if task is not None:
                    progress.advance(task, len(chunk))
            if total is not None and received != total:
                raise FetchError(f"the connection ended after {received:,} of {total:,} bytes")
        os.replace(part, target)
    except urllib.error.HTTPError as err:
        raise FetchError(f"HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise FetchError(f"no connection: {err.reason}") from None
    except (OSError, http.client.HTTPException, ValueError) as err:  # timeouts, resets, a malformed URL
        raise FetchError(f"{type(err).__name__}: {one_line(err)}") from None
    finally:
        with contextlib.suppress(OSError):  # a cache that cannot hold the part file: the error above says why
            part.unlink(missing_ok=True)
        if task is not None:
            progress.remove_task(task)
    return target


def tar_member(archive: Path, member: str) -> bytes:
    """The bytes of one file of a tar archive (any compression tarfile reads)."""
    try:
        with tarfile.open(archive) as tar:
            try:
                info = tar.getmember(member)
            except KeyError:
                raise FetchError(f"the archive holds no {member}") from None
            handle = tar.extractfile(info)
            if handle is None:
                raise FetchError(f"{member} in the archive is not a file")
            return handle.read()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise FetchError(f"not a readable tar archive ({one_line(err)}); the download may be truncated") from None
