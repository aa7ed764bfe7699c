"""``minimaxad watch IN_DIR``: score the photos a line camera drops into a folder (or a share).

A file is scored once it is *completely written*: its size and time stamp have not changed for
``settle_seconds`` and it decodes. A file that has settled but still does not decode after
``give_up_seconds`` is reported as unreadable (in the results, with the reason) and the others
go on. Each file gets one line in ``OUT/results.jsonl`` and ``OUT/results.csv`` and its heatmap
and defect mask under ``OUT/heatmaps`` and ``OUT/masks``.

**Files that vanish** (deleted or moved away while being listed, stat'ed, decoded or re-checked),
and folders that vanish mid-walk, are skipped with one ``watch:`` line each, never an error. A
photo moved away after it was scored is not mentioned.

**Poison files.** When scoring a batch raises, its photos are scored one by one, so that only the
photo at fault fails. A failed try is logged and the photo is tried again at the next poll; after
``max_tries`` failed tries it is *quarantined*: one results line with ``decision`` ``"error"`` and
the reason in ``error`` (``"unreadable"`` is for files that never decode), and it is never tried
again, across restarts too, until the file changes. A try is recorded in ``OUT/attempts.jsonl``
*before* the predictor runs, so a process killed by a photo (a crash in the backend, the OOM
killer) still counts it: after a restart, photos of an unfinished try are scored one at a time,
and one whose tries are used up is quarantined at start-up instead of crash-looping. When a
photo fails and a plain grey test image fails too, the model or the device is broken, not the
photo: the watcher stops with an error and the try is not counted. Errors outside scoring (the
output disk full, OUT not writable) stop the watcher with an error saying what to fix.

**Journal.** ``OUT/journal.jsonl`` has one line per finished file, keyed by (path inside IN_DIR,
size, time stamp), with ``status`` ``"scored"``, ``"failed"`` (unreadable) or ``"quarantined"``,
so that a restart neither skips nor repeats a file; a file rewritten later under the same name is
a new photo. Results are written before the journal line, and a restart first completes whatever
a crash interrupted (a journal line missing, a CSV behind the JSON lines, a torn last line).
``OUT/attempts.jsonl`` holds the tries of files not finished yet (``"attempt"`` before scoring,
``"error"`` with the reason after a failed try, ``"released"`` for a try that does not count: a
batch that failed, then scored one by one, or a broken model); it is compacted to the unfinished
files at start-up and as it grows.

**Scanning.** A poll costs what changed, not what is done: each folder is stat'ed, but listed
only when its time stamp changed (a file created, deleted or renamed in it changes it, on Linux,
macOS and Windows), and only new names, files still settling and files finished in the last
``recheck_seconds`` are stat'ed (a file rewritten in place changes no folder; a camera reusing a
name is usually quick to). A folder changed within 2 s of being listed is listed again (time
stamps are coarse). Every ``full_scan_seconds`` everything is listed and stat'ed again: a safety
net for what folder time stamps miss (a finished photo rewritten in place much later; network
shares whose folder time stamps are coarse, cached or set by a server clock that is off). There
is no inotify: it is not in the standard library, and it does not see changes made by other
machines on a network share.

**Memory** grows with the number of journal keys (each finished file's key and picture name,
read back at a restart), plus the image names present in IN_DIR; the rest holds only files in
flight (settling, tried, just finished).

IN_DIR is only ever read: nothing there is modified, moved or deleted.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import stat
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from PIL import Image

from minimaxad.data.io import DatasetError, is_image_file
from minimaxad.files import atomic_write, check_writable_folder, inside, safe_name
from minimaxad.inference.predict import MapStyle, Prediction, Predictor

CSV_FIELDS = [
    "time",
    "file",
    "score",
    "normalized_score",
    "decision",
    "threshold",
    "width",
    "height",
    "heatmap",
    "mask",
    "error",
]
FileKey = tuple[str, int, int]  # (path inside IN_DIR with "/", size in bytes, mtime in ns)
FINAL_STATUSES = ("scored", "failed", "quarantined")  # journal.jsonl: the file is done
RACY_NS = 2_000_000_000  # a folder changed this close to its listing may change again unseen (FAT: 2 s stamps)
COMPACT_AT = 10_000  # attempts.jsonl lines before it is rewritten with the unfinished files only


@dataclass
class _Settling:
    size: int
    mtime_ns: int
    stable_since: float  # monotonic time since which size and mtime have not changed


@dataclass
class _Folder:
    """One listing of a folder inside IN_DIR."""

    mtime_ns: int  # the folder's time stamp when it was listed
    files: dict[str, int]  # image file name -> inode (a name replaced by a rename gets a new one)
    subfolders: list[str]
    racy: bool  # changed too close to the listing to trust the time stamp: list it again next poll


class _ScoringFailed(Exception):
    """The predictor (or drawing the maps) raised for a group of photos; ``__cause__`` says why."""


Photo = tuple[str, os.stat_result, Image.Image]  # (path inside IN_DIR, its stat, the decoded photo)


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """The records of an append-only JSON-lines file. A torn last line (a crash while writing
    it) is cut off, so that the next append starts on a line of its own."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # the tail after the last newline is an unfinished record
        with open(path, "r+b") as handle:
            handle.truncate(end)
        data = data[:end]
    records = []
    for line in data.decode("utf-8").splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line damaged by a crash; its file is scored again
    return records


