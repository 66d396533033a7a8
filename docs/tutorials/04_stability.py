"""Tutorial 04: stability — spectral bounds and step limits of a trained network.

Trains small networks on scikit-learn's digits, checks their step sizes against the
linear stability limits with ``neuralpde.stability.report``, shows what happens on either
side of a limit, and measures how much each architecture amplifies perturbations as the
network gets deeper.

    python docs/tutorials/04_stability.py

``NEURALPDE_SMALL=1`` shrinks data, epochs and depths (seconds); figures go to
``$NEURALPDE_FIGURES`` (default: ``docs/tutorials/figures``).
"""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import neuralpde  # noqa: E402
from experiments import stability as experiment  # noqa: E402
from neuralpde import stability  # noqa: E402

SMALL = os.environ.get("NEURALPDE_SMALL") == "1"
FIGURES = Path(os.environ.get("NEURALPDE_FIGURES", Path(__file__).parent / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)

# %% 1. A parabolic network trained on 8×8 digits with the paper's step h = 1.
x_tr, y_tr, x_te, y_te = experiment.load_digits(n_train=128 if SMALL else None)
net = neuralpde.PDECNN("parabolic", 1, 10, (8, 16, 32), steps=3, step_size=1.0)
experiment.train(net, x_tr, y_tr, epochs=1 if SMALL else 8)


def accuracy(model):
    with torch.no_grad():
        return (model(x_te).argmax(1) == y_te).float().mean().item()


print(f"test accuracy with h = 1: {accuracy(net):.3f}")

# %% 2. The report: ρ(KᵀK) of every step, the largest stable step, and a suggestion.
rep = stability.report(net, (1, 8, 8))
print(rep)
print("suggested steps per stage:", rep.suggestions())

# The suggestions divide each training cell, so every step still uses its own θ_j.
for k, h in rep.suggestions().items():
    net.set_solver(step_size=h, stage=k)
print("all steps within their limit now:", stability.report(net, (1, 8, 8)).ok)
print(f"test accuracy re-discretized at the suggested steps: {accuracy(net):.3f}")
net.reset_solver()  # back to the training discretization
# Trained far outside the limit, the network is not a discretization of its ODE: its
# function lives in the big steps, and the fine discretization computes something else.


# %% 2b. Even at h = 0.1 training pushes ρ past 2/h; keep it inside and finer steps agree.
def train_within_limit(model, h, epochs, safety=0.9):
    """Adam, and after every update each K_j rescaled so that rho_upper <= safety · 2/h."""
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y_tr), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
            with torch.no_grad():
                for k, stage in enumerate(model.stages):
                    for w in stage.rhs.theta.weight:  # ρ scales with the square of K
                        rho = stability.symbol_bound(w, 8 >> k, 8 >> k)
                        w.mul_(min(1.0, (safety * 2 / h / rho) ** 0.5))
    return model.eval()


for constrained in (False, True):
    torch.manual_seed(0)
    model = neuralpde.PDECNN("parabolic", 1, 10, (8, 16, 32), steps=3, step_size=0.1)
    epochs = 1 if SMALL else 8
    if constrained:
        train_within_limit(model, 0.1, epochs)
    else:
        experiment.train(model, x_tr, y_tr, epochs=epochs)
    model_rep = stability.report(model, (1, 8, 8))
    within = sum(r["ok"] for r in model_rep.rows) / len(model_rep.rows)
    acc = accuracy(model)
    model.set_solver(step_size=0.025)
    print(
        f"h = 0.1, {'projected' if constrained else 'free':>9}: {within:4.0%} of the steps "
        f"within their limit, max ρ = {max(model_rep.to_dict()['rho']):5.1f}; accuracy "
        f"{acc:.3f}, re-discretized at h = 0.025: {accuracy(model):.3f}"
    )

# %% 3. Power iteration from below, the Fourier symbol from above.
# The operator KᵀK, applied as a convolution followed by its transpose (same weight).
w0 = net.stages[0].rhs.theta.weight[0].detach()


def op(v):
    return F.conv_transpose2d(F.conv2d(v, w0, padding=1), w0, padding=1)


iters = range(1, 61)
estimates = [stability.power_iteration(op, (1, 8, 8, 8), iters=i, tol=0).item() for i in iters]
upper = stability.symbol_bound(w0, 8, 8)
plt.figure(figsize=(5, 3.5))
plt.plot(iters, estimates, label="power iteration (Rayleigh quotient)")
plt.axhline(upper, color="k", ls="--", label="Fourier-symbol upper bound")
plt.xlabel("iterations")
plt.ylabel("estimate of ρ(KᵀK)")
plt.title("stage 0, step 0 of the trained network")
plt.legend()
plt.tight_layout()
plt.savefig(FIGURES / "04_power_iteration.png", dpi=110)
plt.close()

# %% 4. Either side of the limit, for the linearization (D = I, no normalization).
# Y_{j+1} = Y_j − h KᵀK Y_j: the top mode is multiplied by 1 − hρ each step.
rho = rep.rows[0]["rho"]
y0 = torch.randn(1, 8, 8, 8)
plt.figure(figsize=(5, 3.5))
for factor in (0.5, 0.95, 1.05):
    h = factor * 2 / rho
    y, norms = y0, [1.0]
    for _ in range(60):
        y = y - h * op(y)
        norms.append((y.norm() / y0.norm()).item())
    plt.semilogy(norms, label=f"h = {factor} · 2/ρ")
plt.xlabel("steps")
plt.ylabel("‖Y_j‖ / ‖Y_0‖")
plt.title("forward Euler on Y' = −KᵀK Y")
plt.legend()
plt.tight_layout()
plt.savefig(FIGURES / "04_step_limit.png", dpi=110)
plt.close()

# %% 5. Perturbation growth against depth for every architecture, h fixed, T = n h.
depths = (1, 2) if SMALL else (1, 4, 16)
rows = experiment.run(
    depths=depths,
    step_size=0.1,
    epochs=1 if SMALL else 8,
    n_train=128 if SMALL else None,
    n_test=64 if SMALL else None,
)
print(experiment.format_table(rows))
experiment.plot(rows, FIGURES / "04_growth.png")
