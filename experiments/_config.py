"""What a training run is: one flat, JSON-serializable config, its recipes and its CLI."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import neuralpde
import solvers

# The dynamics and their rules (widths, solvers) are neuralpde's: ask it, never repeat them.
ARCHS = tuple(neuralpde.archs())
DATASETS = ("digits", "cifar10", "cifar100", "stl10", "imagefolder")
PAPER_DATASETS = ("cifar10", "cifar100", "stl10")
NAN_POLICIES = ("stop", "skip")
LR_DECAYS = ("step", "cosine")
MEMORY_MODES = ("autograd", "reversible", "adjoint")
NORMALIZATIONS = ("tv", "bias", "none")
# θ(t) between parameter sets: the paper's piecewise-constant ResNet layers, or continuous
# (neuralpde.TimeWeights).
INTERPOLATIONS = ("constant", "linear")
OPTIMIZERS = ("sgd", "adam")


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as ``config.json`` and in checkpoints).

    ``lr_schedule`` is the piecewise-constant learning rate as ``[[epochs, lr], ...]``
    phases; with ``lr_decay="cosine"`` it is one phase whose rate decays to 0 along a
    half cosine, batch by batch (:func:`lr_now`); ``compile`` runs the network through
    ``torch.compile`` (inductor) in training and validation (``fit`` first resets
    dynamo's caches, ``torch._dynamo.reset()``); ``smoothness`` is α1 of the paper's
    time-smoothness regularizer and ``weight_decay`` its α2; ``recipe`` names the paper
    data set whose recipe ``preset="paper"`` uses; ``bn_eps`` is the BatchNorm ε;
    ``normalization`` is N of the symmetric dynamics (``"tv"``, the paper's; ``"bias"``;
    ``"none"``) and ``rate_bound``, when positive, the fraction of the training method's
    stability limit that every parameter set's rate is held to by
    :func:`neuralpde.stability.constrain`, whose raw kernels start at ``raw_scale`` times
    their bounded value (the kernels' effective learning rate is the schedule's / raw_scale²).
    ``interpolation`` is θ(t) between the parameter sets: ``"constant"`` (the paper's
    ResNet layers, θ_j on the cell [j, j + 1)) or ``"linear"`` (continuous, knots at
    ``k T / (steps - 1)``; continuous-in-depth networks, Queiruga et al. 2020).
    ``certified`` trains the 1-Lipschitz configuration (:data:`CERTIFIED_RECIPE`) with
    the Lipschitz-margin cross-entropy of margin ``certified_margin`` (an ℓ2 radius in
    pixel units) and inverse temperature ``temperature`` (:func:`experiments.fit`). Each stage has ``steps`` parameter sets over ``T = steps``
    (h = 1, the paper's); ``solver`` and ``step_size`` say how training integrates it. Build one with :func:`resolve_config` to get the recipe's
    defaults filled in and the options checked.
    """

    arch: str = "parabolic"
    dataset: str = "digits"
    data_root: str = "data"
    download: bool = False
    preset: str | None = None
    recipe: str | None = None
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])
    steps: int = 3
    interpolation: str = "constant"
    step_size: float | None = None
    solver: str | None = None
    memory: str | None = None
    epochs: int = 12
    batch_size: int = 32
    lr_schedule: list[list[float]] = field(default_factory=list)
    lr_decay: str = "step"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    smoothness: float = 2e-4
    tau: float = 1e-3
    clip_weights: bool = False
    augment: bool = False
    bn_eps: float = 1e-5
    train_fraction: float = 1.0
    image_size: int | None = None
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    workers: int = 0
    out: str = "runs/digits-parabolic"
    nan: str = "stop"
    checkpoint_every: int = 0
    multilevel: list[int] = field(default_factory=list)
    random_steps: list[float] = field(default_factory=list)
    random_methods: list[str] = field(default_factory=list)
    stability_penalty: float = 0.0
    stability_margin: float = 1.0
    normalization: str = "tv"
    rate_bound: float = 0.0
    raw_scale: float = 1.0
    compile: bool = False
    certified: bool = False
    certified_margin: float = 0.0
    temperature: float = 1.0
    optimizer: str = "sgd"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config saved as ``d`` (``config.json``, a checkpoint's ``"config"``).

        Raises:
            ValueError: a key that is not a field of :class:`TrainConfig`.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}")
        cfg = cls(**d)
        if cfg.arch in neuralpde.archs() and not declares_rates(cfg.arch):
            # Runs saved before a bound or penalty was refused for dynamics without rates
            # (the ResNet control took the recipe's bound) were never constrained or
            # penalized: the same run.
            cfg.rate_bound, cfg.raw_scale, cfg.stability_penalty = 0.0, 1.0, 0.0
        return cfg

    @property
    def lr(self) -> float:
        """The first (largest) learning rate of the schedule."""
        return self.lr_schedule[0][1]


# Keys that change the numbers a run produces; a resumed run must agree on all of them.
# The rest (where to write, how many threads, how often to checkpoint, what to do on a
# NaN) do not change a healthy run's results.
NON_MATH_KEYS = {"out", "device", "threads", "workers", "checkpoint_every", "nan", "download"}

# The paper's recipe (Ruthotto & Haber 2020, Sec. 4): batch 125, SGD momentum 0.9,
# piecewise-constant lr, α1 (smoothness) and α2 (weight decay), augmentation and clipping
# to [-1, 1].
_PAPER_SCHEDULE = [[60, 0.1], [20, 0.02], [20, 0.004]]
PAPER_RECIPES: dict[str, dict[str, Any]] = {
    "cifar10": {"smoothness": 2e-4, "weight_decay": 2e-4, "lr_schedule": _PAPER_SCHEDULE},
    "cifar100": {
        "smoothness": 2e-4,
        "weight_decay": 2e-4,
        "lr_schedule": [[60, 0.1], [40, 0.02], [40, 0.004], [40, 0.0008], [20, 0.00016]],
    },
    "stl10": {"smoothness": 4e-4, "weight_decay": 1e-4, "lr_schedule": _PAPER_SCHEDULE},
}
# BatchNorm ε = 1e-4 is the authors' (their code's batch-norm layer, Meganet); PyTorch's is 1e-5.
PAPER_BN_EPS = 1e-4
# The image size of each recipe's data set (an image folder is resized to it).
RECIPE_IMAGE_SIZE = {"cifar10": 32, "cifar100": 32, "stl10": 96}
for _r in PAPER_RECIPES.values():
    _r.update(batch_size=125, momentum=0.9, augment=True, clip_weights=True, steps=3)
    _r["bn_eps"] = PAPER_BN_EPS
    _r["epochs"] = int(sum(p[0] for p in _r["lr_schedule"]))

