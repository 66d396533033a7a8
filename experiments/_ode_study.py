"""Which training strategy makes a trained θ(t) a good ODE, and at what cost.

Each (arch, strategy) pair is one run of :func:`experiments.fit`; its best weights are
then evaluated under every row of :func:`experiments.swap_table` and under RK4 and
dopri5 sweeps, to find the NFE each needs to come within 0.5 points of the converged
flow. Uses the public API only.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import neuralpde
import neuralpde.stability
import solvers
from neuralpde.stability import second_order_method

from ._config import NON_MATH_KEYS, declares_rates, resolve_config, takes_normalization
from ._data import load_data
from ._swap import swap_table
from ._trainer import NonFiniteLossError, fit

# Every strategy sets every strategy option, so that none inherits the default recipe's.
_PLAIN = {
    "step_size": None,
    "multilevel": [],
    "random_steps": [],
    "random_methods": [],
    "stability_penalty": 0.0,
    "normalization": "tv",
    "rate_bound": 0.0,
}
# The stable parametrization: N an elementwise bias, h·z held to a fraction of the limit.
_BOUND = {"normalization": "bias"}

STRATEGIES: dict[str, dict[str, Any]] = {
    "paper": {
        "options": {},
        "about": "the paper's scheme: TV normalization, one solver step per parameter set, "
        "h = 1 (Ruthotto & Haber 2020)",
    },
    "rate bound 1/4": {
        "options": {**_BOUND, "rate_bound": 0.25},
        "about": "stable by construction (the default on digits): N an elementwise bias and every "
        "parameter set's h·z held to 1/4 of the method's limit by the parametrization "
        "(neuralpde.stability.constrain; spectral normalization with a rigorous bound, "
        "Miyato et al. 2018; the parabolic step of Convex Potential Layers, Meunier et al. "
        "2022, at a fraction of its limit)",
    },
    "rate bound 1/2": {
        "options": {**_BOUND, "rate_bound": 0.5},
        "about": "as the default, h·z held to 1/2 of the limit",
    },
    "rate bound 1/10": {
        "options": {**_BOUND, "rate_bound": 0.1},
        "about": "as the default, h·z held to 1/10 of the limit",
    },
    "rate bound 9/10": {
        "options": {**_BOUND, "rate_bound": 0.9},
        "about": "as the default, h·z held to 9/10 of the limit (close to CPL's h = 2/ρ)",
    },
    "second-order method 1/4": {
        "options": {**_BOUND, "rate_bound": 0.25, "solver": "second-order"},
        "about": "as the default, trained with the second-order method of the arch's scheme's "
        "kind: midpoint for the parabolic network, Verlet for the hyperbolic ones (Ott et "
        "al. 2021 find the higher-order method's network closer to its ODE)",
    },
    "second-order method 1/2": {
        "options": {**_BOUND, "rate_bound": 0.5, "solver": "second-order"},
        "about": "the second-order method with h·z held to 1/2 of its limit: at hz = 1 the "
        "midpoint step multiplies a mode by 1/2 where the flow gives exp(-1) = 0.37, as "
        "forward Euler at 1/4 does (1/2 against 0.61)",
    },
    "second-order method 1/2 + random steps": {
        "options": {
            **_BOUND,
            "rate_bound": 0.5,
            "solver": "second-order",
            "random_steps": [1.0, 0.5],
        },
        "about": "the second-order method at 1/2 of its limit, each batch split between "
        "the training steps 1 and 1/2: the weights must classify under two discretizations",
    },
    "second-order method 9/10 + random steps": {
        "options": {
            **_BOUND,
            "rate_bound": 0.9,
            "solver": "second-order",
            "random_steps": [1.0, 0.5],
        },
        "about": "as the one at 1/2, with h·z held to 9/10 of the limit: the random steps "
        "keep the network its flow while it uses nearly the whole stable range",
    },
    "second-order method 9/10 + random steps and methods": {
        "options": {
            **_BOUND,
            "rate_bound": 0.9,
            "solver": "second-order",
            "random_steps": [1.0, 0.5],
            "random_methods": "of its kind",
        },
        "about": "as the one before, each batch also split among the second-order method "
        "and the first-order ones of its kind (midpoint, forward Euler; Verlet, "
        "symplectic Euler, leapfrog): the weights must classify under the cheaper "
        "first-order methods at the training step too",
    },
    "fine-step h/2": {
        "options": {"step_size": 0.5},
        "about": "the training solver takes two steps per parameter set (h = 1/2)",
    },
    "multilevel": {
        "options": {"multilevel": "auto"},
        "about": "train 3 parameter sets at h = 1, prolongate θ(t) to 6 (h = 1/2) and 12 "
        "(h = 1/4) by linear interpolation and continue (Haber, Ruthotto & Holtham 2018; "
        "Chang et al. 2018)",
    },
    "random steps": {
        "options": {"random_steps": [1.0, 0.5]},
        "about": "each batch is split between the training steps 1 and 1/2",
    },
    "stability penalty": {
        "options": {"stability_penalty": 0.1},
        "about": "h = 1 plus 0.1·Σ relu(h z / c − 1)², z from a warm-started power "
        "iteration (2 per batch), c the method's stability limit",
    },
    "fine-step h/4 + penalty": {
        "options": {"step_size": 0.25, "stability_penalty": 0.1},
        "about": "four steps per parameter set (h = 1/4) and the stability penalty: the "
        "second-order network's earlier default (run for that network only)",
        "archs": ["second_order"],
    },
}
# The dynamics without a choice of normalization (the ResNet control) run the strategies
# that do not need one.
_NEEDS_BOUND = {name for name, s in STRATEGIES.items() if "rate_bound" in s["options"]}
# Nor those that bound or penalize the rates, which it does not declare (its penalty run
# was the paper run again).
_NEEDS_RATES = {
    name
    for name, s in STRATEGIES.items()
    if {"rate_bound", "stability_penalty"} & set(s["options"])
}

# How close (in accuracy) a solver must come to the converged flow to count as converged.
CLOSE = 0.005


def multilevel_epochs(epochs: int) -> list[int]:
    """The default multilevel schedule for a run of ``epochs``: prolongate after about
    half and three quarters of the epochs (at least one epoch per level)."""
    if epochs < 3:
        return [epochs] if epochs == 2 else []
    a = max(2, round(epochs * 0.5) + 1)
    b = max(a + 1, min(epochs, round(epochs * 0.75) + 1))
    return [a, b] if b <= epochs else [a]


def _options(strategy: str, epochs: int, arch: str) -> dict[str, Any]:
    opts = dict(_PLAIN, **STRATEGIES[strategy]["options"])
    if opts["multilevel"] == "auto":
        opts["multilevel"] = multilevel_epochs(epochs)
    # Each strategy names its training method: the arch's own scheme (the paper's), unless
    # it is the second-order one; the quick recipe's per-arch method never leaks in.
    scheme = neuralpde.archs()[arch].default_method
    opts.setdefault("solver", scheme)
    if opts["solver"] == "second-order":
        opts["solver"] = second_order_method(scheme)
        if opts["solver"] is None:
            raise ValueError(
                f"strategy {strategy!r}: {arch}'s scheme {scheme!r} has no second-order "
                "method of its kind (neuralpde.stability.second_order_method)"
            )
    if opts["random_methods"] == "of its kind":
        # The second-order method and every first-order scheme it is the remedy for.
        first = [m for m in solvers.methods() if second_order_method(m) == opts["solver"]]
        opts["random_methods"] = [opts["solver"], *sorted(first)]
    return opts


def _nfe_to_converge(
    ckpt: Path, data, arch_step: float, converged: float, device: str, images: int | None = None
) -> dict[str, float | None]:
    """The NFE per forward pass that RK4 (steps h, h/2, …, h/16) and dopri5 (rtol 1e-1 …
    1e-4) need to come within :data:`CLOSE` of the converged accuracy (``None``: never
    within that sweep)."""
    out: dict[str, float | None] = {}
    sweeps = {
        "rk4": [
            {"label": f"rk4 h/{2**k}", "method": "rk4", "step_size": arch_step / 2**k}
            for k in range(5)
        ],
        "dopri5": [
            {"label": f"dopri5 {r:g}", "method": "dopri5", "rtol": r, "atol": r / 10}
            for r in (1e-1, 1e-2, 1e-3, 1e-4)
        ],
    }
    for name, plan in sweeps.items():
        out[name] = None
        for item in plan:
            (row,) = swap_table(
                ckpt, data=data, plan=[item], device=device, images=images, log=lambda *_: None
            )
            if math.isfinite(row["accuracy"]) and abs(row["accuracy"] - converged) <= CLOSE:
                out[name] = row["nfe"]
                break
    return out


def _trained_report(cfg, out: Path) -> dict[str, Any] | None:
    """The report of a finished training run of exactly ``cfg`` in ``out``, else ``None``
    (a study interrupted between training and the swap does not train again)."""
    if not ((out / "report.json").is_file() and (out / "best.pt").is_file()):
        return None
    saved = json.loads((out / "config.json").read_text())
    now = cfg.to_dict()
    if any(saved.get(k) != now[k] for k in now if k not in NON_MATH_KEYS):
        return None
    return json.loads((out / "report.json").read_text())


def run_one(
    arch: str,
    strategy: str,
    out: Path,
    *,
    data=None,
    base: dict[str, Any] | None = None,
    device: str = "cpu",
    images: int | None = None,
    nfe_sweep: bool = True,
    row_seconds: float | None = None,
    log=print,
) -> dict[str, Any]:
    """Train ``arch`` with ``strategy`` into ``out`` and measure it; returns the row.

    ``images``: evaluate the swap on ``images`` test images spread over the test set (the test accuracy
    of the row stays the whole test set's); ``nfe_sweep=False`` skips the RK4 and dopri5
    sweeps to convergence (``None`` in the row); ``row_seconds``: a budget per swap row (a
    row over it is reported "did not finish", not waited for; see :func:`swap_table`)."""
    base = dict(base or {})
    probe = resolve_config(arch=arch, **base)
    opts = _options(strategy, probe.epochs, arch)
    cfg = resolve_config(arch=arch, out=str(out), device=device, **{**base, **opts})
    report = _trained_report(cfg, out)
    if report is None:
        try:
            report = fit(cfg, data=data, log=lambda *_: None)
        except NonFiniteLossError as err:
            log(f"{arch:<13} {strategy:<18} diverged: {err}")
            return {"arch": arch, "strategy": strategy, "options": opts, "diverged": str(err)}
    ckpt = out / "best.pt"
    rows = swap_table(
        ckpt,
        data=data,
        device=device,
        images=images,
        row_seconds=row_seconds,
        log=lambda *_: None,
    )
    # The converged flow: the table's dopri5 at rtol 1e-4 (atol 1e-5).
    ref = next(r for r in rows if r["solver"] == "dopri5 rtol=0.0001")
    finite = [r for r in rows if math.isfinite(r["accuracy"])]
    worst = min(finite, key=lambda r: r["accuracy"]) if finite else None
    step = rows[0]["step_size"] if rows and rows[0]["step_size"] != "" else None
    step = float(step) if step not in (None, "") else 1.0
    nfe = (
        _nfe_to_converge(ckpt, data, step, ref["accuracy"], device, images)
        if nfe_sweep
        else {"rk4": None, "dopri5": None}
    )
    result = {
        "arch": arch,
        "strategy": strategy,
        "options": opts,
        "seconds": report["seconds"],
        # The training loop alone (no data loading, validation or report): what a
        # strategy changes.
        "train_seconds": report["train_seconds"],
        "test_accuracy": report["test_accuracy"],
        "swap_images": images,
        "training_scheme": rows[0]["accuracy"],
        "worst": None if worst is None else worst["accuracy"],
        "worst_solver": None if worst is None else worst["solver"],
        "failed_rows": [r["solver"] for r in rows if not math.isfinite(r["accuracy"])],
        "converged": ref["accuracy"],
        "nfe_measured": nfe_sweep,
        "rk4_nfe": nfe["rk4"],
        "dopri5_nfe": nfe["dopri5"],
        "swap": [{k: r[k] for k in ("solver", "accuracy", "nfe")} for r in rows],
    }
    log(
        f"{arch:<13} {strategy:<18} test {result['test_accuracy']:.4f}  worst "
        f"{result['worst']:.4f} ({result['worst_solver']})  converged {ref['accuracy']:.4f}  "
        f"{report['train_seconds']:.0f} s training"
    )
    return result


def _pct(v: float | None) -> str:
    # A row without an accuracy did not finish within its budget (or failed).
    return "did not finish" if v is None or not math.isfinite(v) else f"{v:.1%}"


def _fmt_nfe(v: float | None) -> str:
    return "never" if v is None else f"{v:.0f}"


def write_study(results: list[dict[str, Any]], out: Path, title: str) -> None:
    """``study.json``, ``study.md`` (one table) and ``study.png`` in ``out``."""
    by_arch: dict[str, float] = {
        r["arch"]: r["train_seconds"]
        for r in results
        if r["strategy"] == "paper" and "diverged" not in r
    }
    for r in results:
        base = by_arch.get(r["arch"])
        ok = base and "diverged" not in r
        r["time_ratio"] = r["train_seconds"] / base if ok else None
    (out / "study.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"# {title}",
        "",
        "| arch | strategy | training time (× paper) | test accuracy | accuracy, training "
        "scheme | worst accuracy across the solver swap (row) | converged flow | RK4 NFE to "
        "±0.5 pt | dopri5 NFE to ±0.5 pt |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    swapped = {r.get("swap_images") for r in results if "diverged" not in r}
    if swapped - {None}:
        n = ", ".join(f"{k:,}" for k in sorted(swapped - {None}))
        lines[1:1] = [
            "",
            f"Test accuracy on the whole test set; the swap columns on {n} test images "
            "spread over it.",
        ]
    for r in results:
        if "diverged" in r:
            lines.append(
                f"| {r['arch']} | {r['strategy']} | diverged (non-finite loss) | | | | | | |"
            )
            continue
        ratio = "–" if r["time_ratio"] is None else f"{r['time_ratio']:.2f}"
        lines.append(
            f"| {r['arch']} | {r['strategy']} | {ratio} | {_pct(r['test_accuracy'])} | "
            f"{_pct(r['training_scheme'])} | "
            f"{_pct(r['worst'])} ({r['worst_solver']}) | {_pct(r['converged'])} | "
            + (
                f"{_fmt_nfe(r['rk4_nfe'])} | {_fmt_nfe(r['dopri5_nfe'])} |"
                if r.get("nfe_measured", True)
                else "not measured | not measured |"
            )
        )
    lines += ["", "Strategies:", ""]
    shown = {r["strategy"] for r in results}
    for name, s in STRATEGIES.items():
        if name in shown:
            lines.append(f"- **{name}**: {s['about']}.")
    (out / "study.md").write_text("\n".join(lines) + "\n")
    _plot(results, out / "study.png")


def _plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = sorted({r["arch"] for r in results})
    names = list(STRATEGIES)
    markers = dict(zip(names, "osD^vP*X"))
    fig, axes = plt.subplots(1, len(archs), figsize=(3.6 * len(archs), 3.6), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        for r in (r for r in results if r["arch"] == arch):
            if r["time_ratio"] is None or r.get("worst") is None:
                continue
            ax.scatter(
                r["time_ratio"],
                100 * r["worst"],
                marker=markers.get(r["strategy"], "o"),
                s=45,
                label=r["strategy"],
            )
        ax.set(title=arch, xlabel="training time (× paper's scheme)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("worst test accuracy over the solver swap (%)")
    # One legend for all panels: every strategy that any panel shows.
    seen: dict[str, Any] = {}
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    if seen:
        fig.legend(
            list(seen.values()), list(seen), loc="lower center", ncol=min(len(seen), 6), fontsize=8
        )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def study(
    archs: list[str],
    strategies: list[str],
    out: Path,
    *,
    base: dict[str, Any] | None = None,
    device: str = "cpu",
    resume: bool = False,
    images: int | None = None,
    nfe_sweep: bool = True,
    row_seconds: float | None = None,
    title: str = "Training strategies for a trained θ(t) that is an ODE",
    log=print,
) -> list[dict[str, Any]]:
    """Run every (arch, strategy) pair into ``out/<arch>/<strategy>/`` and write the table.

    With ``resume``, pairs whose ``result.json`` exists are read back, not trained again
    (and a pair whose training finished is not trained again in any case). ``images`` and
    ``nfe_sweep`` and ``row_seconds``: see :func:`run_one`.
    """
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    data = None
    for arch in archs:
        for strategy in strategies:
            if arch not in STRATEGIES[strategy].get("archs", [arch]):
                continue
            if strategy in _NEEDS_BOUND and not takes_normalization(arch):
                continue
            if strategy in _NEEDS_RATES and not declares_rates(arch):
                continue
            folder = out / arch / strategy.replace(" ", "-").replace("/", "")
            done = folder / "result.json"
            if resume and done.is_file():
                results.append(json.loads(done.read_text()))
                continue
            if data is None and base and base.get("dataset") not in (None, "digits"):
                data = load_data(resolve_config(**base))
            t0 = time.perf_counter()
            row = run_one(
                arch,
                strategy,
                folder,
                data=data,
                base=base,
                device=device,
                images=images,
                nfe_sweep=nfe_sweep,
                row_seconds=row_seconds,
                log=log,
            )
            row["study_seconds"] = time.perf_counter() - t0
            tmp = done.with_suffix(".tmp")
            tmp.write_text(json.dumps(row, indent=2) + "\n")
            os.replace(tmp, done)
            results.append(row)
    write_study(results, out, title)
    return results
