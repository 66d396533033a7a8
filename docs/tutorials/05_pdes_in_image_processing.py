"""Tutorial 05: PDEs in image processing — heat, Perona–Malik and total-variation flow.

The symmetric layer ``-Kᵀσ(K u)`` of the parabolic network is also the form of the classic
diffusion filters, with ``K`` the finite-difference gradient and ``σ`` an edge-stopping
function. Here they denoise a real photograph through ``solvers.odeint``.

    python docs/tutorials/05_pdes_in_image_processing.py

``NEURALPDE_SMALL=1`` uses a 64×64 thumbnail of the photograph (seconds); figures go to
``$NEURALPDE_FIGURES`` (default: ``docs/tutorials/figures``).
"""

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from skimage import data  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio  # noqa: E402

import neuralpde  # noqa: E402
import solvers  # noqa: E402
from neuralpde import stability  # noqa: E402

SMALL = os.environ.get("NEURALPDE_SMALL") == "1"
FIGURES = Path(os.environ.get("NEURALPDE_FIGURES", Path(__file__).parent / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
torch.set_default_dtype(torch.float64)

# %% 1. A photograph with Gaussian noise (σ = 0.1 on a [0, 1] scale, about 20 dB).
stride = 8 if SMALL else 2  # the 512×512 camera man at 64×64 or 256×256
clean = data.camera()[::stride, ::stride].astype(np.float64) / 255.0
noisy = clean + 0.1 * np.random.default_rng(0).standard_normal(clean.shape)
u0 = torch.tensor(noisy)[None, None]  # (batch, channels, height, width)


def psnr(u):
    return peak_signal_noise_ratio(clean, np.asarray(u), data_range=1.0)


print(f"image {clean.shape}, noisy PSNR {psnr(noisy):.2f} dB")

# %% 2. The step limit, from the same machinery as a network's stability report.
# The heat right-hand side is -KᵀK u, so -heat(t, ·) is the operator whose spectral
# radius bounds the forward-Euler step: h <= 2/ρ(KᵀK), with ρ < 8 for the 2-D gradient.
heat = neuralpde.HeatRHS()
rho = stability.power_iteration(lambda v: -heat(None, v), (1, 1, *clean.shape)).item()
print(f"ρ(KᵀK) = {rho:.4f} (< 8), so forward Euler needs h <= {2 / rho:.4f}")

# %% 3. The heat equation decays each cosine mode at its discrete eigenvalue.
n = clean.shape[0]
idx = torch.arange(n, dtype=torch.float64)
t = torch.linspace(0.0, 2.0, 21)
plt.figure(figsize=(5, 3.5))
for k in (2, 8, 24):
    mode = torch.cos(math.pi * k * (idx + 0.5) / n)[:, None].expand(n, n)[None, None]
    sol = solvers.odeint(heat, mode, t, method="rk4", options={"step_size": 0.05})
    amp = (sol * mode).flatten(1).sum(1) / (mode * mode).sum()
    lam = 4 * math.sin(math.pi * k / (2 * n)) ** 2
    print(
        f"mode k={k:2d}: λ={lam:.4f}, amplitude at t=2: {amp[-1]:.6f} vs {math.exp(-2 * lam):.6f}"
    )
    (line,) = plt.plot(t, amp, "o", ms=4, label=f"k = {k}")
    plt.plot(t, torch.exp(-lam * t), color=line.get_color())
plt.xlabel("t")
plt.ylabel("amplitude of the mode")
plt.title("heat equation: cosine modes decay as exp(-λt)")
plt.legend()
plt.tight_layout()
plt.savefig(FIGURES / "05_heat_modes.png", dpi=110)
plt.close()

# %% 4. Three filters, integrated by forward Euler below their step limit.
filters = {
    "heat": (heat, 2.0),
    "Perona–Malik (κ = 0.1)": (neuralpde.PeronaMalikRHS(kappa=0.1), 8.0),
    "TV flow (ε = 0.05)": (neuralpde.TVFlowRHS(eps=0.05), 0.2),
}
curves, best = {}, {}
for name, (rhs, T) in filters.items():
    # Output times on the step grid: a fixed-step solver interpolates between its own
    # steps when asked for times in between, which would blend two images.
    h = min(0.9 * rhs.stable_step, T / 40)
    times = h * torch.arange(0, math.ceil(T / h) + 1)
    sol = solvers.odeint(rhs, u0, times, method="euler", options={"step_size": h})
    scores = [psnr(u[0, 0]) for u in sol]
    i = int(np.argmax(scores))
    curves[name] = (times, scores)
    best[name] = (times[i].item(), scores[i], sol[i, 0, 0].numpy())
    print(f"{name:>24}: best PSNR {scores[i]:.2f} dB at t = {times[i]:.3g} (step {h:.3g})")

fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
for ax, (name, (times, scores)) in zip(axes, curves.items()):
    ax.plot(times, scores)
    ax.axhline(psnr(noisy), color="gray", lw=0.8, ls="--")
    ax.set_title(name)
    ax.set_xlabel("t")
axes[0].set_ylabel("PSNR (dB)")
fig.tight_layout()
fig.savefig(FIGURES / "05_psnr_vs_time.png", dpi=110)
plt.close(fig)

# %% 5. The images at each filter's best stopping time.
panels = [("clean", None, clean), ("noisy", psnr(noisy), noisy)]
panels += [(name, s, u) for name, (_, s, u) in best.items()]
fig, axes = plt.subplots(1, 5, figsize=(15, 3.4))
for ax, (name, score, img) in zip(axes, panels):
    ax.imshow(np.clip(img, 0, 1), cmap="gray", vmin=0, vmax=1)
    ax.set_title(name if score is None else f"{name}\n{score:.2f} dB")
    ax.axis("off")
fig.tight_layout()
fig.savefig(FIGURES / "05_denoising.png", dpi=110)
plt.close(fig)