# The quick recipe (no --preset): small widths, a 12-epoch schedule with two decays and
# the stability penalty. On digits it reaches >= 98 % test accuracy in seconds of CPU
# time, and the network keeps it under every solver of experiments.solver_swap.
QUICK_RECIPE: dict[str, Any] = {
    "widths": [16, 32, 64],
    "steps": 3,
    "epochs": 12,
    "batch_size": 32,
    "lr_schedule": [[7, 0.05], [3, 0.01], [2, 0.002]],
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "smoothness": 2e-4,
    "clip_weights": False,
    # Stable by construction: N an elementwise bias (gain 1, so the rate is exactly
    # ρ(KᵀK)) and every parameter set's h·z held to a quarter of the training method's
    # stability limit by the parametrization (neuralpde.stability.constrain). At a quarter
    # a forward-Euler step is close to the flow (a mode is multiplied by 1 - hz >= 0.5
    # where the flow gives exp(-hz)), so the trained θ(t) is a discretization of its ODE
    # and survives a solver swap (docs: tutorial 02's study, on digits and CIFAR-10).
    "normalization": "bias",
    "rate_bound": 0.25,
    "stability_penalty": 0.0,
}


# What --certified changes in the quick recipe: the 1-Lipschitz configuration. Every
# stage is parabolic-like with N an elementwise bias and h·ρ(KᵀK) <= 2 by construction
# (constrain at the whole limit: a forward-Euler step is then non-expansive, Baillon–
# Haddad), the opening, connectors and classifier have operator norms <= 1 and no
# BatchNorm (PDECNN(lipschitz=True)), and the loss is the Lipschitz-margin cross-entropy
# (Tsuzuku, Sato & Sugiyama, NeurIPS 2018) aimed at a radius of 0.15 pixel units on
# digits (on digits, 0.1 gave 98.3 % clean and 3.6 % certified at 0.25 after 60 epochs,
# 0.2 gave 94.2 % and 31.7 %; 36/255 elsewhere, below). No weight decay: it shrinks the kernels below their
# bound, and with them the margins the certificate divides by the bound.
CERTIFIED_RECIPE: dict[str, Any] = {
    "normalization": "bias",
    "rate_bound": 1.0,
    "weight_decay": 0.0,
    "smoothness": 0.0,
    "certified_margin": 0.15,
    "temperature": 32.0,
    # Adam: the norm-bounded layers are scale invariant in their raw weights, whose
    # gradients shrink as the raw norms grow; SGD at the quick recipe's rates stalls there
    # (digits: chance accuracy after 12 epochs), Adam's per-parameter scaling does not.
    "optimizer": "adam",
    "lr_decay": "cosine",
    "lr_schedule": [[50, 0.02]],
    "epochs": 50,
}
# --certified on photographs (CIFAR-10 and every data set but the digits): chosen on a
# quarter of the CIFAR-10 training images, 2 epochs, validation accuracy: lr 0.02 / τ 4
# gave 15.9 %, 0.005 / 8 23.3 %, 0.001 / 8 26.7 %, 0.002 / 4 27.1 % (margin 36/255 each).
# The digits' rate moves the norm-bounded layers' raw weights too far per step here.
CERTIFIED_IMAGES: dict[str, Any] = {
    "certified_margin": 36 / 255,
    "temperature": 4.0,
    "lr_schedule": [[50, 0.002]],
}


# What the quick recipe changes per arch: both hyperbolic networks train with Verlet, the
# second-order method of their schemes' kind, instead of the paper's first-order
# symplectic Euler and the leapfrog whose first step has a first-order velocity error
# h/2·F(Y_0). On CIFAR-10 (cpu budget) symplectic Euler's Hamiltonian network sat 4 points
# from its flow (67.7 % against 63.7 %, where Verlet, Yoshida, RK4 and dopri5 agreed),
# Verlet's is its flow (66.4 % under every converged method); the second-order network
# trained with leapfrog at 1/10 of the limit reached 59.5 % with its flow at 42.4 %, with
# Verlet at 1/4 65.8 % and its flow 66.8 %. On digits both keep every floor row at the test
# accuracy over seeds 0-3 x oneDNN on/off (benchmarks/results/hamiltonian_sweep.md,
# second_order_sweep.md).
QUICK_ARCH_OPTIONS: dict[str, dict[str, Any]] = {
    "second_order": {"solver": "verlet"},
    "hamiltonian": {"solver": "verlet"},
}


