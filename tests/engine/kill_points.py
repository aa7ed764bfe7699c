"""Child processes for the SIGKILL suite: ``minimaxad fit`` with instrumented kill points.

A child counts the calls of a few functions that mark the phases of training and kills itself
with SIGKILL (no clean-up of any kind runs) at the chosen call:

* ``load``: ``PIL.Image.open``, i.e. reading a training (or calibration) image;
* ``forward``: the network's forward pass of a step;
* ``update``: ``AdamW.step``, between the backward pass and the weight update;
* ``write``: inside ``torch.save`` of a checkpoint, after part of the bytes reached the file;
* ``rename``: right after a checkpoint's temporary file was renamed into place.

The children come from a forkserver that has imported torch and minimaxad once, so each run
costs its training, not an interpreter start.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

SITES = ("load", "forward", "update", "write", "rename")


def _context():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "minimaxad.cli", "tests.engine.kill_points"])
    return context


def run_fit(
    argv: list[str], kill_at: tuple[str, int] | None = None, counts_file: Path | None = None, timeout: float = 600
) -> int | None:
    """Run ``minimaxad`` with ``argv`` in a child; with ``kill_at=(site, n)`` the child kills
    itself at the n-th call of ``site``. Returns the child's exit code (``-SIGKILL`` when killed).
    ``counts_file`` receives the number of calls of every site (runs that are not killed)."""
    process = _context().Process(target=_child, args=(argv, kill_at, str(counts_file) if counts_file else None))
    process.start()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
        raise TimeoutError(f"minimaxad {' '.join(argv)} did not finish in {timeout} s")
    return process.exitcode


def _child(argv: list[str], kill_at: tuple[str, int] | None, counts_file: str | None) -> None:
    import PIL.Image
    import torch

    import minimaxad.engine.checkpoint as checkpoint
    from minimaxad.cli import main
    from minimaxad.models import MiniMaxAD

    torch.set_num_threads(1)  # the parent test's process shares the cores
    counts = dict.fromkeys(SITES, 0)

    def hit(site: str) -> None:
        counts[site] += 1
        if kill_at is not None and kill_at == (site, counts[site]):
            os.kill(os.getpid(), signal.SIGKILL)

    def counting(site: str, function):
        def wrapper(*args, **kwargs):
            hit(site)
            return function(*args, **kwargs)

        return wrapper

    PIL.Image.open = counting("load", PIL.Image.open)
    MiniMaxAD.forward = counting("forward", MiniMaxAD.forward)
    torch.optim.AdamW.step = counting("update", torch.optim.AdamW.step)
    real_save, real_replace = torch.save, os.replace

    def save_then_maybe_die(obj, handle, *args, **kwargs):
        if not hasattr(handle, "write"):
            return real_save(obj, handle, *args, **kwargs)

        class HalfWay:  # the kill lands after some bytes of the checkpoint are on disk
            written = 0

            def write(self, data):
                n = handle.write(data)
                self.written += n
                if self.written > 4096 and not getattr(self, "counted", False):
                    self.counted = True
                    hit("write")
                return n

            def __getattr__(self, name):
                return getattr(handle, name)

        return real_save(obj, HalfWay(), *args, **kwargs)

    def replace_then_maybe_die(source, target, *args, **kwargs):
        real_replace(source, target, *args, **kwargs)
        if str(target).endswith(".pt"):
            hit("rename")

    checkpoint.torch.save = save_then_maybe_die
    checkpoint.os.replace = replace_then_maybe_die
    try:
        code = main(argv)
    finally:
        torch.save, os.replace = real_save, real_replace
    if counts_file:
        Path(counts_file).write_text(json.dumps(counts))
    os._exit(code)
