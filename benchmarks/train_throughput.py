"""Training throughput: time per epoch and images/s of the main job (digits, quick recipe)
and of the CIFAR-10 paper preset (Table 1 network, batch 125) on synthetic images.

    python benchmarks/train_throughput.py [--device cuda] [--images 500] [--tiny]

Both go through ``experiments.train`` (the real loop: regularizer, NaN guard, checkpoints);
the seconds per epoch exclude validation. The CIFAR-10 figure extrapolates the measured
images/s to the paper's 40,000 training images.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from _common import machine
from torch.utils.data import TensorDataset

from experiments import DataSplits, fit, resolve_config


def _synthetic(n_train: int, size: int = 32, classes: int = 10) -> DataSplits:
    g = torch.Generator().manual_seed(0)

    def part(n):
        x = torch.randn(n, 3, size, size, generator=g)
        return TensorDataset(x, torch.randint(0, classes, (n,), generator=g))

    names = [str(k) for k in range(classes)]
    return DataSplits(part(n_train), part(50), part(50), classes, 3, size, names, "synthetic")


def _run(cfg, data=None) -> dict:
    cpu0 = time.process_time()
    r = fit(cfg, data, log=lambda *_: None)
    r["cpu"] = time.process_time() - cpu0
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=500, help="synthetic CIFAR-10 images")
    p.add_argument("--tiny", action="store_true", help="a few images only (checks it runs)")
    args = p.parse_args()
    n = 50 if args.tiny else args.images
    print(f"machine: {machine()}; device {args.device}")
    with tempfile.TemporaryDirectory() as tmp:
        digits = resolve_config(epochs=1 if args.tiny else 3, device=args.device, out=f"{tmp}/d")
        d = _run(digits)
        cifar = resolve_config(
            dataset="cifar10",
            preset="paper",
            epochs=1,
            device=args.device,
            threads=os.cpu_count(),
            out=f"{tmp}/c",
        )
        c = _run(cifar, _synthetic(n))
    print(f"{'job':<34}{'images/epoch':>13}{'s/epoch':>10}{'images/s':>10}{'threads':>9}")
    print(
        f"{'digits, quick recipe (main job)':<34}{d['train_images']:>13}"
        f"{d['seconds_per_epoch']:>10.2f}{d['images_per_second']:>10.0f}{d['threads']:>9}"
    )
    print(
        f"{'CIFAR-10 paper preset (synthetic)':<34}{c['train_images']:>13}"
        f"{c['seconds_per_epoch']:>10.2f}{c['images_per_second']:>10.1f}{c['threads']:>9}"
    )
    hours = 40_000 / c["images_per_second"] / 3600
    print(
        f"CIFAR-10 paper recipe: about {hours:.2f} h per 40,000-image epoch, "
        f"{100 * hours:.0f} h for its 100 epochs at this rate"
    )


if __name__ == "__main__":
    main()