# What the quick recipe changes on photographs (every data set but the digits), per arch.
# Each network trains with a method held to a fraction of its limit (the hyperbolic ones
# Verlet, second order; the parabolic one forward Euler with a share for midpoint), each
# batch split evenly among the methods of its kind with the same limit
# (Stage.training_mix), so that the weights classify under several discretizations
# of one θ(t): a discretization of its ODE, not of one scheme. Measured on CIFAR-10 at the
# cpu budget (2,000 test images per swap table; tutorial 02,
# benchmarks/results/random_methods_cifar.md):
# Parabolic: forward Euler at 1/4 is stable there but 8 points from its flow (68.1 %, flow
# 61.5 %); midpoint at 1/2 with random steps was as accurate as the paper's scheme (69.4 %)
# but forward Euler at h = 1 lay 9 points below. Midpoint and forward Euler sharing each
# batch: seeds 0 and 1 68.7 % and 68.9 % test accuracy, every swap row at or above the
# training scheme, flow 69.8 % and 69.95 %, at 1.74x the paper's training time (Table 1).
# Forward Euler taking two shares of three and evaluating (validation, test, checkpoints)
# at 1/2: seeds 0 and 1 69.68 % and 69.08 %, its training step 1.51x the paper's against
# 1.64x (stable_cost --compile). At 7/10 so: seeds 0 and 1 69.97 % and 70.11 % (the
# paper's scheme 69.9 % in Table 1; on the CPU of these runs 70.85 % and 71.57 %), every
# row within 0.75 points of the test accuracy or above it (midpoint the lowest), flow
# 69.7 % and 69.9 %: 0.88 and 1.46 points below the paper's scheme. At 8/10 so: seeds 0
# and 1 70.10 % and 70.70 % (0.75 and 0.87 below the paper's scheme on the same CPU; in
# one table call with it, 70.55 % against 71.05 %, 1.51x its training time),
# every row within 0.35 points of the test accuracy or above it (midpoint the lowest),
# flow 70.25 % and 71.05 %. At 9/10, 70.91 % and 70.56 %, but forward Euler at h = 1 lay
# 2.5 points above the flow and the flow 1.06 below the test accuracy (seed 0). At 8/10
# with three shares of four to forward Euler (midpoint's share is what the step costs:
# 1.37x the paper's step against 1.44x): seeds 0 and 1 70.85 % and 70.75 % (0.00 and 0.82
# below the paper's scheme on their CPU), every row within 0.8 points of the test
# accuracy or above it (midpoint the lowest), flow 71.05 % and 70.20 %.
# Hamiltonian: Verlet at 1/4 costs 5.5 points against the paper's scheme (66.0 % against
# 71.5 %); at 9/10 with Verlet, symplectic Euler and leapfrog sharing each batch: seeds 0
# and 1 69.5 % and 69.6 %, every judged row within 0.4 points of the scheme (forward
# Euler at h = 1 within 1.7), flow 70.45 % and 70.4 %. At the whole limit so: seeds 0 and
# 1 70.05 % and 70.94 % (the paper's scheme 71.0 % in Table 1; on the CPU of these runs
# 71.50 % and 71.34 %, 1.45 and 0.40 points above; seed 2 68.92 % against 70.52 %), every
# judged row at or above the test accuracy on seeds 0 and 2 and within 0.15 points of it
# on seed 1, flow 71.15 %, 71.05 % and 69.6 %. With leapfrog's share dropped (Verlet and
# symplectic Euler halves; the two first-order methods differ only in their first step,
# and symplectic Euler's share holds leapfrog's row too): seeds 0-3 69.86 %, 70.72 %,
# 69.38 % and 69.53 % against the three-way 70.05 %, 70.94 %, 68.92 % and 68.64 %, the
# paper's scheme 1.18 points above on average and at most 1.64 (the three-way: 1.41 and
# 2.18), every judged row within 0.8 points of the test accuracy or above it.
# Its raw kernels then start at twice the bound (raw scale 2: the parametrization is scale
# invariant there, so the kernels learn at a quarter of the rate, the function unchanged;
# held on the bound after every step instead, validation fell 3.7 points by epoch 2):
# seeds 0-3 70.44 %, 70.06 %, 69.80 % and 69.84 %, 1.06, 1.28, 0.72 and 0.98 points below
# the paper's scheme on the same CPU (mean 1.01; raw scale 1: 1.18); seed 0 every judged
# row at or above the test accuracy (leapfrog 70.85 % the lowest, flow 71.80 %).
# Forward Euler at h = 1 (not judged) falls 4.0 and 3.4 points below the scheme there. At
# h·ω = 2 the three methods' step matrix has the double eigenvalue -1, not diagonalizable
# (that step repeated grows linearly); the bound is per parameter set, at 9/10 as at 1.
# Second order: at 9/10 with random steps alone 72.4 % but no ODE (forward Euler x4 57 %,
# leapfrog 12 %); at 7/10 with the three symplectic methods sharing each batch, seeds 0
# and 1 68.2 % and 65.8 %, every judged row within 1.1 points of the scheme (leapfrog
# 68.55 % and 66.95 %), flow 68.55 % and 65.9 %; at 9/10 so, 67.25 % (seed 0). With its
# raw kernels at twice the bound too, seeds 0 and 1 68.82 % and 68.91 %, every judged row
# within 0.7 points of the test accuracy or above it, flow 69.85 % and 69.20 % (the
# paper's scheme 71.82 % on seed 0: 3.0 points below, where raw scale 1 was 3.65).
# Drawing the method per batch instead left BatchNorm's running statistics of the last
# batches' draws (the second-order network's leapfrog row at 54 %; the parabolic network
# of seed 1 at 64.5 % under its own midpoint, 69.6 % under forward Euler).
# The options of one arch are one choice: the bound is that large only because the methods
# share each batch (and the hyperbolic networks' method is second order), so giving any
# option of how training discretizes θ(t) (DISCRETIZATION_KEYS) replaces them all.
IMAGES_ARCH_OPTIONS: dict[str, dict[str, Any]] = {
    "parabolic": {
        "solver": "euler",
        "rate_bound": 0.8,
        "random_methods": ["euler", "euler", "euler", "midpoint"],
    },
    "hamiltonian": {
        "solver": "verlet",
        "rate_bound": 1.0,
        "random_methods": ["verlet", "symplectic_euler"],
        "raw_scale": 2.0,
    },
    "second_order": {
        "solver": "verlet",
        "rate_bound": 0.7,
        "random_methods": ["verlet", "symplectic_euler", "leapfrog"],
        "raw_scale": 2.0,
    },
}


def _in_words(arch: str, options: dict[str, Any]) -> str:
    bound = "the whole" if options["rate_bound"] == 1 else f"{options['rate_bound']:g}"
    methods = ",".join(options["random_methods"])
    raw = f", raw scale {options['raw_scale']:g}" if options.get("raw_scale", 1) != 1 else ""
    return (
        f"{arch} {options['solver']} at {bound} of its limit with {methods} sharing each batch{raw}"
    )


# The photographs' defaults in words, for --help (built from the table, so never stale).
_PHOTOGRAPHS = "; ".join(_in_words(arch, o) for arch, o in IMAGES_ARCH_OPTIONS.items())
_RAW_SCALES = (
    ", ".join(
        f"{o['raw_scale']:g} for the {arch} network"
        for arch, o in IMAGES_ARCH_OPTIONS.items()
        if o.get("raw_scale", 1) != 1
    )
    or "1 too"
)
DISCRETIZATION_KEYS = {
    "solver",
    "step_size",
    "multilevel",
    "random_steps",
    "random_methods",
    "stability_penalty",
    "rate_bound",
}


