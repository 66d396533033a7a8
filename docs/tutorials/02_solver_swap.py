"""Tutorial 02: solver swap — when is a trained network a discretization of its ODE?

    python docs/tutorials/02_solver_swap.py

Runs ``experiments.ode_study``: each architecture trained on the digits with each training
strategy (the paper's scheme, the rate bound at several fractions of the limit — the
default is a quarter —, a finer step, multilevel refinement in time, random steps, the
stability penalty), then evaluated, unchanged, under the whole solver-swap table.
Writes the study's table and figure, and plots accuracy against NFE for the paper's
scheme and the default recipe. ``NEURALPDE_SMALL=1`` shrinks everything to seconds.
"""

import os
import shutil
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import swap_table, swap_verdict  # noqa: E402
from experiments.ode_study import STRATEGIES, study  # noqa: E402

SMALL = os.environ.get("NEURALPDE_SMALL") == "1"
FIGURES = Path(os.environ.get("NEURALPDE_FIGURES", Path(__file__).parent / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
OUT = Path(os.environ.get("NEURALPDE_OUT", tempfile.mkdtemp()))

# %% 1. The study: every arch with every strategy, measured under every solver.
if SMALL:
    archs, strategies = ["parabolic"], ["paper", "rate bound 1/4"]
    base = {"widths": [4, 8], "epochs": 2, "train_fraction": 0.3}
else:
    archs, strategies = ["parabolic", "hamiltonian", "second_order", "resnet"], list(STRATEGIES)
    base = {}
results = study(archs, strategies, OUT / "study", base=base, resume=True, log=print)
print((OUT / "study" / "study.md").read_text())

# %% 2. The verdict on the paper's scheme and on the default recipe (parabolic).
tables = {}
for strategy in ("paper", "rate bound 1/4"):
    ckpt = OUT / "study" / "parabolic" / strategy.replace(" ", "-").replace("/", "") / "best.pt"
    rows = swap_table(ckpt, log=lambda *_: None)
    tables[strategy] = rows
    print(f"\n{strategy}: {swap_verdict(rows)}")

# %% 3. Accuracy against NFE for the two networks.
fig, ax = plt.subplots(figsize=(7.2, 4.4))
labels = {"paper": "paper's scheme (h = 1)", "rate bound 1/4": "default (rate bound 1/4)"}
for (name, rows), marker in zip(tables.items(), "os"):
    ax.scatter(
        [r["nfe"] for r in rows],
        [100 * r["accuracy"] for r in rows],
        marker=marker,
        s=40,
        label=labels[name],
    )
    for r in rows:
        ax.annotate(
            r["solver"].replace("dopri5 rtol=", "dopri5 "),
            (r["nfe"], 100 * r["accuracy"]),
            fontsize=7,
            xytext=(4, -3),
            textcoords="offset points",
        )
ax.set(
    xscale="log",
    xlabel="function evaluations per forward pass (both stages)",
    ylabel="test accuracy (%)",
    title="One trained network, many solvers (parabolic, digits)",
)
ax.grid(alpha=0.3)
ax.legend(loc="lower left", fontsize=9)
fig.tight_layout()
fig.savefig(FIGURES / "02_accuracy_vs_nfe.png", dpi=120)
shutil.copy(OUT / "study" / "study.png", FIGURES / "02_study.png")
print(f"\nfigures in {FIGURES}; runs in {OUT}")