def _append_lines(path: Path, lines: Iterable[str]) -> None:
    try:
        with open(path, "a", encoding="utf-8", newline="") as handle:
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"cannot write {path} ({exc.strerror or exc}); free space on that disk or fix its permissions, "
            f"then start the watcher again: it resumes where it stopped",
        ) from exc


def _key(record: dict[str, Any]) -> FileKey:
    return (record["file"], int(record["size"]), int(record["mtime_ns"]))


def _file_key(rel: str, info: os.stat_result) -> FileKey:
    return (rel, info.st_size, info.st_mtime_ns)


def _entry(key: FileKey, status: str, **values: Any) -> str:
    return json.dumps({"file": key[0], "size": key[1], "mtime_ns": key[2], "status": status, **values}) + "\n"


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _split(rel: str) -> tuple[str, str]:
    folder, _, name = rel.rpartition("/")
    return folder, name


def _order(rel: str) -> list[str]:
    return rel.split("/")  # the order of sorted paths: a folder's files beside each other


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _decision_values(result: Prediction, i: int) -> dict[str, Any]:
    """Score, normalized score, decision and threshold of photo ``i`` of ``result``, as the
    results record them (``"unknown"`` and no normalized score without a calibrated threshold)."""
    return {
        "score": float(result.scores[i]),
        "normalized_score": float(result.normalized_scores[i]) if result.image_threshold is not None else None,
        "decision": result.decisions[i],
        "threshold": result.image_threshold,
    }