def _flag_value(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(map(str, v))
    return f"{v:g}" if isinstance(v, float) else str(v)


def raw_scale_in_words(cfg: TrainConfig) -> str:
    """``cfg.raw_scale`` in words, for the run's log and its report (one wording)."""
    # SGD's step of a scale-invariant kernel falls as 1/s², Adam's (which does not follow
    # the gradient's size) as 1/s.
    power = 2 if cfg.optimizer == "sgd" else 1
    return (
        f"raw scale {cfg.raw_scale:g} (raw kernels started at {cfg.raw_scale:g}× their "
        f"bounded value: the bounded kernels' learning rate / {cfg.raw_scale**power:g})"
    )


def discretization_in_words(cfg: TrainConfig) -> str:
    """How ``cfg`` discretizes θ(t) in training, in one line for the run's log.

    On photographs it also says when this is not the arch's default there: giving any
    option of :data:`DISCRETIZATION_KEYS` replaces the whole default, so an option given
    alone (``--random-methods`` without ``--rate-bound``) runs at the digits' bound.
    """
    method = cfg.solver or neuralpde.archs()[cfg.arch].default_method
    parts = [f"solver {method}"]
    if cfg.interpolation != "constant":
        parts.append(f"θ(t) {cfg.interpolation}")
    parts.append(
        f"rate bound {cfg.rate_bound:g} (the fraction of its stability limit)"
        if cfg.rate_bound
        else "no rate bound"
    )
    if cfg.step_size:
        parts.append(f"step size {cfg.step_size:g}")
    for name in ("random_methods", "random_steps", "multilevel"):
        if getattr(cfg, name):
            parts.append(f"{name.replace('_', ' ')} {','.join(map(str, getattr(cfg, name)))}")
    if cfg.stability_penalty:
        parts.append(f"stability penalty {cfg.stability_penalty:g}")
    if cfg.raw_scale != 1:
        parts.append(raw_scale_in_words(cfg))
    line = "training discretization: " + ", ".join(parts)
    default = IMAGES_ARCH_OPTIONS.get(cfg.arch)
    on_photographs = cfg.dataset != "digits" and not cfg.preset and not cfg.certified
    # The paper's scheme (--normalization tv --rate-bound 0) replaces the default on
    # purpose, whole: nothing of it is left to take the digits' value unawares.
    paper_scheme = cfg.normalization == "tv" and not cfg.rate_bound and not cfg.stability_penalty
    on_photographs = on_photographs and not paper_scheme
    # Only a discretization option replaces the default whole (--raw-scale alone does not).
    departed = default is not None and any(
        getattr(cfg, k) != v for k, v in default.items() if k in DISCRETIZATION_KEYS
    )
    if on_photographs and departed:
        flags = " ".join(f"--{k.replace('_', '-')} {_flag_value(v)}" for k, v in default.items())
        line += (
            f". Not the photographs' default for {cfg.arch} ({flags}): any option of how "
            "training discretizes θ(t) replaces that default whole, and what is not given "
            "takes the digits' value; to change one of these, give all of them"
        )
    return line


def scale_schedule(schedule: list[list[float]], epochs: int, lr: float | None) -> list[list[float]]:
    """The same phases stretched to ``epochs`` (each >= 1 epoch) and rates scaled to ``lr``.

    Example: ``[[60, .1], [20, .02], [20, .004]]`` at 10 epochs is ``[[6, .1], [2, .02],
    [2, .004]]``. Phases that no longer fit are dropped from the end.
    """
    total = sum(p[0] for p in schedule)
    factor = 1.0 if lr is None else lr / schedule[0][1]
    out, used = [], 0
    for k, (n, rate) in enumerate(schedule):
        if used >= epochs:
            break
        last = k == len(schedule) - 1
        m = epochs - used if last else max(1, round(n * epochs / total))
        m = min(m, epochs - used)
        out.append([int(m), rate * factor])
        used += m
    if used < epochs:
        out[-1][0] += epochs - used
    return out


def lr_at(schedule: list[list[float]], epoch: int) -> float:
    """Learning rate of 0-based ``epoch`` under a ``[[epochs, lr], ...]`` schedule."""
    end = 0
    for n, rate in schedule:
        end += n
        if epoch < end:
            return rate
    return schedule[-1][1]


def lr_now(cfg: TrainConfig, epoch: int, batch: int, num_batches: int) -> float:
    """The learning rate of batch ``batch`` (0-based) of ``epoch`` (0-based), a pure
    function of its arguments so that a resumed run takes the same steps.

    ``cfg.lr_decay == "step"``: :func:`lr_at` of the epoch (the paper's piecewise-constant
    schedule). ``"cosine"``: the first rate times ``(1 + cos(pi s)) / 2`` with ``s`` the
    fraction of all training batches done, i.e. cosine annealing to 0 without restarts
    (Loshchilov & Hutter, SGDR, ICLR 2017), which short budgets reach further with than
    with a few steps.
    """
    if cfg.lr_decay == "step":
        return lr_at(cfg.lr_schedule, epoch)
    s = (epoch + batch / max(num_batches, 1)) / cfg.epochs
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(s, 1.0)))


class ConfigError(ValueError):
    """A training option is invalid or inconsistent with another one."""


def _positive(name: str, value: Any, kind=int) -> None:
    if value is None:
        return
    if not isinstance(value, kind) or isinstance(value, bool) or not value > 0:
        raise ConfigError(f"{name} must be a positive {kind.__name__}, got {value!r}")


