"""HTTP downloads that can be trusted: resumable, checked, atomic; plain ``urllib``.

Used for the ImageNet encoder weights (``models/weights.py``) and the benchmark datasets
(``data/download.py``). A download goes to ``<destination>.part``; an interrupted one (lost
connection, Ctrl-C, killed process) is continued from where it stopped with an HTTP ``Range``
request, by the same call (a few retries) or a later one. A server that is busy or failing
(HTTP 408, 429, 500, 502, 503, 504) is asked again after a pause (its ``Retry-After``, at most
:data:`MAX_RETRY_AFTER` seconds, or an exponential backoff); any other HTTP error (404, 403...)
fails at once. Only a complete file whose size and
SHA-256 match what is known about it is renamed to ``destination``; a wrong file is deleted.
"""

from __future__ import annotations

import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from minimaxad.files import sha256_of

CHUNK = 1 << 20
USER_AGENT = "minimaxad-downloader"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})  # busy or failing for now: worth asking again
MAX_RETRY_AFTER = 30.0  # seconds: the longest Retry-After honoured (a longer one is cut to this)


class DownloadError(RuntimeError):
    """A download failed, or its file was not the expected one."""


@dataclass(frozen=True)
class Downloaded:
    """What :func:`download_file` returns: the file, its SHA-256 (hex), size, and whether it was fetched now."""

    path: Path
    sha256: str
    size: int
    fetched: bool  # False: the file was already there


def _check(path: Path, size: int | None, sha256: str | None, url: str) -> str:
    """The file's SHA-256 after checking its size and hash against the known ones."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise DownloadError(f"{url}: got {actual_size} bytes, expected {size}")
    digest = sha256_of(path)
    if sha256 is not None and digest != sha256.lower():
        raise DownloadError(
            f"{url}: SHA-256 of the downloaded file is {digest}, expected {sha256}: the file "
            f"is damaged or the server sent another one"
        )
    return digest


def download_file(
    url: str,
    destination: Path,
    *,
    size: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
    retries: int = 3,
    description: str | None = None,
    echo: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Downloaded:
    """Download ``url`` to ``destination`` (kept if it is already there and matches).

    ``size`` / ``sha256``: what the file must be, where known (checked after the download; a
    mismatch deletes the file and raises :class:`DownloadError`). With neither, the computed
    SHA-256 is returned (and worth recording). ``retries``: further attempts after a broken
    connection (resumed from the partial file) or an answer 408/429/5xx (after the server's
    ``Retry-After``, capped at :data:`MAX_RETRY_AFTER` s, else a backoff of 0.5, 1, 2... s, at
    most 8); when they run out :class:`DownloadError` names the URL and the last status, and a
    partial file is kept for the next call to continue. Another HTTP error (404, 403...) raises
    at once. ``sleep``: how to wait between attempts (tests pass a recorder).
    """
    destination = Path(destination)
    if destination.is_file():
        try:
            digest = _check(destination, size, sha256, str(destination))
            return Downloaded(destination, digest, destination.stat().st_size, fetched=False)
        except DownloadError as exc:  # a damaged or outdated copy: fetched again
            if echo:
                echo(f"{exc}; downloading it again")
            destination.unlink()
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    bar = None
    last_error: Exception | None = None
    try:
        for attempt in range(retries + 1):
            try:
                bar = _fetch_into(
                    part,
                    url,
                    size=size,
                    timeout=timeout,
                    progress=progress,
                    bar=bar,
                    description=description or destination.name,
                )
                break
            except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError) as exc:
                if isinstance(exc, urllib.error.HTTPError):
                    exc.close()  # its body is not needed: free the connection
                    if exc.code not in RETRY_STATUSES:
                        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
                    pause = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
                    what = f"the server answered HTTP {exc.code} {exc.reason}"
                elif isinstance(exc, urllib.error.URLError) and not part.exists():
                    # nothing arrived at all (offline, unknown host, refused): retrying will not help
                    raise DownloadError(f"{url}: {exc.reason if hasattr(exc, 'reason') else exc}") from exc
                else:
                    pause, what = None, f"connection lost ({type(exc).__name__}: {exc})"
                last_error = exc
                if attempt < retries:
                    if pause is None:
                        pause = min(2.0**attempt, 8.0) * (0.5 if isinstance(exc, urllib.error.HTTPError) else 0.25)
                    if echo:
                        action = "resuming" if part.exists() and part.stat().st_size else "trying again"
                        echo(f"{what}; {action} in {pause:g} s ({attempt + 1}/{retries})")
                    sleep(pause)
        else:
            have = part.stat().st_size if part.exists() else 0
            kept = f"{have} bytes kept in {part}: run again to resume" if have else "run again later"
            if isinstance(last_error, urllib.error.HTTPError):
                raise DownloadError(
                    f"{url}: the server answered HTTP {last_error.code} {last_error.reason} "
                    f"{retries + 1} times in a row (busy or failing); {kept}"
                ) from last_error
            raise DownloadError(
                f"{url}: connection lost {retries + 1} times ({type(last_error).__name__}: {last_error}); {kept}"
            ) from last_error
    finally:
        if bar is not None:
            bar.close()
    try:
        digest = _check(part, size, sha256, url)
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    with open(part, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(part, destination)
    return Downloaded(destination, digest, destination.stat().st_size, fetched=True)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), within
    ``[0, MAX_RETRY_AFTER]``; ``None`` when absent or unreadable (then the backoff applies)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _fetch_into(part: Path, url: str, *, size: int | None, timeout: float, progress: bool, bar, description: str):
    """Append the rest of ``url`` to ``part`` (Range from its current size); returns the progress bar."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have == size:
        return bar
    if size is not None and have > size:
        part.unlink()
        have = 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # asked past the end: what we have is all there is
            return bar
        raise
    with response:
        if have and response.status != 206:  # the server ignored the Range: start again
            have = 0
        length = response.headers.get("Content-Length")
        announced = have + int(length) if length is not None else None
        if size is not None and announced is not None and announced != size:
            raise DownloadError(
                f"{url}: the server announces {announced} bytes, expected {size}: not the "
                f"expected file (or the listed size is outdated)"
            )
        total = size if size is not None else announced
        if progress:
            from tqdm import tqdm

            if bar is None:
                bar = tqdm(
                    total=total,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=description,
                    dynamic_ncols=True,
                )
            else:
                bar.reset(total=total)
                bar.update(have)
        with open(part, "ab" if have else "wb") as handle:
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                handle.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        got = part.stat().st_size
        if length is not None and got < have + int(length):
            raise http.client.IncompleteRead(b"", have + int(length) - got)
    return bar
