"""Model size and speed: training form vs re-parameterized (fused) form, same run.

    python benchmarks/bench_model.py                       # variants f and n, 256 px, batch 1 and 16
    python benchmarks/bench_model.py --train               # also training images/second
    python benchmarks/bench_model.py --device cuda

Prints parameter counts (frozen encoder, trainable bottleneck + decoder), the float32 size in MB
of the trainable parts (what a checkpoint stores), and images/second of full inference
(encoder + bottleneck + decoder + smoothed anomaly map + image score) at each batch size, for the
training form and the fused form, with the ratio fused / training form.
"""

from __future__ import annotations

import argparse

import torch

from minimaxad.benchmark import print_speed_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["unireplknet_f", "unireplknet_n"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--min-seconds", type=float, default=4.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train", action="store_true", help="also measure training images/second")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_speed_table(args.variants, args.size, args.batches, device=args.device,
                      min_seconds=args.min_seconds, train=args.train)


if __name__ == "__main__":
    main()