def resolve_config(base: TrainConfig | None = None, **given: Any) -> TrainConfig:
    """A checked :class:`TrainConfig` from explicitly ``given`` options (``None`` = unset).

    Options not given come from ``base`` when resuming, else from the recipe: the paper's
    for ``preset="paper"`` (of data set ``recipe``: by default ``dataset`` itself; an
    image folder must name one), the quick one otherwise. ``epochs`` and ``lr`` given
    with a recipe stretch and scale its schedule; a given ``lr_schedule`` replaces it.

    Raises:
        ConfigError: an invalid value or two options that contradict each other, with
            what was given and what is expected.
    """
    given = {k: v for k, v in given.items() if v is not None}
    names = {f.name for f in dataclasses.fields(TrainConfig)} | {"lr"}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ConfigError(f"unknown options {unknown}; valid: {sorted(names)}")
    if base is not None:
        cfg = TrainConfig.from_dict(base.to_dict())
        if "lr" in given or "epochs" in given:
            cfg.lr_schedule = scale_schedule(
                cfg.lr_schedule, given.get("epochs", cfg.epochs), given.get("lr")
            )
        for k, v in given.items():
            if k != "lr":
                setattr(cfg, k, v)
        _check(cfg)
        return cfg

    dataset = given.get("dataset", "digits")
    if dataset not in DATASETS:
        raise ConfigError(f"--dataset must be one of {list(DATASETS)}, got {dataset!r}")
    preset = given.get("preset")
    if preset is not None and preset != "paper":
        raise ConfigError(f"--preset must be 'paper', got {preset!r}")
    recipe_name = given.get("recipe")
    if recipe_name is not None and recipe_name not in PAPER_DATASETS:
        raise ConfigError(f"--recipe must be one of {list(PAPER_DATASETS)}, got {recipe_name!r}")
    if recipe_name is not None and preset != "paper":
        raise ConfigError(
            f"--recipe {recipe_name} names which of the paper's recipes --preset paper uses; "
            "add --preset paper (or drop --recipe for the quick recipe)"
        )
    if preset == "paper":
        if dataset in PAPER_DATASETS and recipe_name not in (None, dataset):
            raise ConfigError(
                f"--recipe {recipe_name} contradicts --dataset {dataset}, whose recipe is "
                f"its own; drop --recipe"
            )
        if dataset == "imagefolder" and recipe_name is None:
            raise ConfigError(
                "--preset paper on an image folder needs --recipe, the paper data set whose "
                f"recipe and network to use: one of {list(PAPER_DATASETS)} (e.g. --recipe "
                "cifar10 for CIFAR-10 images in class folders)"
            )
        if dataset not in PAPER_DATASETS and dataset != "imagefolder":
            raise ConfigError(
                f"--preset paper is the recipe of the paper's data sets {list(PAPER_DATASETS)} "
                f"(or of an image folder holding one, with --recipe); --dataset {dataset} has "
                "none (drop --preset to use the quick recipe)"
            )
        recipe_name = recipe_name or dataset
        given["recipe"] = recipe_name
        if "widths" in given:
            raise ConfigError(
                "--widths contradicts --preset paper, whose widths are the paper's Table 1 "
                "(PDECNN.from_paper); drop one of them"
            )
        if given.get("interpolation", "constant") != "constant":
            raise ConfigError(
                f"--interpolation {given['interpolation']} contradicts --preset paper, whose "
                "θ(t) is the paper's, constant on each step's cell; drop one of them"
            )
        recipe = dict(PAPER_RECIPES[recipe_name], widths=None)
    else:
        recipe = dict(QUICK_RECIPE, augment=dataset != "digits")
        # The arch's defaults belong to the stable configuration: each stays unless given,
        # and none with the bound turned off (--rate-bound 0 is the paper's scheme).
        if given.get("rate_bound", recipe["rate_bound"]) != 0:
            arch_opts = QUICK_ARCH_OPTIONS.get(given.get("arch", "parabolic"), {})
            recipe.update({k: v for k, v in arch_opts.items() if k not in given})
        on_photographs = dataset != "digits" and not given.get("certified")
        if on_photographs and not DISCRETIZATION_KEYS & set(given):
            recipe.update(IMAGES_ARCH_OPTIONS.get(given.get("arch", "parabolic"), {}))
        if given.get("certified"):
            recipe.update(CERTIFIED_RECIPE)
            if dataset != "digits":
                recipe.update(CERTIFIED_IMAGES)
    cfg = TrainConfig(dataset=dataset, preset=preset, out=f"runs/{dataset}-parabolic")
    for k, v in recipe.items():
        setattr(cfg, k, v)
    cfg.out = f"runs/{dataset}-{given.get('arch', 'parabolic')}"
    for k, v in given.items():
        if k not in ("lr", "epochs"):
            setattr(cfg, k, v)
    _positive("--epochs", given.get("epochs"))
    _positive("--lr", given.get("lr"), float)
    epochs = given.get("epochs", cfg.epochs)
    if "lr_schedule" in given:
        if "lr" in given:
            raise ConfigError("lr and lr_schedule contradict each other; give one of them")
        cfg.lr_schedule = [[int(n), float(rate)] for n, rate in given["lr_schedule"]]
        epochs = given.get("epochs", int(sum(n for n, _ in cfg.lr_schedule)))
    elif cfg.lr_decay == "cosine":
        # Cosine annealing starts from one rate: the recipe's first, or the given --lr.
        cfg.lr_schedule = [[int(epochs), float(given.get("lr", recipe["lr_schedule"][0][1]))]]
    else:
        cfg.lr_schedule = scale_schedule(recipe["lr_schedule"], epochs, given.get("lr"))
    cfg.epochs = epochs
    if "rate_bound" not in given and cfg.solver in solvers.methods():
        if solvers.methods()[cfg.solver] == "adaptive":
            # The recipe's bound is for a fixed step; an adaptive solver chooses its own
            # (and stays stable by its error control).
            cfg.rate_bound = 0.0
    if "rate_bound" not in given and not declares_rates(cfg.arch):
        # The recipe's bound is for dynamics with a stability limit; the ResNet control
        # declares no rates, so there is nothing to bound (and no line saying otherwise).
        cfg.rate_bound = 0.0
    if "normalization" not in given and not takes_normalization(cfg.arch):
        # The recipe's normalization is for the symmetric dynamics; the ResNet control
        # (and a user's dynamics without the option) keeps its own.
        cfg.normalization = "tv"
    if cfg.dataset == "imagefolder" and cfg.image_size is None:
        cfg.image_size = RECIPE_IMAGE_SIZE.get(cfg.recipe, 32)
    _check(cfg)
    return cfg


def takes_normalization(arch: str) -> bool:
    """Whether the dynamics registered as ``arch`` takes ``normalization`` (the paper's
    symmetric dynamics do; the ResNet control does not)."""
    cls = neuralpde.archs().get(arch)
    return cls is not None and "normalization" in inspect.signature(cls).parameters


def declares_rates(arch: str) -> bool:
    """Whether the dynamics registered as ``arch`` declares its rates (overrides
    :meth:`neuralpde.RHS.rates`), so that ``--rate-bound`` has a limit to hold a fraction
    of (the paper's symmetric dynamics do; the ResNet control does not)."""
    cls = neuralpde.archs().get(arch)
    return cls is not None and cls.rates is not neuralpde.RHS.rates


