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
a mix that gives forward Euler two shares of three), timed in the same rounds; a single
option takes the ``=`` form (``--candidate=--no-augment``). What the script sets itself
(the arch, widths, batch and image size, compilation, threads) is refused in a candidate,
and every candidate is checked for every arch before any timing. The target of the stable
default: at most 1.5x the paper's training time on CIFAR-10 (Ruthotto & Haber 2020's
Table 1 network at the cpu budget).
"""

from __future__ import annotations

import shlex
import sys

import torch
import torch.nn.functional as F
from _common import header, interleaved, median, paired_ratio, parser, setup, table

import neuralpde
from experiments import build_model, resolve_config
from experiments._config import ConfigError, build_parser
from experiments._trainer import training_mix

# What the script sets itself, per arch or by its own flags: a candidate may not change it,
# or its row would time another network, batch or setting under this arch's name.
_SET_BY_SCRIPT = {
    "arch": "--archs",
    "dataset": None,
    "data_root": None,
    "widths": "--tiny",
    "batch_size": "--tiny",
    "image_size": "--tiny",
    "compile": "--compile",
    "threads": "--threads",
    "device": None,
    "workers": None,
    "resume": None,
}


class CandidateError(ValueError):
    """A ``--candidate`` the script cannot time; the message names it and the fix."""


def _candidate(options: str, common: dict):
    """The ``TrainConfig`` of one candidate's options on top of ``common`` (the image
    folder, arch and widths the script sets)."""
    where = f"--candidate {options!r} (--arch {common['arch']})"
    try:
        words = shlex.split(options)
    except ValueError as err:  # unbalanced quotes
        raise CandidateError(f"{where}: {err}") from None
    parser = build_parser()

    def fail(message: str):
        raise CandidateError(
            f"{where}: {message} (the options of python -m experiments.train --help)"
        )

    parser.error = fail  # argparse would print the trainer's usage and exit
    args = vars(parser.parse_args(words))
    args["resume"] = args["resume"] or None  # a store_true flag: False when not given
    given = {k: v for k, v in args.items() if v is not None}
    for key in sorted(given.keys() & _SET_BY_SCRIPT.keys()):
        own = _SET_BY_SCRIPT[key]
        instead = f"; give this script's {own}" if own else ""
        flag = "--" + key.replace("_", "-")
        raise CandidateError(f"{where}: {flag} is set by this script, not a candidate{instead}")
    try:
        return resolve_config(**common, **given)
    except ConfigError as err:
        raise CandidateError(f"{where}: {err}") from None


def configs(arch: str, widths: list[int], candidates: list[str] = ()) -> dict:
    """The paper's scheme, the default on an image folder and each candidate (options of
    ``python -m experiments.train`` on top of the same image folder and arch), as
    ``TrainConfig`` s keyed by their row names.

    Raises:
        CandidateError: a candidate the trainer would refuse, one that cannot be parsed,
            or one that gives an option this script sets itself (``_SET_BY_SCRIPT``).
    """
    common = {"dataset": "imagefolder", "data_root": ".", "arch": arch, "widths": widths}
    out = {
        "paper": resolve_config(**common, normalization="tv", rate_bound=0.0),
        "stable": resolve_config(**common),
    }
    for i, options in enumerate(candidates, start=1):
        out[f"candidate {i}: {options}"] = _candidate(options, common)
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
    method = cfg.solver or neuralpde.archs()[cfg.arch].default_method
    rs = f", random steps {','.join(map(str, cfg.random_steps))}" if cfg.random_steps else ""
    rm = f", random methods {','.join(cfg.random_methods)}" if cfg.random_methods else ""
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
        help="python -m experiments.train options of one more configuration (repeatable; "
        "a single option needs the = form: --candidate=--no-augment)",
    )
    args = p.parse_args()
    args.threads = args.threads or 2
    setup(args)
    repeats = args.repeats or (1 if args.tiny else 5)
    widths, batch, size = ([4, 8], 8, 8) if args.tiny else ([16, 32, 64, 64], 125, 32)
    header(
        "training step, default on photographs against the paper's scheme "
        f"({args.threads} thread(s), {'compiled' if args.compile else 'eager'})"
    )
    try:  # every arch and candidate checked before any timing
        per_arch = {arch: configs(arch, widths, args.candidate) for arch in args.archs.split(",")}
    except CandidateError as err:
        sys.exit(f"error: {err}")
    rows = []
    for arch, cfgs in per_arch.items():
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
