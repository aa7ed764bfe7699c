"""Every file the tool writes lies inside the folder the user named, under a safe name, and is
written whole or not at all; and the SHA-256 of a file.

Output names are derived from input paths (``predict`` names each heatmap after its photo) and
so are untrusted: an absolute path, ``..``, a Windows device name (``CON``, ``NUL``...), a name
of 300 characters or one made only of dots must never reach the file system as it is.
:func:`safe_name` turns any text into one harmless path component and :func:`inside` resolves
a path and refuses it when it would land outside its folder (``..``, an absolute part, or a
symbolic link pointing elsewhere).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

# CON, PRN, AUX, NUL, COM1-9, LPT1-9 are devices on Windows whatever the extension (NUL.png too)
WINDOWS_RESERVED = frozenset(
    {
        "CON",
        "PRN",
        "AUX",
        "NUL",
        "CONIN$",
        "CONOUT$",
        *(f"COM{i}" for i in range(1, 10)),
        *(f"LPT{i}" for i in range(1, 10)),
    }
)
MAX_NAME_LENGTH = 120  # characters of a stem: room for a suffix and a counter under 255 bytes
_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]+')  # separators, controls, Windows-forbidden


class UnsafePathError(ValueError):
    """A path the tool was about to write lies outside the folder it must write in."""


def safe_name(text: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """One file-name component made from ``text``: no separators or control characters, no
    leading dots or spaces (hidden files, ``.``/``..``), no Windows device name, at most
    ``max_length`` characters (a long name keeps its start and gets a short hash of the whole,
    so that two long names stay distinct). Unicode letters are kept (NFC-normalised)."""
    name = unicodedata.normalize("NFC", str(text))
    name = _UNSAFE.sub("_", name).strip(" ")
    name = name.lstrip(".").rstrip(". ")  # Windows drops trailing dots and spaces itself
    if not name:
        name = "_"
    if name.split(".")[0].upper() in WINDOWS_RESERVED:
        name = f"_{name}"
    if len(name) > max_length:
        digest = hashlib.sha1(str(text).encode("utf-8", "surrogatepass")).hexdigest()[:10]
        name = f"{name[: max_length - 11]}-{digest}"
    return name


def unique_names(names: list[str]) -> list[str]:
    """``names`` made distinct, case-insensitively (macOS and Windows folders ignore case):
    the later of two equal names get ``_1``, ``_2``... (never a name already taken)."""
    taken: set[str] = set()
    result = []
    for name in names:
        candidate, counter = name, 0
        while candidate.lower() in taken:
            counter += 1
            candidate = f"{name}_{counter}"
        taken.add(candidate.lower())
        result.append(candidate)
    return result


def inside(folder: str | Path, *parts: str) -> Path:
    """``folder / parts...`` resolved, checked to lie inside ``folder`` (also resolved: a link
    in the path that points elsewhere is caught). Raises :class:`UnsafePathError` otherwise."""
    root = Path(folder).resolve()
    target = root.joinpath(*parts).resolve()
    if target != root and root not in target.parents:
        raise UnsafePathError(
            f"refusing to write {target}: it is outside the output folder {root} "
            f"(from the name {'/'.join(parts)!r}); this is a bug, please report it"
        )
    return target


def check_writable_folder(folder: str | Path, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and prove it can be written (a probe file is created and
    removed), so that a read-only or unreachable folder fails before any work starts."""
    import os
    import tempfile

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".minimaxad-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"cannot write into the {what} {folder} ({exc.strerror or exc}); choose a folder you can write to",
        ) from exc
    return folder


def create_temporary_beside(path: str | Path, suffix: str = ".tmp") -> tuple[int, Path]:
    """Create a new, empty temporary file ``.NAME.<random><suffix>`` in ``path``'s folder, for
    a write that is then renamed over ``path``; returns its open descriptor (write-only) and its
    path. Unlike ``tempfile.mkstemp`` (always mode 0600), the file gets ``0o666`` less the
    process's umask, like any file ``open()`` creates: 0644 under umask 022, 0600 under 077.
    Created with ``O_EXCL`` (never an existing file or a symbolic link). Raises ``OSError``."""
    import os
    import secrets

    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(tmp, flags, 0o666), tmp  # the kernel applies the umask
        except FileExistsError:
            continue
    raise FileExistsError(
        f"could not create a temporary file for {path}: 100 random names in {path.parent} were all "
        f"taken; remove the stale .{path.name}.*{suffix} files there and run again"
    )


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder renamed into
    place: a full disk or a kill leaves the previous file complete (and no temporary file
    after an error). Raises ``OSError`` saying so. A new file's mode follows the umask
    (0644 under umask 022); see :func:`create_temporary_beside`."""
    import os

    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = create_temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        previous = f"the previous {path.name} is intact" if path.is_file() else f"no {path.name} was written"
        raise OSError(exc.errno, f"could not write {path} ({exc.strerror or exc}); {previous}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sha256_of(path: Path | str) -> str:
    """The SHA-256 of a file's content, as hex, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