def _check(cfg: TrainConfig) -> None:
    archs = neuralpde.archs()
    if cfg.arch not in archs:
        raise ConfigError(f"--arch must be one of {list(archs)}, got {cfg.arch!r}")
    dynamics = archs[cfg.arch]
    if not isinstance(cfg.bn_eps, (int, float)) or not cfg.bn_eps > 0:
        raise ConfigError(f"bn_eps must be a positive float, got {cfg.bn_eps!r}")
    for name in ("epochs", "batch_size", "steps"):
        _positive(f"--{name.replace('_', '-')}", getattr(cfg, name))
    if cfg.step_size is not None:
        _positive("--step-size", cfg.step_size, float)
    if cfg.widths is not None:
        w = list(cfg.widths)
        if len(w) < 2 or not all(isinstance(x, int) and x > 0 for x in w):
            raise ConfigError(f"--widths needs at least two positive ints, got {cfg.widths!r}")
        for x in w[:-1]:
            try:
                dynamics.check_width(x)
            except ValueError as err:
                raise ConfigError(f"--widths {w}: {err}") from None
    if not 0 < cfg.train_fraction <= 1:
        raise ConfigError(f"--train-fraction must be in (0, 1], got {cfg.train_fraction}")
    if cfg.nan not in NAN_POLICIES:
        raise ConfigError(f"--nan must be one of {list(NAN_POLICIES)}, got {cfg.nan!r}")
    kinds = solvers.methods()
    if cfg.solver is not None and cfg.solver not in kinds:
        raise ConfigError(f"--solver must be one of {sorted(kinds)}, got {cfg.solver!r}")
    # What the dynamics allows (neuralpde.RHS.check_solver), then what the method allows
    # (solvers.Solver): each rule lives there, once.
    method = cfg.solver or dynamics.default_method
    memory = cfg.memory or "autograd"
    try:
        dynamics.check_solver(method, memory)
        solvers.Solver(method, step_size=cfg.step_size, memory=memory)
    except (ValueError, TypeError) as err:
        raise ConfigError(
            f"--arch {cfg.arch} --solver {method} ({kinds[method]}) --memory {memory}: {err}"
        ) from None
    if cfg.dataset == "digits" and cfg.download:
        raise ConfigError("--download: the digits ship with scikit-learn; nothing to download")
    if cfg.image_size is not None:
        if cfg.dataset != "imagefolder":
            raise ConfigError(
                f"--image-size applies to --dataset imagefolder only; {cfg.dataset} images "
                "have their own size"
            )
        _positive("--image-size", cfg.image_size)
    _check_strategies(cfg, kinds)
    _check_certified(cfg)
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"--optimizer must be one of {list(OPTIMIZERS)}, got {cfg.optimizer!r}")
    if cfg.checkpoint_every < 0 or cfg.workers < 0:
        raise ConfigError("--checkpoint-every and --workers must be >= 0")
    if cfg.threads is not None:
        _positive("--threads", cfg.threads)
    dev = str(cfg.device)
    if not (dev == "cpu" or dev.startswith("cuda") or dev == "mps"):
        raise ConfigError(f"--device must be cpu, cuda, cuda:N or mps, got {dev!r}")
    if cfg.lr_decay not in LR_DECAYS:
        raise ConfigError(f"--lr-decay must be one of {list(LR_DECAYS)}, got {cfg.lr_decay!r}")
    if cfg.lr_decay == "cosine" and len(cfg.lr_schedule) != 1:
        raise ConfigError(
            f"--lr-decay cosine anneals one rate to 0, but lr_schedule {cfg.lr_schedule} has "
            f"{len(cfg.lr_schedule)} phases; give one phase [[epochs, lr]] (or --lr), or "
            "--lr-decay step for the phases"
        )
    total = sum(p[0] for p in cfg.lr_schedule)
    if total != cfg.epochs or not all(p[1] > 0 and math.isfinite(p[1]) for p in cfg.lr_schedule):
        raise ConfigError(f"lr_schedule {cfg.lr_schedule} does not cover {cfg.epochs} epochs")


def _check_strategies(cfg: TrainConfig, kinds: dict[str, str]) -> None:
    """The options that make a trained θ(t) a good ODE (multilevel, random steps, the
    stability penalty) are consistent with each other and with the solver."""
    fixed = cfg.solver is None or kinds.get(cfg.solver) != "adaptive"
    ml = list(cfg.multilevel)
    if ml:
        if not all(isinstance(e, int) and not isinstance(e, bool) for e in ml) or ml != sorted(
            set(ml)
        ):
            raise ConfigError(f"--multilevel needs increasing epoch numbers, got {ml}")
        if ml[0] < 2 or ml[-1] > cfg.epochs:
            raise ConfigError(
                f"--multilevel: θ(t) can be prolongated at the start of epochs 2..{cfg.epochs} "
                f"(the coarse level needs an epoch, and the run ends on the fine one); got {ml}"
            )
    rs = list(cfg.random_steps)
    if rs:
        if not all(isinstance(h, (int, float)) and math.isfinite(h) and h > 0 for h in rs):
            raise ConfigError(f"--random-steps needs positive step sizes, got {rs}")
        if not fixed:
            raise ConfigError(
                f"--random-steps splits each batch among fixed steps; --solver {cfg.solver} is adaptive"
            )
        if ml:
            raise ConfigError(
                "--random-steps are absolute step sizes and --multilevel halves the cells; "
                "use one of the two"
            )
        if cfg.step_size is not None:
            raise ConfigError(
                "--random-steps replaces --step-size during training (evaluation uses "
                "--step-size); give the training steps in --random-steps only"
            )
    _check_random_methods(cfg, kinds)
    if cfg.interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"--interpolation must be one of {list(INTERPOLATIONS)}, got {cfg.interpolation!r}"
        )
    if cfg.interpolation == "linear" and cfg.steps < 2:
        raise ConfigError(
            f"--interpolation linear needs --steps >= 2 (knots at both ends of each stage), "
            f"got {cfg.steps}; give more steps or drop --interpolation linear"
        )
    # θ(t) is constant on cells of one time unit. A training step that does not divide a
    # cell straddles a jump of θ, and the weights learn where the steps sample θ, not θ(t):
    # on CIFAR-10 the Hamiltonian network trained at h = 0.75 (Verlet samples θ_0, θ_1, θ_1,
    # θ_2) reached 70.7 % under its scheme and 54 % under its flow.
    # A continuous θ(t) has no jumps to straddle.
    constant = cfg.interpolation == "constant"
    for flag, steps in (
        ("--step-size", [cfg.step_size] if cfg.step_size and constant else []),
        ("--random-steps", rs if constant else []),
    ):
        for h in steps:
            if abs(round(1 / h) * h - 1) > 1e-9:
                raise ConfigError(
                    f"{flag} {h:g}: a training step must divide θ(t)'s cells (each parameter "
                    "set holds for one time unit), so 1/n: 1, 0.5, 0.25, ...; a step of "
                    f"{h:g} straddles the jumps of θ(t), and the weights would learn where "
                    "the steps sample θ rather than θ(t), a network that is no ODE"
                )
    if not (math.isfinite(cfg.stability_penalty) and cfg.stability_penalty >= 0):
        raise ConfigError(f"--stability-penalty must be >= 0, got {cfg.stability_penalty}")
    if not (math.isfinite(cfg.stability_margin) and cfg.stability_margin > 0):
        raise ConfigError(f"--stability-margin must be positive, got {cfg.stability_margin}")
    if cfg.normalization not in NORMALIZATIONS:
        raise ConfigError(
            f"--normalization must be one of {list(NORMALIZATIONS)}, got {cfg.normalization!r}"
        )
    if cfg.normalization != "tv" and not takes_normalization(cfg.arch):
        raise ConfigError(
            f"--normalization {cfg.normalization}: the {cfg.arch} dynamics has no choice of "
            "normalization (only parabolic, hamiltonian and second_order do); drop the option"
        )
    if not (math.isfinite(cfg.rate_bound) and 0 <= cfg.rate_bound <= 1):
        raise ConfigError(
            f"--rate-bound is a fraction of the stability limit in (0, 1] (0: off), got "
            f"{cfg.rate_bound}"
        )
    if cfg.rate_bound and not declares_rates(cfg.arch):
        raise ConfigError(
            f"--rate-bound {cfg.rate_bound:g}: the {cfg.arch} dynamics declares no rates "
            "(RHS.rates), so it has no stability limit to hold a fraction of; drop "
            "--rate-bound, or write rates for the dynamics"
        )
    if cfg.stability_penalty and not declares_rates(cfg.arch):
        raise ConfigError(
            f"--stability-penalty {cfg.stability_penalty:g}: the {cfg.arch} dynamics declares "
            "no rates (RHS.rates), so the penalty would add nothing; drop "
            "--stability-penalty, or write rates for the dynamics"
        )
    if cfg.rate_bound and not fixed:
        raise ConfigError(
            f"--rate-bound holds h·z inside a fixed step's limit; --solver {cfg.solver} is adaptive"
        )
    if cfg.rate_bound and rs and max(rs) > (cfg.step_size or 1.0):
        raise ConfigError(
            f"--rate-bound holds h·z for steps up to the network's step "
            f"({cfg.step_size or 1.0:g}), and --random-steps {rs} has larger ones; give "
            "steps no larger than it, or drop --rate-bound (--rate-bound 0)"
        )
    if (
        isinstance(cfg.raw_scale, bool)
        or not isinstance(cfg.raw_scale, (int, float))
        or not 1 <= cfg.raw_scale < math.inf
    ):
        raise ConfigError(
            f"--raw-scale is where the bounded kernels' raw values start, a multiple >= 1 of "
            f"their bounded value (1: on the bound), got {cfg.raw_scale!r}"
        )
    if cfg.raw_scale != 1 and not cfg.rate_bound:
        raise ConfigError(
            f"--raw-scale {cfg.raw_scale:g} sets the learning rate of the kernels --rate-bound "
            "parametrizes, and this run has no rate bound; drop --raw-scale, or give "
            "--rate-bound"
        )
    if cfg.stability_penalty and not fixed:
        raise ConfigError(
            f"--stability-penalty bounds h·ρ for a fixed step; --solver {cfg.solver} is adaptive"
        )


