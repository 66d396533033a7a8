"""The cost of stability by construction: one training step of the CIFAR-10 cpu-budget
network (widths 16-32-64-64, batch 125, 32×32 images) in the stable configuration
(``normalization="bias"``, every kernel parametrized by the rate bound) against the
paper's configuration (TV normalization, no bound), per arch, measured in one run.

    python benchmarks/stable_cost.py [--repeats 5] [--threads 2] [--tiny]

Each step is forward, cross-entropy, backward and an SGD step on a fixed synthetic batch;
candidates alternate (shuffled per round), and the table gives the median seconds per
step and the median of per-round ratios to the paper configuration of the same arch. The
target of the stable default: at most 1.5x the paper's training time on CIFAR-10.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _common import header, interleaved, median, paired_ratio, parser, setup, table

import neuralpde
from neuralpde import stability

CONFIGS = {
    "paper": {"normalization": "tv", "rate_bound": 0.0},
    "stable": {"normalization": "bias", "rate_bound": 0.25},
}


def _step(arch: str, config: dict, widths, batch: int, size: int):
    torch.manual_seed(0)
    options = {} if arch == "resnet" else {"normalization": config["normalization"]}
    net = neuralpde.PDECNN(arch, 3, 10, widths, rhs_options=options)
    if config["rate_bound"]:
        stability.constrain(net, (3, size, size), fraction=config["rate_bound"])
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    return step


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--archs", default="parabolic,hamiltonian,second_order")
    args = p.parse_args()
    args.threads = args.threads or 2
    setup(args)
    repeats = args.repeats or (1 if args.tiny else 5)
    widths, batch, size = ((4, 8), 8, 8) if args.tiny else ((16, 32, 64, 64), 125, 32)
    header(f"training step, stable against paper configuration ({args.threads} threads)")
    rows = []
    for arch in args.archs.split(","):
        steps = {name: _step(arch, c, widths, batch, size) for name, c in CONFIGS.items()}
        times = interleaved(steps, repeats=repeats, warmup=1)
        for name in CONFIGS:
            rows.append(
                {
                    "arch": arch,
                    "configuration": name,
                    "s per step (median)": median(times[name]),
                    "ratio to paper": paired_ratio(times[name], times["paper"]),
                }
            )
    table(rows)


if __name__ == "__main__":
    main()
