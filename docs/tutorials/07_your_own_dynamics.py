"""Tutorial 07: your own dynamics — a reaction–diffusion network and a wave network of your own.

A dynamics is a subclass of ``neuralpde.RHS``: its right-hand side, its state, its default
method, its weights θ(t) and (optionally) its spectrum and rates. Declare those, and the stage, the
network, the experiments, the solver swap, the stability report, reversible memory and the
time-smoothness regularizer all work for it as they do for the paper's three networks.

    python docs/tutorials/07_your_own_dynamics.py

``NEURALPDE_SMALL=1`` shrinks every size (seconds); figures go to ``$NEURALPDE_FIGURES``
(default: ``docs/tutorials/figures``).
"""

import math
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import neuralpde  # noqa: E402
from experiments import (  # noqa: E402
    TrainConfig,
    build_model,
    fit,
    load_checkpoint,
    resolve_config,
    swap_plan,
    swap_table,
)
from experiments import stability as digits  # noqa: E402
from neuralpde.stability import Spectrum, kernel_spectrum, report  # noqa: E402

SMALL = os.environ.get("NEURALPDE_SMALL") == "1"
FIGURES = Path(os.environ.get("NEURALPDE_FIGURES", Path(__file__).parent / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)


# %% 1. A reaction–diffusion network after Chen & Pock's trainable nonlinear reaction
# diffusion (TNRD, IEEE TPAMI 39, 2017; the paper's reference 12): a learned diffusion
# -K(t)ᵀ φ(K(t) Y) with a monotone influence function φ = tanh(· + b), plus a learned linear
# reaction -a(t) Y with a = softplus(r) >= 0 (TNRD's reaction pulls towards the noisy image;
# a classifier has none, so ours pulls towards 0). The user code is this class.
class ReactionDiffusionRHS(neuralpde.RHS):
    """``dY/dt = -K(t)ᵀ tanh(K(t) Y + b(t)) - softplus(r(t)) ⊙ Y``."""

    default_method = "euler"  # a ResNet step, like the paper's parabolic network

    def __init__(self, channels, steps=3, step_size=1.0, interpolation="constant"):
        super().__init__(channels, steps, step_size, interpolation)
        c = channels
        self.theta = neuralpde.TimeWeights(
            {
                "K": torch.randn(steps, c, c, 3, 3) / (6 * math.sqrt(c)),  # ρ(KᵀK) ≈ 1
                "b": torch.zeros(steps, c),
                "r": torch.full((steps, c), -2.0),
            },
            self.T,
            interpolation,
        )

    def forward(self, t, y):
        w = self.theta(t)
        z = torch.tanh(F.conv2d(y, w["K"], padding=1) + w["b"].view(1, -1, 1, 1))
        reaction = F.softplus(w["r"]).view(1, -1, 1, 1) * y
        return -F.conv_transpose2d(z, w["K"], padding=1) - reaction

    def spectrum(self, height, width, *, iters=500, tol=1e-6, seed=0):
        # Jacobian -KᵀDK - diag(a) with 0 < D = tanh' <= 1: symmetric, eigenvalues in
        # [-(ρ(KᵀK) + max a), 0], so a mode decays at a rate up to z = ρ + max a.
        rho = kernel_spectrum(self.theta.K, height, width, iters=iters, tol=tol, seed=seed)
        a = F.softplus(self.theta.r.detach()).amax(dim=1).tolist()
        rates = [(lo + aj, hi + aj) for (lo, hi), aj in zip(rho, a)]
        return Spectrum("dissipative", {"K": rho}, rates, normalized=False)

    def rates(self, rho):  # the same z, differentiable: what the training penalty bounds
        return rho(self.theta.K) + F.softplus(self.theta.r).amax(dim=1)


neuralpde.register_arch("reaction_diffusion", ReactionDiffusionRHS)

# %% 2. Train it on the digits with the experiments API, like any arch: the paper's recipe
# (SGD, momentum, weight decay, the time-smoothness regularizer) and its checkpoints. Twice:
# with one Euler step per cell of θ (h = 1, the paper's scheme) and with four (h = 1/4).
size = {"widths": [8, 16], "epochs": 1, "train_fraction": 0.3} if SMALL else {"epochs": 8}
root = Path(tempfile.mkdtemp())
runs = {}
for name, step in (("trained with h = 1", None), ("trained with h = 1/4", 0.25)):
    out = root / ("coarse" if step is None else "fine")
    # rate_bound=0: its rate has a reaction term that the default kernel bound cannot hold.
    cfg = resolve_config(
        arch="reaction_diffusion", step_size=step, rate_bound=0.0, out=str(out), **size
    )
    result = fit(cfg, log=lambda *_: None)
    print(f"reaction–diffusion, {name}: test accuracy {result['test_accuracy']:.2%}")
    runs[name] = out / "best.pt"

# %% 3. Solver swap: each trained network, unchanged, under other discretizations.
swaps = {}
for name, ckpt in runs.items():
    plan = swap_plan("reaction_diffusion", 0.25 if "1/4" in name else None)
    if SMALL:  # tight tolerances cost seconds even on a tiny network
        plan = [p for p in plan if p.get("rtol", 1) >= 1e-2]
    swaps[name] = swap_table(ckpt, plan=plan, log=lambda *_: None)
    print(f"\n{name}\n{'solver':<20}{'accuracy':>10}{'NFE':>8}")
    for r in swaps[name]:
        print(f"{r['solver']:<20}{r['accuracy']:>10.4f}{r['nfe']:>8.0f}")

fig, ax = plt.subplots(figsize=(6.4, 4))
for (name, rows), marker in zip(swaps.items(), "os"):
    ax.scatter([r["nfe"] for r in rows], [r["accuracy"] for r in rows], marker=marker, label=name)
    for r in rows:
        ax.annotate(r["solver"], (r["nfe"], r["accuracy"]), fontsize=6, xytext=(3, 2),
                    textcoords="offset points")  # fmt: skip
ax.set(xscale="log", xlabel="function evaluations per forward pass", ylabel="test accuracy",
       title="reaction–diffusion networks, weights unchanged")  # fmt: skip
ax.grid(alpha=0.3)
ax.legend(loc="center right", fontsize=8)
fig.tight_layout()
fig.savefig(FIGURES / "07_accuracy_vs_nfe.png", dpi=110)
plt.close(fig)

# %% 4. Their stability reports, from the spectrum the class declares.
fig, ax = plt.subplots(figsize=(6.4, 3.6))
for (name, ckpt), marker in zip(runs.items(), "os"):
    state = load_checkpoint(ckpt)
    net = build_model(TrainConfig.from_dict(state["config"]), 1, 10)
    net.load_state_dict(state["model"])
    rep = report(net, (1, 8, 8))
    print(f"\n{name}\n{rep}\nsuggested steps per stage: {rep.suggestions()}")
    limits = [r["max_step"] for r in rep.rows]
    ax.plot(range(len(limits)), limits, marker + "-", label=f"{name} (h = {rep.rows[0]['h']:g})")
ax.axhline(1.0, color="gray", ls="--", lw=1)
ax.axhline(0.25, color="gray", ls=":", lw=1)
ax.set(yscale="log", xlabel="parameter set (stage 0, then stage 1, ...)",
       ylabel="largest stable Euler step", title="2 / (ρ(KᵀK) + max a) per parameter set")  # fmt: skip
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(FIGURES / "07_step_limits.png", dpi=110)
plt.close(fig)


# %% 5. A split dynamics of your own: a nonlinear Klein–Gordon (wave) equation on the
# channel halves (q, p) of the stage input, q' = p, p' = -K(t)ᵀ tanh(K(t) q) - m(t)² q.
# Declaring state = "halves" makes it a split system: symplectic methods integrate it and
# memory="reversible" trains it without storing a single step's activations.
class KleinGordonRHS(neuralpde.RHS):
    """``q' = p``, ``p' = -K(t)ᵀ tanh(K(t) q) - m(t)² q``."""

    state = "halves"
    default_method = "verlet"

    def __init__(self, channels, steps=3, step_size=1.0, interpolation="constant"):
        super().__init__(channels, steps, step_size, interpolation)
        c = channels // 2
        self.theta = neuralpde.TimeWeights(
            {"K": torch.randn(steps, c, c, 3, 3) * math.sqrt(1 / (9 * c)),
             "m": torch.full((steps, c), 0.5)},
            self.T, interpolation,
        )  # fmt: skip

    def f_q(self, t, p):
        return p

    def f_p(self, t, q):
        w = self.theta(t)
        z = torch.tanh(F.conv2d(q, w["K"], padding=1))
        return -F.conv_transpose2d(z, w["K"], padding=1) - (w["m"] ** 2).view(1, -1, 1, 1) * q

    def spectrum(self, height, width, *, iters=500, tol=1e-6, seed=0):
        # q'' = -(KᵀDK + M²) q oscillates with ω² <= ρ(KᵀK) + max m²: Verlet needs h ω <= 2.
        rho = kernel_spectrum(self.theta.K, height, width, iters=iters, tol=tol, seed=seed)
        m2 = (self.theta.m.detach() ** 2).amax(dim=1).tolist()
        rates = [(math.sqrt(lo + a), math.sqrt(hi + a)) for (lo, hi), a in zip(rho, m2)]
        return Spectrum("oscillatory", {"K": rho}, rates, normalized=False)

    def rates(self, rho):
        return (rho(self.theta.K) + (self.theta.m**2).amax(dim=1)).sqrt()


# Gradients through reversible memory equal plain autograd's (float64, same weights).
torch.manual_seed(1)
wave = neuralpde.PDECNN(KleinGordonRHS, 1, 10, (8, 16, 16), steps=8, step_size=0.25).double()
x_tr, y_tr, x_te, y_te = digits.load_digits(n_train=256 if SMALL else None)
xb, yb = x_tr[:32].double(), y_tr[:32]
grads = {}
for memory in ("autograd", "reversible"):
    wave.set_solver(memory=memory)
    wave.zero_grad()
    F.cross_entropy(wave(xb), yb).backward()
    grads[memory] = torch.cat([p.grad.flatten() for p in wave.parameters()])
diff = (grads["reversible"] - grads["autograd"]).norm() / grads["autograd"].norm()
print(f"reversible vs autograd gradient, relative difference: {diff:.1e}")
assert diff < 1e-10, diff

# Train it in float32 with memory="reversible" (Adam; a short loop of experiments.stability).
wave = wave.float()
assert [s.memory for s in wave.stages] == ["reversible", "reversible"]
curve = []
for epoch in range(1 if SMALL else 10):
    digits.train(wave, x_tr, y_tr, epochs=1, seed=epoch)
    with torch.no_grad():
        curve.append((wave(x_te).argmax(1) == y_te).float().mean().item())
    print(f"Klein–Gordon network, epoch {epoch + 1}: test accuracy {curve[-1]:.2%}")
wave_rep = report(wave, (1, 8, 8))
print(f"Klein–Gordon steps within the Verlet limit: {sum(r['ok'] for r in wave_rep.rows)}"
      f" of {len(wave_rep.rows)}")  # fmt: skip

fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
axes[0].plot(range(1, len(curve) + 1), curve, "o-")
axes[0].set(xlabel="epoch", ylabel="test accuracy", title="trained with memory='reversible'")
for k in (0, 1):
    mine = [r for r in wave_rep.rows if r["stage"] == k]
    axes[1].plot([r["step"] for r in mine], [r["max_step"] for r in mine], "o-", label=f"stage {k}")
axes[1].axhline(0.25, color="gray", ls="--", lw=1, label="h = 0.25")
axes[1].set(xlabel="parameter set j", ylabel="largest stable Verlet step",
            title="step limits, Klein–Gordon network")  # fmt: skip
axes[1].legend()
fig.tight_layout()
fig.savefig(FIGURES / "07_klein_gordon.png", dpi=110)
plt.close(fig)
print(f"figures in {FIGURES}")
