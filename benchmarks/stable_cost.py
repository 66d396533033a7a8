"""The cost of the stable default on photographs: one training step of the CIFAR-10
cpu-budget network (widths 16-32-64-64, batch 125, 32×32 images) in the quick recipe's
configuration for an image folder (what ``python -m experiments.train --dataset
imagefolder`` trains: the bias normalization, the rate bound, the arch's training method
and its random steps and methods) against the paper's scheme (TV normalization, no bound, the arch's
own method), per arch, measured in one run.

    python benchmarks/stable_cost.py [--repeats 5] [--threads 2] [--tiny] [--compile]
        [--candidate "TRAIN OPTIONS" ...]

Both configurations come from ``experiments.resolve_config`` and
``experiments.build_model``, so the table follows the defaults. Each step is forward,
cross-entropy, backward and an SGD step on a fixed synthetic batch, eager, or with
``--compile`` under ``torch.compile(dynamic=False)`` as the cpu budget trains (compilation
in the warm-up, before timing); random steps and
methods share the batch as in training (``neuralpde.Stage.training_mix``). Candidates
alternate (shuffled per round); the
table gives the median seconds per step and the median of per-round ratios to the paper's
scheme of the same arch. Each ``--candidate`` adds a configuration of
``python -m experiments.train`` options for every arch (e.g. ``--archs parabolic
--candidate "--solver midpoint --rate-bound 0.5 --random-methods midpoint,euler,euler"``:
a mix that gives forward Euler two shares of three), timed in the same rounds. The target of the stable default: at most 1.5x the paper's
training time on CIFAR-10 (Ruthotto & Haber 2020's Table 1 network at the cpu budget).
"""

from __future__ import annotations

import shlex
import sys

import torch
import torch.nn.functional as F
from _common import header, interleaved, median, paired_ratio, parser, setup, table

from experiments import build_model, resolve_config
from experiments._config import ConfigError, build_parser
from experiments._trainer import training_mix


def configs(arch: str, widths: list[int], candidates: list[str] = ()) -> dict:
    """The paper's scheme, the default on an image folder and each candidate (options of
    ``python -m experiments.train`` on top of the same image folder and arch), as
    ``TrainConfig`` s; a candidate the trainer would refuse exits with its error."""
    common = {"dataset": "imagefolder", "data_root": ".", "arch": arch, "widths": widths}
    out = {
        "paper": resolve_config(**common, normalization="tv", rate_bound=0.0),
        "stable": resolve_config(**common),
    }
    for i, options in enumerate(candidates, start=1):
        argv = ["--dataset", "imagefolder", "--data-root", ".", "--arch", arch]
        argv += ["--widths", ",".join(map(str, widths)), *shlex.split(options)]
        args = vars(build_parser().parse_args(argv))
        given = {k: v for k, v in args.items() if v is not None and k != "resume"}
        try:
            out[f"candidate {i}"] = resolve_config(**given)
        except ConfigError as err:
            sys.exit(f"error: --candidate {options!r} (--arch {arch}): {err}")
    return out


def _step(cfg, batch: int, size: int, compile: bool = False):
    torch.manual_seed(0)
    net = build_model(cfg, 3, 10, image_size=size)
    model = torch.compile(net, dynamic=False) if compile else net
    for s in net.stages:
        # Random steps and methods share each batch, as in experiments.train.
        s.training_mix = training_mix(cfg, s.solver)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def _describe(cfg) -> str:
    method = cfg.solver or "own"
    rs = f", random steps {cfg.random_steps}" if cfg.random_steps else ""
    rm = f", random methods {cfg.random_methods}" if cfg.random_methods else ""
    return f"{cfg.normalization}, {method}, bound {cfg.rate_bound:g}{rs}{rm}"


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--archs", default="parabolic,hamiltonian,second_order")
    p.add_argument("--compile", action="store_true", help="time compiled steps (torch.compile)")
    p.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="OPTIONS",
        help="python -m experiments.train options of one more configuration (repeatable)",
    )
    args = p.parse_args()
    args.threads = args.threads or 2
    setup(args)
    repeats = args.repeats or (1 if args.tiny else 5)
    widths, batch, size = ([4, 8], 8, 8) if args.tiny else ([16, 32, 64, 64], 125, 32)
    header(
        "training step, default on photographs against the paper's scheme "
        f"({args.threads} threads, {'compiled' if args.compile else 'eager'})"
    )
    rows = []
    for arch in args.archs.split(","):
        cfgs = configs(arch, widths, args.candidate)
        per_step = interleaved(
            {name: _step(c, batch, size, args.compile) for name, c in cfgs.items()},
            repeats=repeats,
            warmup=2 if args.compile else 1,  # compilation, then a recompile-free step
        )
        for name, cfg in cfgs.items():
            rows.append(
                {
                    "arch": arch,
                    "configuration": f"{name} ({_describe(cfg)})",
                    "s per step (median)": median(per_step[name]),
                    "ratio to paper": paired_ratio(per_step[name], per_step["paper"]),
                }
            )
    table(rows)


if __name__ == "__main__":
    main()
