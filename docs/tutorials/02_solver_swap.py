"""Tutorial 02: solver swap — one trained network evaluated under many discretizations.

    python docs/tutorials/02_solver_swap.py

Trains two parabolic networks on the digits with the same weights' layout: one with the
paper's forward Euler at h = 1 (3 steps per stage), one with forward Euler at h = 1/4
(12 steps over the same time). Then evaluates each, unchanged, under euler with 1x to 8x
the steps, midpoint, rk4 and dopri5, and plots test accuracy against the number of
function evaluations (NFE). ``NEURALPDE_SMALL=1`` shrinks everything to seconds.
"""

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import resolve_config, solver_swap, swap_plan, train  # noqa: E402

SMALL = os.environ.get("NEURALPDE_SMALL") == "1"
FIGURES = Path(os.environ.get("NEURALPDE_FIGURES", Path(__file__).parent / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
size = {"widths": [8, 16], "epochs": 1, "train_fraction": 0.3} if SMALL else {}
root = Path(tempfile.mkdtemp())

# %% 1. Train twice: with the coarse scheme the paper uses, and with a 4x finer one.
# Both networks have 3 parameter sets θ_0, θ_1, θ_2 per stage over T = 3; only the solver
# that integrates them during training differs (`--solver euler --step-size 0.25`).
runs = {}
for name, step in (("trained with euler h=1", None), ("trained with euler h=1/4", 0.25)):
    out = root / ("coarse" if step is None else "fine")
    cfg = resolve_config(out=str(out), solver="euler", step_size=step, **size)
    report = train(cfg, log=lambda *_: None)
    print(f"{name}: test accuracy {report['test_accuracy']:.2%} ({report['seconds']:.0f} s)")
    runs[name] = out / "best.pt"

# %% 2. Evaluate each network, unchanged, under every solver.
results = {}
for name, ckpt in runs.items():
    plan = swap_plan("parabolic", 0.25 if "1/4" in name else None, "euler")
    if SMALL:  # tight tolerances cost seconds even on a tiny network
        plan = [p for p in plan if p.get("rtol", 1) >= 1e-2]
    results[name] = solver_swap(ckpt, plan=plan, log=lambda *_: None)
for name, rows in results.items():
    print(f"\n{name}")
    print(f"{'solver':<20}{'accuracy':>10}{'NFE':>8}{'seconds':>9}")
    for r in rows:
        print(f"{r['solver']:<20}{r['accuracy']:>10.4f}{r['nfe']:>8.0f}{r['seconds']:>9.2f}")

# %% 3. Accuracy against NFE.
fig, ax = plt.subplots(figsize=(6.4, 4))
for (name, rows), marker in zip(results.items(), "os"):
    ax.scatter([r["nfe"] for r in rows], [r["accuracy"] for r in rows], marker=marker, label=name)
    for r in rows:
        ax.annotate(
            r["solver"],
            (r["nfe"], r["accuracy"]),
            fontsize=6,
            xytext=(3, 2),
            textcoords="offset points",
        )
ax.set(xscale="log", xlabel="function evaluations per forward pass", ylabel="test accuracy")
ax.grid(alpha=0.3)
ax.legend(loc="lower right", fontsize=8)
fig.tight_layout()
fig.savefig(FIGURES / "02_accuracy_vs_nfe.png", dpi=110)
print(f"\nfigure in {FIGURES}")
