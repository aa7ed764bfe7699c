"""Model size and training speed of each variant, same run.

    python benchmarks/bench_model.py                       # variants f and n, 256 px, batch 16
    python benchmarks/bench_model.py --device cuda

Prints parameter counts (frozen encoder, trainable bottleneck + decoder), the float32 size in MB
of the trainable parts (what a checkpoint stores) and training images/second (forward, ADC loss,
backward, AdamW). Inference speed of every backend: benchmarks/bench_inference.py.
"""

from __future__ import annotations

import argparse

import torch

from minimaxad.inference.benchmark import print_training_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["unireplknet_f", "unireplknet_n"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batches", nargs="+", type=int, default=[16])
    parser.add_argument("--min-seconds", type=float, default=4.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_training_table(args.variants, args.size, args.batches, device=args.device, min_seconds=args.min_seconds)


if __name__ == "__main__":
    main()
