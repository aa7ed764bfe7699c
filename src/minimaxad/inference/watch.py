"""``minimaxad watch IN_DIR``: score the photos a line camera drops into a folder (or a share).

A file is scored once it is *completely written*: its size and time stamp have not changed for
``settle_seconds`` and it decodes. A file that has settled but still does not decode after
``give_up_seconds`` is reported as unreadable (in the results, with the reason) and the others
go on. Each file gets one line in ``OUT/results.jsonl`` and ``OUT/results.csv`` and its heatmap
and defect mask under ``OUT/heatmaps`` and ``OUT/masks``.

``OUT/journal.jsonl`` records every file finished, keyed by (path inside IN_DIR, size, time stamp),
so that a restart neither skips nor repeats a file; a file rewritten later under the same name is a
new photo. Results are written before the journal line, and a restart first completes whatever a
crash interrupted (a journal line missing, a CSV behind the JSON lines, a torn last line).

IN_DIR is only ever read: nothing there is modified, moved or deleted.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from minimaxad.data.io import BadImageError, DatasetError, list_images, load_image
from minimaxad.files import atomic_write, check_writable_folder, inside, safe_name
from minimaxad.inference.predict import MapStyle, Predictor

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


@dataclass
class _Settling:
    size: int
    mtime_ns: int
    stable_since: float  # monotonic time since which size and mtime have not changed


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


def _append_line(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _key(record: dict[str, Any]) -> FileKey:
    return (record["file"], int(record["size"]), int(record["mtime_ns"]))


class FolderWatcher:
    """Scores the images that appear in ``input_dir`` (recursively), into ``output``."""

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
        if category is not None and predictor.categories and category not in predictor.categories:
            raise ValueError(f"unknown category {category!r}; this model knows {', '.join(predictor.categories)}")
        self.predictor = predictor
        self.category = category
        self.batch_size = batch_size
        self.settle_seconds = settle_seconds
        self.give_up_seconds = give_up_seconds
        self.alpha = alpha
        self.clock = clock
        self.echo = echo
        self.results_path = self.output / "results.jsonl"
        self.csv_path = self.output / "results.csv"
        self.journal_path = self.output / "journal.jsonl"
        check_writable_folder(self.output)
        for sub in ("heatmaps", "masks"):
            (self.output / sub).mkdir(parents=True, exist_ok=True)
        self._settling: dict[str, _Settling] = {}
        self.done: set[FileKey] = set()
        self._names: dict[str, FileKey] = {}  # picture name -> the file it belongs to
        self._recover()
        self._style = MapStyle.of(predictor, category, alpha)

    # -- restart -------------------------------------------------------------------------------
    def _recover(self) -> None:
        """Read the journal and the results; finish what a crash left half-written."""
        results = read_json_lines(self.results_path)
        journal = read_json_lines(self.journal_path)
        self.done = {_key(r) for r in journal}
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

    def _csv_rows(self) -> int:
        if not self.csv_path.is_file():
            return -1
        text = self.csv_path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            return -1  # torn last row
        return max(0, sum(1 for _ in csv.reader(io.StringIO(text))) - 1)

    def _journal(self, record: dict[str, Any]) -> None:
        entry = {
            "file": record["file"],
            "size": record["size"],
            "mtime_ns": record["mtime_ns"],
            "status": "failed" if record.get("error") else "scored",
        }
        _append_line(self.journal_path, json.dumps(entry) + "\n")
        self.done.add(_key(record))

    # -- one look at the folder ----------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Files seen but not finished yet (still being written, or not decodable yet)."""
        return len(self._settling)

    def poll(self) -> int:
        """Look at the folder once; score every file that is completely written. Returns how many
        files were finished (scored or reported unreadable)."""
        now = self.clock()
        ready: list[tuple[str, os.stat_result]] = []
        seen = set()
        for path in list_images(self.input_dir, recursive=True):
            rel = path.relative_to(self.input_dir).as_posix()
            try:
                info = path.stat()
            except OSError:
                continue  # vanished between listing and stat
            key = (rel, info.st_size, info.st_mtime_ns)
            if key in self.done:
                continue
            seen.add(rel)
            state = self._settling.get(rel)
            if state is None or (state.size, state.mtime_ns) != (info.st_size, info.st_mtime_ns):
                self._settling[rel] = _Settling(info.st_size, info.st_mtime_ns, now)
                continue
            if now - state.stable_since >= self.settle_seconds:
                ready.append((rel, info))
        for rel in list(self._settling):
            if rel not in seen:  # removed or finished
                del self._settling[rel]
        finished = 0
        for start in range(0, len(ready), self.batch_size):
            finished += self._score(ready[start : start + self.batch_size], now)
        return finished

    def _score(self, files: list[tuple[str, os.stat_result]], now: float) -> int:
        photos, good, records = [], [], []
        for rel, info in files:
            try:
                photo = load_image(self.input_dir / rel)
            except (BadImageError, DatasetError, OSError) as exc:
                if now - self._settling[rel].stable_since < self.give_up_seconds:
                    continue  # maybe still being written by a slow writer: look again later
                records.append(self._record(rel, info, error=str(exc).split(". ")[0]))
                continue
            after = (self.input_dir / rel).stat()
            if (after.st_size, after.st_mtime_ns) != (info.st_size, info.st_mtime_ns):
                continue  # written to while we read it: wait for it to settle again
            photos.append(photo)
            good.append((rel, info))
        if photos:
            result = self.predictor.predict(photos, batch_size=len(photos), category=self.category)
            for i, (rel, info) in enumerate(good):
                name = self._picture_name(rel, info)
                photo, amap = photos[i], result.maps[i]
                self._save(self._style.heatmap(photo, amap), "heatmaps", name)
                self._save(self._style.mask(photo, amap), "masks", name)
                decision = (
                    ("anomalous" if result.is_anomalous[i] else "normal")
                    if result.image_threshold is not None
                    else "unknown"
                )
                records.append(
                    self._record(
                        rel,
                        info,
                        score=float(result.scores[i]),
                        normalized_score=float(result.normalized_scores[i])
                        if result.image_threshold is not None
                        else None,
                        decision=decision,
                        threshold=result.image_threshold,
                        width=photo.size[0],
                        height=photo.size[1],
                        heatmap=f"heatmaps/{name}.png",
                        mask=f"masks/{name}.png",
                    )
                )
        for record in records:
            self._commit(record)
            self._settling.pop(record["file"], None)
        return len(records)

    def _record(self, rel: str, info: os.stat_result, error: str | None = None, **values: Any) -> dict[str, Any]:
        record: dict[str, Any] = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "file": rel,
            "size": info.st_size,
            "mtime_ns": info.st_mtime_ns,
            "category": self.category,
        }
        record.update({f: None for f in CSV_FIELDS if f not in record})
        record.update(values)
        record["error"] = error
        if error is not None:
            record["decision"] = "unreadable"
        return record

    def _commit(self, record: dict[str, Any]) -> None:
        """Results first, the journal last: a crash in between is completed by :meth:`_recover`."""
        _append_line(self.results_path, json.dumps(record) + "\n")
        new_csv = not self.csv_path.is_file()
        with open(self.csv_path, "a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
            if new_csv:
                writer.writeheader()
            writer.writerow(record)
        self._journal(record)
        if record["error"]:
            self.echo(f"watch: {record['file']}: unreadable: {record['error']}")
        else:
            self.echo(f"watch: {record['file']}: {record['decision']} (score {record['score']:.4g})")

    def _picture_name(self, rel: str, info: os.stat_result) -> str:
        """The pictures' file name: the path inside IN_DIR without its suffix, made one safe
        component (``line2/a.png`` -> ``line2__a``); numbered when another file (``a.jpg`` beside
        ``a.png``, or an earlier version of this one) already has it."""
        stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
        base = safe_name(stem.replace("/", "__"))
        key = (rel, info.st_size, info.st_mtime_ns)
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
    echo=print,
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
