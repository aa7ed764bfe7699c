"""Our fused model against the authors' fused model: same weights, same process, interleaved.

    python benchmarks/bench_inference_vs_authors.py --authors-code ../shared/authors_code
    python benchmarks/bench_inference_vs_authors.py --authors-code DIR --batches 1 16 --rounds 9 --form training

Ours is the public form ``MiniMaxAD(backbone).eval().reparameterize()`` called on a
``(B, 3, size, size)`` tensor; theirs is their ``fps.py``'s model: ``unireplknet_*()`` and
``de_unireplknet_*()`` with ``reparameterize_unireplknet()`` on encoder, bottleneck and decoder,
called under ``torch.no_grad()``. Both get our random weights (BatchNorm statistics randomised so
the fusion is not trivial); their outputs are compared first (relative error, should be < 1e-5).
``--form training`` compares the two training-form (unfused) networks in eval mode instead.

Each round times both, in alternating order, over the same input; the ratio of the round is
their seconds over ours (> 1: ours is faster). The machine is shared, so the median, the lowest
and the highest ratio over the rounds are printed: read the spread, not one figure.
The authors' model files are read from ``--authors-code`` (a checkout of WangFengJiee/MiniMaxAD)
through ../shared/tools/authors_shim.py; without them the benchmark says so and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from minimaxad.inference.benchmark import randomize_batchnorm
from minimaxad.models import MiniMaxAD

REPO = Path(__file__).resolve().parents[1]
SHIM = REPO.parent / "shared" / "tools" / "authors_shim.py"
DEFAULT_AUTHORS_CODE = os.environ.get("MINIMAXAD_AUTHORS_CODE", str(REPO.parent / "shared" / "authors_code"))
VARIANT_LETTER = {
    "unireplknet_a": "a",
    "unireplknet_f": "f",
    "unireplknet_p": "p",
    "unireplknet_n": "n",
    "unireplknet_t": "t",
}


def import_authors_models(authors_code: Path):
    """The authors' ``models.unireplknet`` and ``models.de_unireplknet`` (no timm, via the shim),
    or None with the reason printed when they are not at ``authors_code``."""
    if not (authors_code / "models" / "unireplknet.py").is_file():
        print(
            f"skipped: no models/unireplknet.py under --authors-code {authors_code}; give a checkout of "
            "WangFengJiee/MiniMaxAD (commit a374dc0)"
        )
        return None
    if not SHIM.is_file():
        print(f"skipped: {SHIM} not found (it lets the authors' model files import without timm)")
        return None
    for folder in (str(SHIM.parent), str(authors_code)):
        if folder not in sys.path:
            sys.path.append(folder)
    import authors_shim

    authors_shim.install()
    with contextlib.redirect_stdout(io.StringIO()):  # their constructors print their settings
        import models.de_unireplknet as de_unireplknet
        import models.unireplknet as unireplknet
    return unireplknet, de_unireplknet


class AuthorsNetwork(torch.nn.Module):
    """Their encoder, bottleneck (``bn``) and decoder, called as in their ``fps.py``."""

    def __init__(self, modules, backbone: str) -> None:
        super().__init__()
        unireplknet, de_unireplknet = modules
        letter = VARIANT_LETTER[backbone]
        with contextlib.redirect_stdout(io.StringIO()):
            self.encoder, self.bn = getattr(unireplknet, f"unireplknet_{letter}")()
            self.decoder = getattr(de_unireplknet, f"de_unireplknet_{letter}")()

    def load_from(self, ours: MiniMaxAD) -> "AuthorsNetwork":
        """Copy our (training-form) weights: our keys are theirs, part by part."""
        state = ours.state_dict()
        for prefix, part, strict in (
            ("encoder.", self.encoder, False),
            ("bottleneck.", self.bn, True),
            ("decoder.", self.decoder, True),
        ):
            part_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            missing, unexpected = part.load_state_dict(part_state, strict=strict)
            # their encoder has a 4th downsample and norm3 that MiniMaxAD never runs
            if unexpected or any(not (k.startswith("downsample_layers.3") or k.startswith("norm3")) for k in missing):
                raise RuntimeError(f"the authors' {prefix[:-1]} does not take our keys: {missing} {unexpected}")
        return self

    def reparameterize(self) -> "AuthorsNetwork":
        with contextlib.redirect_stdout(io.StringIO()):
            for part in (self.encoder, self.bn, self.decoder):
                part.reparameterize_unireplknet()
        return self

    def forward(self, x: torch.Tensor):
        en = self.encoder(x)
        return en, self.decoder(self.bn(en))


def paired_networks(modules, backbone: str, fused: bool, seed: int = 0) -> tuple[MiniMaxAD, AuthorsNetwork]:
    torch.manual_seed(seed)
    ours = MiniMaxAD(backbone).eval()
    randomize_batchnorm(ours)
    theirs = AuthorsNetwork(modules, backbone).load_from(ours).eval()
    if fused:
        ours = ours.reparameterize()
        theirs.reparameterize()
    return ours, theirs


def relative_errors(ours: MiniMaxAD, theirs: torch.nn.Module, size: int) -> list[float]:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    return [((u - v).norm() / v.norm()).item() for u, v in zip(a[0] + a[1], b[0] + b[1])]


def interleaved_ratios(
    ours: Callable[[], object], theirs: Callable[[], object], rounds: int, calls: int
) -> tuple[list[float], list[float], list[float]]:
    """Seconds per call of each, per round (order alternating), and their/ours per round."""
    ours(), theirs()  # warm-up: oneDNN primitives, allocator
    t_ours, t_theirs = [], []
    for r in range(rounds):
        order = [("ours", ours), ("theirs", theirs)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            (t_ours if name == "ours" else t_theirs).append((time.perf_counter() - start) / calls)
    return t_ours, t_theirs, [b / a for a, b in zip(t_ours, t_theirs)]


def summary(ratios: Sequence[float]) -> str:
    return f"{statistics.median(ratios):.2f}x (rounds: {min(ratios):.2f}-{max(ratios):.2f})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors-code", type=Path, default=Path(DEFAULT_AUTHORS_CODE))
    parser.add_argument("--variants", nargs="+", default=["unireplknet_n"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--form", choices=["fused", "training"], default="fused")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--images-per-round", type=int, default=8, help="calls per round = this / batch (>= 1)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    modules = import_authors_models(args.authors_code)
    if modules is None:
        return 0
    torch.set_num_threads(args.threads)
    print(
        f"ours vs the authors' {args.form} model, {args.size} px, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; ratio = their time / ours (> 1: ours faster)"
    )
    for backbone in args.variants:
        ours, theirs = paired_networks(modules, backbone, fused=args.form == "fused")
        errors = relative_errors(ours, theirs, args.size)
        print(f"{backbone}: outputs vs theirs, largest relative error {max(errors):.1e}")
        for batch in args.batches:
            x = torch.randn(batch, 3, args.size, args.size)
            calls = max(1, args.images_per_round // batch)
            with torch.no_grad():
                t_ours, t_theirs, ratios = interleaved_ratios(lambda: ours(x), lambda: theirs(x), args.rounds, calls)
            print(
                f"  batch {batch:>3}: ours {1e3 * statistics.median(t_ours) / batch:7.1f} ms/image, theirs "
                f"{1e3 * statistics.median(t_theirs) / batch:7.1f} ms/image, ratio {summary(ratios)}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
