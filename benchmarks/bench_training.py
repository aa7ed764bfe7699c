"""One training step, ours against the authors', same process, interleaved; and our bf16 step.

    python benchmarks/bench_training.py --authors-code ../shared/authors_code
    python benchmarks/bench_training.py --authors-code DIR --variants unireplknet_f --sizes 128 --batches 8
    python benchmarks/bench_training.py --authors-code DIR --precision bf16   # adds our bf16 step

A step is forward, ADC loss, backward and AdamW. Ours is the trainer's: forward under
:func:`minimaxad.engine.trainer.autocast_context` (frozen encoder without autograd), features cast
to float32, :func:`minimaxad.losses.adc_loss`, ``zero_grad / backward / step``. Theirs is the loop
of their ``train_multi_MVTecAD.py``: ``inputs = encoder(img)`` (autograd on, encoder in eval
mode), ``outputs = decoder(bn(inputs))``, their ``loss_adc`` (read out of the script with ``ast``
and run as written) with ``num_lim = size * size * batch * (1 - p_lim)``, AdamW(lr 5e-3,
weight decay 1e-5) over ``decoder + bn``, ``zero_grad / backward / step``. Both start from the
same random weights and take the same random batch.

Each round runs every step once, in rotating order; ratios are per round: their seconds over
our fp32 seconds (> 1: ours faster), and with ``--precision bf16`` our fp32 seconds over our
bf16 seconds. Median and range over the rounds are printed (the machine may be shared).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from bench_inference_vs_authors import DEFAULT_AUTHORS_CODE, AuthorsNetwork, import_authors_models
from compare_training_with_authors import script_functions

from minimaxad.engine.trainer import autocast_context, build_optimizer, cpu_supports_bf16
from minimaxad.losses import adc_loss
from minimaxad.models import MiniMaxAD

P_HARD, P_LIM, LR, WEIGHT_DECAY = 0.9999, 0.9995, 5e-3, 1e-5


def our_step(
    backbone: str, images: torch.Tensor, precision: str, seed: int = 0
) -> tuple[Callable[[], float], MiniMaxAD]:
    torch.manual_seed(seed)
    model = MiniMaxAD(backbone).train()
    optimizer = build_optimizer(model.trainable_parameters(), lr=LR, betas=(0.9, 0.999), weight_decay=WEIGHT_DECAY)
    device, size = torch.device("cpu"), images.shape[-1]

    def step() -> float:
        with autocast_context(device, precision):
            encoder_features, decoder_features = model(images)
        loss = adc_loss(
            [f.float() for f in encoder_features], [f.float() for f in decoder_features], size, P_HARD, P_LIM
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step, model


def authors_step(
    modules, loss_fns, backbone: str, images: torch.Tensor, weights_from: MiniMaxAD
) -> Callable[[], float]:
    net = AuthorsNetwork(modules, backbone).load_from(weights_from)
    encoder, bn, decoder = net.encoder, net.bn, net.decoder
    encoder.eval()
    bn.train()
    decoder.train()
    optimizer = torch.optim.AdamW(
        list(decoder.parameters()) + list(bn.parameters()), lr=LR, betas=(0.9, 0.999), weight_decay=WEIGHT_DECAY
    )
    size, batch = images.shape[-1], images.shape[0]
    num_lim = size * size * batch * (1 - P_LIM)
    loss_adc = loss_fns["loss_adc"]

    def step() -> float:
        inputs = encoder(images)
        outputs = decoder(bn(inputs))
        loss = loss_adc(inputs, outputs, P_HARD, P_LIM, num_lim, size)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def interleaved(steps: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    for fn in steps.values():
        fn()  # warm-up
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


def ratio_text(numerator: Sequence[float], denominator: Sequence[float]) -> str:
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors-code", type=Path, default=Path(DEFAULT_AUTHORS_CODE))
    parser.add_argument("--variants", nargs="+", default=["unireplknet_f", "unireplknet_n"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 16])
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: also time our bf16-autocast step (CPUs with AVX-512 BF16 or AMX)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    modules = import_authors_models(args.authors_code)
    if modules is None:
        return 0
    loss_fns = script_functions(args.authors_code / "train_multi_MVTecAD.py", ("loss_adc", "cal_anomaly_map_tensor"))
    if args.precision == "bf16" and not cpu_supports_bf16():
        print("--precision bf16: this CPU has no AVX-512 BF16 or AMX; timing fp32 only")
        args.precision = "fp32"
    torch.set_num_threads(args.threads)
    print(
        f"training step (forward, ADC, backward, AdamW), {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; ratios per round, median (range) over {args.rounds} rounds"
    )
    header = f"{'variant':<15}{'size':>5}{'batch':>6}{'ours img/s':>12}{'theirs img/s':>14}{'ours/theirs':>20}"
    if args.precision == "bf16":
        header += f"{'bf16 img/s':>12}{'bf16/fp32':>20}"
    print(header)
    for backbone in args.variants:
        for size in args.sizes:
            for batch in args.batches:
                images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(size + batch))
                ours, model = our_step(backbone, images, "fp32")
                steps = {"ours": ours, "theirs": authors_step(modules, loss_fns, backbone, images, model)}
                if args.precision == "bf16":
                    steps["bf16"] = our_step(backbone, images, "bf16")[0]
                t = interleaved(steps, args.rounds)
                rate = {name: batch / statistics.median(v) for name, v in t.items()}
                line = (
                    f"{backbone:<15}{size:>5}{batch:>6}{rate['ours']:>12.2f}{rate['theirs']:>14.2f}"
                    f"{ratio_text(t['theirs'], t['ours']):>20}"
                )
                if "bf16" in t:
                    line += f"{rate['bf16']:>12.2f}{ratio_text(t['ours'], t['bf16']):>20}"
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