class FolderWatcher:
    """Scores the images that appear in ``input_dir`` (recursively), into ``output``.

    ``max_tries``: failed scoring tries before a photo is quarantined. ``full_scan_seconds``: how
    often everything is listed and stat'ed again (``float("inf")``: never after the first poll).
    ``recheck_seconds``: how long a finished file is still stat'ed on each poll, to notice a
    rewrite in place at once. See the module's documentation for the rest.
    """

    def __init__(
        self,
        input_dir: str | Path,
        output: str | Path,
        predictor: Predictor,
        *,
        category: str | None = None,
        batch_size: int = 16,
        settle_seconds: float = 1.0,
        give_up_seconds: float = 10.0,
        alpha: float = 0.5,
        max_tries: int = 3,
        full_scan_seconds: float = 60.0,
        recheck_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.input_dir = Path(input_dir).resolve()
        self.output = Path(output).resolve()
        if not self.input_dir.is_dir():
            raise FileNotFoundError(f"input folder {input_dir} does not exist (or is not a folder)")
        if self.output == self.input_dir or self.input_dir in self.output.parents:
            raise ValueError(
                f"the output folder {output} lies inside the watched folder {input_dir}: its heatmaps "
                f"would be picked up as new photos; choose an output folder outside it"
            )
        if give_up_seconds < settle_seconds:
            raise ValueError(f"give_up_seconds ({give_up_seconds}) must be at least settle_seconds ({settle_seconds})")
        if max_tries < 1:
            raise ValueError(f"max_tries must be at least 1 (got {max_tries})")
        if not full_scan_seconds > 0 or recheck_seconds < 0:
            raise ValueError(
                f"full_scan_seconds must be positive and recheck_seconds not negative "
                f"(got {full_scan_seconds} and {recheck_seconds})"
            )
        predictor.thresholds_for(category)  # an unknown category is refused now, not at the first photo
        self.predictor = predictor
        self.category = category
        self.batch_size = batch_size
        self.settle_seconds = settle_seconds
        self.give_up_seconds = give_up_seconds
        self.alpha = alpha
        self.max_tries = max_tries
        self.full_scan_seconds = full_scan_seconds
        self.recheck_seconds = recheck_seconds
        self.clock = clock
        self.echo = echo
        self.results_path = self.output / "results.jsonl"
        self.csv_path = self.output / "results.csv"
        self.journal_path = self.output / "journal.jsonl"
        self.attempts_path = self.output / "attempts.jsonl"
        check_writable_folder(self.output)
        for sub in ("heatmaps", "masks"):
            (self.output / sub).mkdir(parents=True, exist_ok=True)
        self._settling: dict[str, _Settling] = {}
        self.done: set[FileKey] = set()
        self._names: dict[str, FileKey] = {}  # picture name -> the file it belongs to
        self._folders: dict[str, _Folder] = {}  # folder inside IN_DIR ("" for IN_DIR) -> its last listing
        self._recent: dict[str, float] = {}  # file finished lately -> when (clock)
        self._tries: dict[FileKey, int] = {}  # unfinished file -> tries counted against it
        self._errors: dict[FileKey, str] = {}  # unfinished file -> why its last try failed
        self._attempt_lines = 0
        self._missing: set[str] = set()  # files reported as vanished: said once
        self._lost_folders: set[str] = set()  # folders reported as vanished or unreadable: said once
        self._next_full_scan: float | None = None  # the first poll is a full scan
        self._recover()
        self._style = MapStyle.of(predictor, category, alpha)

    # -- restart -------------------------------------------------------------------------------
    def _recover(self) -> None:
        """Read the journal, the tries and the results; finish what a crash left half-written."""
        results = read_json_lines(self.results_path)
        for entry in read_json_lines(self.journal_path):
            try:
                if entry.get("status", "scored") in FINAL_STATUSES:
                    self.done.add(_key(entry))
            except (KeyError, TypeError, ValueError):
                continue  # not a journal line we wrote: ignored
        for record in results:
            if _key(record) not in self.done:  # a crash between the result and its journal line
                self._journal(record)
            if record.get("heatmap"):
                self._names[Path(record["heatmap"]).stem.lower()] = _key(record)
        rows = self._csv_rows()
        if rows != len(results):  # the CSV is a view of results.jsonl: rewrite it when behind
            tmp = self.csv_path.with_name(self.csv_path.name + ".tmp")
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(results)
            os.replace(tmp, self.csv_path)
        if self.done:
            self.echo(f"watch: resuming; {len(self.done)} file(s) already done in {self.output}")
        self._recover_tries()

    def _recover_tries(self) -> None:
        """Count the tries of unfinished files; quarantine those whose tries are used up (the
        process died while scoring them), so that a poison file cannot crash-loop the service."""
        entries = read_json_lines(self.attempts_path)
        for entry in entries:
            try:
                key = _key(entry)
                if entry.get("status") == "attempt":
                    self._tries[key] = self._tries.get(key, 0) + int(entry.get("tries", 1))
                elif entry.get("status") == "released":
                    self._tries[key] = self._tries.get(key, 0) - 1
            except (KeyError, TypeError, ValueError):
                continue
            if entry.get("error"):
                self._errors[key] = str(entry["error"])
        self._tries = {k: n for k, n in self._tries.items() if n > 0 and k not in self.done}
        self._errors = {k: e for k, e in self._errors.items() if k in self._tries}
        self._attempt_lines = len(entries)
        if self._attempt_lines > len(self._tries):
            self._compact_attempts()
        for key, tries in sorted(self._tries.items()):
            if tries >= self.max_tries:
                last = self._errors.get(key)
                why = f"last error: {last}" if last else "the watcher stopped while scoring it: a crash or a kill"
                self._finish(
                    self._record(
                        key,
                        decision="error",
                        error=f"scoring was tried {tries} times and never finished ({why}); quarantined: "
                        f"not tried again until the file changes",
                    )
                )
        if self._tries:
            self.echo(
                f"watch: {len(self._tries)} file(s) have unfinished or failed tries: they are scored one at a time"
            )

    def _compact_attempts(self) -> None:
        """Rewrite attempts.jsonl with the unfinished files only (atomically: a crash keeps the old one)."""
        lines = []
        for key, tries in self._tries.items():
            extra = {"error": self._errors[key]} if key in self._errors else {}
            lines.append(_entry(key, "attempt", tries=tries, **extra))
        atomic_write(self.attempts_path, "".join(lines))
        self._attempt_lines = len(lines)

    def _csv_rows(self) -> int:
        if not self.csv_path.is_file():
            return -1
        text = self.csv_path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            return -1  # torn last row
        return max(0, sum(1 for _ in csv.reader(io.StringIO(text))) - 1)

    def _journal(self, record: dict[str, Any]) -> None:
        if record.get("decision") == "error":
            status = "quarantined"
        else:
            status = "failed" if record.get("error") else "scored"
        _append_lines(self.journal_path, [_entry(_key(record), status)])
        self.done.add(_key(record))

    def _log_attempts(self, keys: list[FileKey], status: str, error: str | None = None) -> None:
        """One line per file in attempts.jsonl, on disk before this returns (fsync)."""
        if not keys:
            return
        extra = {"error": error} if error is not None else {}
        _append_lines(self.attempts_path, [_entry(key, status, **extra) for key in keys])
        self._attempt_lines += len(keys)
        for key in keys:
            if status == "attempt":
                self._tries[key] = self._tries.get(key, 0) + 1
            elif status == "released":
                self._tries[key] = self._tries.get(key, 0) - 1
                if self._tries[key] <= 0:
                    del self._tries[key]
            if error is not None:
                self._errors[key] = error

    # -- one look at the folder ----------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Files seen but not finished yet (still being written, or not decodable yet)."""
        return len(self._settling)

    def poll(self) -> int:
        """Look at the folder once; score every file that is completely written. Returns how many
        files were finished (scored, reported unreadable or quarantined)."""
        now = self.clock()
        full = self._next_full_scan is None or now >= self._next_full_scan
        if full:
            self._next_full_scan = now + self.full_scan_seconds
        candidates = self._scan(full)
        for rel, finished_at in list(self._recent.items()):
            if now - finished_at > self.recheck_seconds:
                del self._recent[rel]
            else:
                candidates.add(rel)  # a rewrite in place changes no folder
        candidates.update(self._settling)
        ready: list[tuple[str, os.stat_result]] = []
        for rel in sorted(candidates, key=_order):
            folder, name = _split(rel)
            listed = self._folders.get(folder)
            if listed is None or name not in listed.files:  # deleted or moved away, or its folder went
                self._gone(rel, "vanished before it was scored")
                continue
            try:
                info = os.stat(self.input_dir / rel)
            except OSError as exc:  # vanished between the listing and the stat
                self._gone(rel, "vanished before it was scored" if isinstance(exc, FileNotFoundError) else _reason(exc))
                continue
            self._missing.discard(rel)
            if _file_key(rel, info) in self.done:
                self._settling.pop(rel, None)
                continue
            state = self._settling.get(rel)
            if state is None or (state.size, state.mtime_ns) != (info.st_size, info.st_mtime_ns):
                self._settling[rel] = _Settling(info.st_size, info.st_mtime_ns, now)
                continue
            if now - state.stable_since >= self.settle_seconds:
                ready.append((rel, info))
        if full:
            self._missing = {rel for rel in self._missing if rel in candidates}  # forget files long gone
        finished = 0
        for start in range(0, len(ready), self.batch_size):
            finished += self._score(ready[start : start + self.batch_size], now)
        return finished

    def _gone(self, rel: str, why: str) -> None:
        """``rel`` cannot be looked at: said once if it was waiting to be scored; a finished file moved
        away says nothing."""
        waiting = self._settling.pop(rel, None) is not None
        finished = self._recent.pop(rel, None) is not None
        if (waiting or not finished) and rel not in self._missing:
            self._missing.add(rel)
            self.echo(f"watch: {rel}: {why}; skipped")

    def _scan(self, full: bool) -> set[str]:
        """Walk IN_DIR's folders; list those that changed (all of them on a full scan). Returns the
        image files to stat: the new or replaced names (all names on a full scan)."""
        candidates: set[str] = set()
        visited: set[str] = set()
        lost: set[str] = set()
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            path = self.input_dir / rel_dir if rel_dir else self.input_dir
            try:
                info = os.stat(path)
                if not stat.S_ISDIR(info.st_mode):
                    raise NotADirectoryError(f"{path} is not a folder any more")
                known = self._folders.get(rel_dir)
                if full or known is None or known.racy or known.mtime_ns != info.st_mtime_ns:
                    listed = self._list(path, info)
                    for name, inode in listed.files.items():
                        if full or known is None or known.files.get(name) != inode:
                            candidates.add(_join(rel_dir, name))
                    self._folders[rel_dir] = known = listed
            except OSError as exc:  # the folder vanished mid-walk (or cannot be read)
                lost.add(rel_dir)
                if rel_dir not in self._lost_folders:
                    if rel_dir:
                        self.echo(f"watch: folder {rel_dir}/: vanished or unreadable ({_reason(exc)}); skipped")
                    else:
                        self.echo(
                            f"watch: the input folder {self.input_dir} cannot be read ({_reason(exc)}); "
                            f"waiting for it to come back"
                        )
                continue
            visited.add(rel_dir)
            stack.extend(_join(rel_dir, sub) for sub in known.subfolders)
        if "" in self._lost_folders and "" not in lost:
            self.echo(f"watch: the input folder {self.input_dir} is back")
        self._lost_folders = lost
        for rel_dir in [d for d in self._folders if d not in visited]:
            del self._folders[rel_dir]  # removed: its files are gone too
        return candidates

    @staticmethod
    def _list(path: Path, info: os.stat_result) -> _Folder:
        listed_at = time.time_ns()
        files: dict[str, int] = {}
        subfolders: list[str] = []
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if not entry.name.startswith("."):  # as list_images: hidden folders are not walked
                            subfolders.append(entry.name)
                    elif is_image_file(entry.name) and entry.is_file():
                        files[entry.name] = entry.inode()
                except OSError:
                    continue  # went while we listed
        return _Folder(info.st_mtime_ns, files, sorted(subfolders), racy=info.st_mtime_ns >= listed_at - RACY_NS)

    def _score(self, files: list[tuple[str, os.stat_result]], now: float) -> int:
        photos: list[Photo] = []
        finished = 0
        for rel, info in files:
            path = self.input_dir / rel
            try:
                photo = self.predictor.decode(path)
            except (DatasetError, OSError) as exc:  # the file's fault: reported if it lasts
                try:
                    os.stat(path)
                except FileNotFoundError:
                    self._gone(rel, "vanished before it was scored")
                    continue
                except OSError:
                    pass
                if now - self._settling[rel].stable_since < self.give_up_seconds:
                    continue  # maybe still being written by a slow writer: look again later
                self._finish(self._record(_file_key(rel, info), decision="unreadable", error=str(exc).split(". ")[0]))
                finished += 1
                continue
            try:
                after = os.stat(path)
            except OSError as exc:
                self._gone(rel, "vanished before it was scored" if isinstance(exc, FileNotFoundError) else _reason(exc))
                continue
            if (after.st_size, after.st_mtime_ns) != (info.st_size, info.st_mtime_ns):
                continue  # written to while we read it: wait for it to settle again
            photos.append((rel, info, photo))
        # a photo tried before (it failed, or the process died while scoring it) goes alone
        fresh = [p for p in photos if _file_key(p[0], p[1]) not in self._tries]
        groups = [fresh] if fresh else []
        groups += [[p] for p in photos if _file_key(p[0], p[1]) in self._tries]
        for group in groups:
            finished += self._score_group(group)
        return finished

    def _score_group(self, group: list[Photo]) -> int:
        try:
            result, pictures = self._attempt(group)
        except _ScoringFailed as failure:
            if len(group) > 1:  # find the photo at fault: the batch's failure counts against none
                self._log_attempts([_file_key(rel, info) for rel, info, _ in group], "released")
                self.echo(f"watch: a batch of {len(group)} failed ({_reason(failure.__cause__)}); one by one now")
                return sum(self._score_group([photo]) for photo in group)
            return self._failed(group[0], failure)
        try:
            for i, (rel, info, photo) in enumerate(group):
                name = self._picture_name(rel, info)
                self._save(pictures[i][0], "heatmaps", name)
                self._save(pictures[i][1], "masks", name)
                self._finish(
                    self._record(
                        _file_key(rel, info),
                        **_decision_values(result, i),
                        width=photo.size[0],
                        height=photo.size[1],
                        heatmap=f"heatmaps/{name}.png",
                        mask=f"masks/{name}.png",
                    )
                )
        except BaseException:
            # scored fine, then writing OUT failed (a full disk...): not the photos' fault, their try does not count
            unfinished = [_file_key(rel, info) for rel, info, _ in group if _file_key(rel, info) in self._tries]
            with contextlib.suppress(OSError):  # the disk may refuse this too: the first error is the one to show
                self._log_attempts(unfinished, "released")
            raise
        return len(group)

    def _attempt(self, group: list[Photo]) -> tuple[Prediction, list[tuple[Image.Image, Image.Image]]]:
        """Score ``group``, its try recorded first. Only what the photos go through is guarded:
        anything raised there is :class:`_ScoringFailed`; writing the results is not in here."""
        self._log_attempts([_file_key(rel, info) for rel, info, _ in group], "attempt")
        photos = [photo for _, _, photo in group]
        try:
            result = self.predictor.predict(photos, batch_size=len(photos), category=self.category)
            pictures = [
                (self._style.heatmap(p, result.maps[i]), self._style.mask(p, result.maps[i]))
                for i, p in enumerate(photos)
            ]
        except Exception as exc:
            raise _ScoringFailed() from exc
        return result, pictures

    def _failed(self, photo: Photo, failure: _ScoringFailed) -> int:
        """One photo failed alone: count it against the photo (quarantined after ``max_tries``),
        unless the model fails on a plain grey image too."""
        rel, info, _ = photo
        key, cause = _file_key(rel, info), failure.__cause__
        reason = _reason(cause) if cause is not None else "unknown error"
        try:
            self.predictor.predict([Image.new("RGB", (64, 64), (128, 128, 128))], batch_size=1, category=self.category)
        except Exception as exc:
            self._log_attempts([key], "released")
            raise RuntimeError(
                f"scoring {rel} failed ({reason}), and so does scoring a plain grey test image ({_reason(exc)}): "
                f"the model or the device is failing, not the photos; fix it and start the watcher again "
                f"(no photo was counted as failed)"
            ) from cause
        self._log_attempts([key], "error", error=reason)
        tries = self._tries[key]
        if tries < self.max_tries:
            self.echo(f"watch: {rel}: scoring failed (try {tries} of {self.max_tries}): {reason}; tried again later")
            return 0
        self._finish(
            self._record(
                key,
                decision="error",
                error=f"scoring failed {tries} times ({reason}); quarantined: not tried again until the file changes",
            )
        )
        return 1

    def _record(self, key: FileKey, **values: Any) -> dict[str, Any]:
        record: dict[str, Any] = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "file": key[0],
            "size": key[1],
            "mtime_ns": key[2],
            "category": self.category,
        }
        record.update({f: None for f in CSV_FIELDS if f not in record})
        record.update(values)
        return record

    def _finish(self, record: dict[str, Any]) -> None:
        """Commit ``record``; the file is done: no longer settling or tried, still re-stat'ed a while."""
        self._commit(record)
        key = _key(record)
        self._settling.pop(key[0], None)
        self._recent[key[0]] = self.clock()
        self._errors.pop(key, None)
        if self._tries.pop(key, None) is not None and self._attempt_lines >= COMPACT_AT:
            self._compact_attempts()

    def _commit(self, record: dict[str, Any]) -> None:
        """Results first, the journal last: a crash in between is completed by :meth:`_recover`."""
        _append_lines(self.results_path, [json.dumps(record) + "\n"])
        new_csv = not self.csv_path.is_file()
        with open(self.csv_path, "a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
            if new_csv:
                writer.writeheader()
            writer.writerow(record)
        self._journal(record)
        if record["error"]:
            self.echo(f"watch: {record['file']}: {record['decision']}: {record['error']}")
        else:
            self.echo(f"watch: {record['file']}: {record['decision']} (score {record['score']:.4g})")

    def _picture_name(self, rel: str, info: os.stat_result) -> str:
        """The pictures' file name: the path inside IN_DIR without its suffix, made one safe
        component (``line2/a.png`` -> ``line2__a``); numbered when another file (``a.jpg`` beside
        ``a.png``, or an earlier version of this one) already has it."""
        stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
        base = safe_name(stem.replace("/", "__"))
        key = _file_key(rel, info)
        name, counter = base, 0
        while name.lower() in self._names and self._names[name.lower()] != key:
            counter += 1
            name = f"{base}_{counter}"
        self._names[name.lower()] = key
        return name

    def _save(self, image: Image.Image, folder: str, name: str) -> None:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        atomic_write(inside(self.output, folder, f"{name}.png"), buffer.getvalue())  # never half-written

    # -- the loop ------------------------------------------------------------------------------
    def run(self, interval: float = 0.5, once: bool = False, stop: threading.Event | None = None) -> int:
        """Poll until ``stop`` is set (or, with ``once``, until every file present is finished).
        Returns the number of files finished."""
        stop = stop or threading.Event()
        total = 0
        while not stop.is_set():
            total += self.poll()
            if once and not self._settling:
                break
            stop.wait(interval)
        return total


def watch(
    input_dir: Path,
    output: Path,
    checkpoint: str | Path,
    *,
    backend: str = "fused",
    device: str = "auto",
    category: str | None = None,
    batch_size: int = 16,
    interval: float = 0.5,
    settle_seconds: float = 1.0,
    give_up_seconds: float = 10.0,
    once: bool = False,
    alpha: float = 0.5,
    encoder_weights: str | None = None,
    recheck_margin: float | None = None,
    max_tries: int = 3,
    full_scan_seconds: float = 60.0,
    echo: Callable[[str], None] = print,
    **overrides: Any,
) -> int:
    """``minimaxad watch``: load the model, then poll ``input_dir`` until SIGINT/SIGTERM (or, with
    ``once``, until what is there is done). Returns the number of files finished."""
    predictor = Predictor.from_checkpoint(
        checkpoint,
        device=device,
        encoder_weights=encoder_weights,
        backend=backend,
        recheck_margin=recheck_margin,
        **overrides,
    )
    watcher = FolderWatcher(
        input_dir,
        output,
        predictor,
        category=category,
        batch_size=batch_size,
        settle_seconds=settle_seconds,
        give_up_seconds=give_up_seconds,
        alpha=alpha,
        max_tries=max_tries,
        full_scan_seconds=full_scan_seconds,
        echo=echo,
    )
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):  # finish the current file, then stop
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    echo(f"watch: {input_dir} -> {output}" + (" (until done)" if once else " (Ctrl-C to stop)"))
    try:
        total = watcher.run(interval=interval, once=once, stop=stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    echo(f"watch: {total} file(s) finished; results in {output / 'results.jsonl'}")
    return total