def _model_problem(dynamics: type[neuralpde.RHS]) -> str | None:
    """The model problem (``"dissipative"``, ``"oscillatory"`` or ``None``) a dynamics'
    spectrum declares, read from a small instance of it."""
    for width in (2, 4, 8, 16):
        try:
            dynamics.check_width(width)
        except ValueError:
            continue
        spec = dynamics(width, steps=1).spectrum(4, 4, iters=5)
        return None if spec is None else spec.model
    return None


def _check_random_methods(cfg: TrainConfig, kinds: dict[str, str]) -> None:
    """``--random-methods``: fixed-step methods the dynamics and memory mode take, each at
    least as stable as the training method whose limit ``--rate-bound`` holds the rates to."""
    if isinstance(cfg.random_methods, str):
        raise ConfigError(
            f"random_methods is a list of method names, got the string {cfg.random_methods!r} "
            '(e.g. ["verlet", "leapfrog"]; on the command line: --random-methods verlet,leapfrog)'
        )
    rm = list(cfg.random_methods)
    if not rm:
        return
    dynamics = neuralpde.archs()[cfg.arch]
    memory = cfg.memory or "autograd"
    fixed = sorted(m for m, kind in kinds.items() if kind != "adaptive")
    for m in rm:
        if m not in kinds:
            raise ConfigError(f"--random-methods: unknown method {m!r}; one of {fixed}")
        if kinds[m] == "adaptive":
            raise ConfigError(
                f"--random-methods splits each batch among fixed-step methods; {m} is adaptive "
                f"(fixed-step methods: {fixed})"
            )
        try:
            dynamics.check_solver(m, memory)
            solvers.Solver(m, memory=memory)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"--random-methods {m} (--arch {cfg.arch}): {err}") from None
    if cfg.solver is not None and kinds.get(cfg.solver) == "adaptive":
        raise ConfigError(
            f"--random-methods takes fixed-step methods; --solver {cfg.solver} is adaptive"
        )
    model = _model_problem(dynamics)
    own = cfg.solver or dynamics.default_method
    for m in rm:
        if model is not None and not neuralpde.stability.stability_limit(m, model):
            raise ConfigError(
                f"--random-methods {m}: no step of it is stable on the {cfg.arch} dynamics "
                f"({model} modes grow under it at every step size); drop it"
            )
    if own not in rm:
        # Validation, checkpoints and the report use the training method.
        raise ConfigError(
            f"--random-methods {','.join(rm)} does not list the training method {own}, which "
            "validation and the report use; add it, or give one of them as --solver"
        )
    if cfg.rate_bound:
        c0 = None if model is None else neuralpde.stability.stability_limit(own, model)
        for m in rm:
            c = None if c0 is None else neuralpde.stability.stability_limit(m, model)
            if c0 is not None and (c is None or c < c0 - 1e-6):
                raise ConfigError(
                    f"--random-methods {m}: its stability limit on the {cfg.arch} dynamics "
                    f"(h·z <= {c or 0:.3g}) is below that of the training method {own} "
                    f"(h·z <= {c0:.3g}), which --rate-bound holds the rates to; list methods "
                    "at least as stable as --solver, or give the least stable one as --solver"
                )


def _check_certified(cfg: TrainConfig) -> None:
    """``--certified`` is a network whose Lipschitz bound is useful: what contradicts it."""
    if not cfg.certified:
        if cfg.certified_margin:
            raise ConfigError("--certified-margin is the margin of --certified training; add it")
        if cfg.temperature != 1.0:  # the plain cross-entropy has none
            raise ConfigError("--temperature is that of --certified's margin loss; add it")
        return
    if cfg.preset == "paper":
        raise ConfigError(
            "--certified contradicts --preset paper: the paper's network has BatchNorm and "
            "the TV normalization, whose bounds are vacuous; drop one of them"
        )
    if cfg.arch == "resnet":
        raise ConfigError(
            "--certified: the resnet control has the TV normalization only (gain up to "
            "|scale|/sqrt(eps): a finite but vacuous bound); use --arch parabolic, "
            "hamiltonian, second_order or a dynamics of your own that declares a bound"
        )
    if takes_normalization(cfg.arch) and cfg.normalization == "tv":
        raise ConfigError(
            "--certified with --normalization tv: the TV normalization's gain |scale|/"
            "sqrt(eps) makes the Lipschitz bound vacuous; use --normalization bias (the "
            "default of --certified)"
        )
    if not (math.isfinite(cfg.certified_margin) and cfg.certified_margin >= 0):
        raise ConfigError(f"--certified-margin must be >= 0, got {cfg.certified_margin}")
    if not (math.isfinite(cfg.temperature) and cfg.temperature > 0):
        raise ConfigError(f"--temperature must be positive, got {cfg.temperature}")


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 1,0.5, got {text!r}"
        ) from None


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated method names, got {text!r}")
    return names


def _widths(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated ints such as 16,32,64, got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m experiments.train`` command line (every default is ``None``: unset)."""
    p = argparse.ArgumentParser(
        prog="python -m experiments.train",
        description="Train a PDE-motivated CNN, evaluate it on the test set, write a report. "
        "With no options: a parabolic network on scikit-learn's 8x8 digits (under a minute "
        "on 2 CPU cores).",
        allow_abbrev=False,
    )
    a = p.add_argument
    a("--arch", choices=ARCHS, help="dynamic of the PDE blocks (default: parabolic)")
    a("--dataset", choices=DATASETS, help="data set (default: digits)")
    a("--data-root", help="where data sets live (default: data)")
    a("--download", action="store_true", default=None, help="download a missing data set")
    a(
        "--preset",
        choices=("paper",),
        help="the paper's recipe for the data set (Ruthotto & Haber 2020, Sec. 4; tutorial 6)",
    )
    a("--recipe", choices=PAPER_DATASETS, help="with --preset paper: whose recipe (imagefolder)")
    a("--widths", type=_widths, help="stage widths plus the final width, e.g. 16,32,64")
    a("--steps", type=int, help="time steps (parameter sets) per stage (default 3)")
    a(
        "--interpolation",
        choices=INTERPOLATIONS,
        help="theta(t) between parameter sets: constant on each step's cell (default, the "
        "paper's) or linear (continuous, knots at k*T/(steps-1): continuous-in-depth, "
        "Queiruga et al. 2020)",
    )
    a("--epochs", type=int, help="epochs; a recipe's lr schedule is stretched to fit")
    a("--batch-size", type=int, help="global batch size (split over processes under torchrun)")
    a("--lr", type=float, help="initial learning rate; later phases keep their ratios")
    a(
        "--lr-decay",
        choices=LR_DECAYS,
        help="step: the schedule's phases (default); cosine: anneal the first rate to 0 "
        "batch by batch (Loshchilov & Hutter 2017)",
    )
    a("--weight-decay", type=float, help="alpha2 of the regularizer (SGD weight decay)")
    a("--smoothness", type=float, help="alpha1 of the time-smoothness regularizer on theta")
    a("--clip-weights", action=argparse.BooleanOptionalAction, help="clip weights to [-1, 1]")
    a("--augment", action=argparse.BooleanOptionalAction, help="flip + pad + random crop")
    a(
        "--solver",
        help="training solver of every stage (default on the digits: forward Euler for the "
        f"parabolic network, Verlet for the hyperbolic ones; on photographs {_PHOTOGRAPHS}; "
        "given alone there, it drops the rest of that default: see --rate-bound)",
    )
    a(
        "--step-size",
        type=float,
        help="training solver's step, 1/n to divide θ(t)'s unit cells (any step with "
        "--interpolation linear; default: h = 1, one per parameter set)",
    )
    a(
        "--multilevel",
        type=_widths,
        help="multilevel training in time: prolongate theta(t) 2x at the start of these "
        "epochs, e.g. 5,9 (Haber, Ruthotto & Holtham 2018)",
    )
    a(
        "--random-steps",
        type=_floats,
        help="split each training batch evenly among these steps of the training solver, "
        "e.g. 1,0.5",
    )
    a(
        "--random-methods",
        type=_names,
        help="split each training batch evenly among these fixed-step methods, e.g. "
        "verlet,symplectic_euler,leapfrog: each at least as stable as --solver, which "
        "must be among them (validation and the report use it); a method named n times "
        "takes n shares (euler,euler,euler,midpoint: three to one). Default: none on the "
        f"digits; on photographs {_PHOTOGRAPHS} (given alone there, it drops the rest of "
        "that default: see --rate-bound)",
    )
    a(
        "--stability-penalty",
        type=float,
        help="weight of the penalty keeping h*rho inside the solver's stability limit",
    )
    a(
        "--stability-margin",
        type=float,
        help="the penalty allows h*rho up to this fraction of the stability limit (1)",
    )
    a(
        "--normalization",
        choices=NORMALIZATIONS,
        help="N of the symmetric layer: tv (the paper's total-variation normalization), "
        f"bias (gain 1: stability can be guaranteed), none (default: "
        f"{QUICK_RECIPE['normalization']}; --preset paper: tv)",
    )
    a(
        "--rate-bound",
        type=float,
        help="hold every parameter set's h*z to this fraction of the training method's "
        "stability limit, by construction (neuralpde.stability.constrain); 0: off "
        f"(default: {QUICK_RECIPE['rate_bound']:g} on the digits; on photographs "
        f"{_PHOTOGRAPHS}; --preset paper and the ResNet control, which declares no "
        "rates: 0). On photographs, giving any of --solver, "
        "--step-size, --multilevel, --random-steps, --random-methods, --stability-penalty "
        "or --rate-bound, even at its default value, replaces that default whole, and the "
        "options not given take the digits' values (rate bound 0.25, no methods sharing the "
        "batch): give each option you want. The run's log names what it trains with",
    )
    a(
        "--raw-scale",
        type=float,
        help="start the rate bound's raw kernels at this multiple (>= 1) of their bounded "
        "value: the bound's parametrization is scale invariant there, so the kernels learn "
        "at 1/raw-scale^2 of SGD's learning rate (default: 1; on photographs "
        f"{_RAW_SCALES})",
    )
    a(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="torch.compile the network for training and validation (1.2-1.6x per step on "
        "CPU, after one to two minutes of compilation)",
    )
    a(
        "--certified",
        action="store_true",
        default=None,
        help="train the 1-Lipschitz configuration with a Lipschitz-margin loss, and report "
        "certified accuracy (python -m experiments.certify for more)",
    )
    a("--certified-margin", type=float, help="with --certified: the l2 radius (pixel units) "
      "the margin loss aims at (digits 0.15, else 36/255)")  # fmt: skip
    a("--optimizer", choices=OPTIMIZERS, help="sgd (momentum, the paper's) or adam")
    a(
        "--temperature",
        type=float,
        help="with --certified: inverse temperature of the loss (digits 32, else 4)",
    )
    a("--memory", choices=MEMORY_MODES, help="how gradients are computed through the stages")
    a("--train-fraction", type=float, help="use this fraction of the training split")
    a("--image-size", type=int, help="imagefolder only: resize images to this size (32)")
    a("--device", help="cpu, cuda, cuda:N (default: cpu)")
    a("--threads", type=int, help="CPU threads (default: 1 for digits, else torch's)")
    a("--workers", type=int, help="data loader worker processes (default 0)")
    a("--seed", type=int, help="seed of initialization, data order and augmentation")
    a("--out", help="output directory (default: runs/<dataset>-<arch>)")
    a("--resume", action="store_true", help="continue the run in --out from its last.pt")
    a("--nan", choices=NAN_POLICIES, help="on a non-finite loss/gradient: stop or skip")
    a("--checkpoint-every", type=int, help="also write last.pt every N batches (0: per epoch)")
    return p
