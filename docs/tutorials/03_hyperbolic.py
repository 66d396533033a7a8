"""Tutorial 03: hyperbolic networks — energy, exact reversibility, training in constant memory.

The Hamiltonian and second-order networks are integrated by symplectic steppers. Such a
stepper keeps an energy bounded instead of letting it drift, and it can be run backwards:
each step's input is recomputed exactly from its output. ``memory="reversible"`` uses
that to backpropagate through a stage without storing any per-step activation.

    python docs/tutorials/03_hyperbolic.py

``NEURALPDE_SMALL=1`` shrinks every size (seconds); figures go to ``$NEURALPDE_FIGURES``
(default: ``docs/tutorials/figures``).
"""

import os
import weakref
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import neuralpde  # noqa: E402
import solvers  # noqa: E402

SMALL = os.environ.get("NEURALPDE_SMALL") == "1"
FIGURES = Path(os.environ.get("NEURALPDE_FIGURES", Path(__file__).parent / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)

# %% 1. Energy. Without its normalization, and with a monotone activation that is the
# derivative of a convex φ, the symmetric layer is a gradient: -Kᵀ σ(K y) = -∇Φ(y) with
# Φ(y) = Σ φ(K y). Here σ(z) = z + relu(z), φ(z) = ½z² + ½relu(z)² (it grows in every
# direction, so the motion stays bounded). The second-order stage y'' = -Kᵀ σ(K y) with θ
# fixed in time is then a Hamiltonian system with the energy E = ½‖y'‖² + Φ(y).
# Symplectic steppers keep E within a band; Euler and RK4 drift.
K = 0.3 * torch.randn(4, 4, 3, 3, dtype=torch.float64)
y0 = torch.randn(1, 4, 8, 8, dtype=torch.float64)
v0 = torch.zeros_like(y0)


def accel(t, y):
    z = F.conv2d(y, K, padding=1)
    return -F.conv_transpose2d(z + torch.relu(z), K, padding=1)


def energy(y, v):
    z = F.conv2d(y, K, padding=1)
    phi = 0.5 * (z.pow(2) + torch.relu(z).pow(2)).flatten(1).sum(1)
    return 0.5 * v.pow(2).flatten(1).sum(1) + phi


h, n_steps = 0.05, (200 if SMALL else 8000)
t = torch.arange(n_steps + 1, dtype=torch.float64) * h
drift = {}
for method in ("leapfrog", "verlet", "yoshida4"):
    y, v = solvers.odeint_second_order(accel, y0, v0, t, method=method, step_size=h)
    drift[method] = (energy(y.flatten(0, 1), v.flatten(0, 1)) / energy(y0, v0) - 1).abs()
for method in ("euler", "rk4"):
    y, v = solvers.odeint(
        lambda t, s: (s[1], accel(t, s[0])), (y0, v0), t, method=method, options={"step_size": h}
    )
    drift[method] = (energy(y.flatten(0, 1), v.flatten(0, 1)) / energy(y0, v0) - 1).abs()
for method, e in drift.items():
    print(f"{method:9s} relative energy error after {n_steps} steps: {float(e[-1]):.2e}")

plt.figure(figsize=(6, 3.5))
for method, e in drift.items():
    plt.semilogy(t[1:], e[1:].clamp_min(1e-17), label=method)
plt.xlabel("t")
plt.ylabel("|E(t)/E(0) - 1|")
plt.ylim(1e-9, 1e3)
plt.title(f"energy of the second-order stage, h = {h}")
plt.legend()
plt.tight_layout()
plt.savefig(FIGURES / "03_energy.png", dpi=120)
plt.close()

# %% 2. Exact reversibility. Run a stage forward from 0 to T, then the same stepper
# backwards from T to 0 (decreasing times): the symplectic steppers return to the input
# up to round-off, in every dtype; forward Euler run backwards on the parabolic stage is
# not an inverse at all.
x = torch.randn(2, 8, 8, 8, dtype=torch.float64)
depths = [4, 16] if SMALL else [4, 16, 64, 256, 1024]
cases = {
    "Hamiltonian, symplectic_euler": (neuralpde.HamiltonianRHS, "symplectic_euler"),
    "second-order, leapfrog": (neuralpde.SecondOrderRHS, "leapfrog"),
    "parabolic, euler (control)": (neuralpde.ParabolicRHS, "euler"),
}
recon = {}
for name, (cls, method) in cases.items():
    for dtype in (torch.float64, torch.float32):
        errs = []
        for n in depths:
            torch.manual_seed(1)
            rhs = cls(8, n, 0.1).to(dtype)
            xs = x.to(dtype)
            there = torch.tensor([0.0, rhs.T], dtype=torch.float64)
            back = torch.tensor([rhs.T, 0.0], dtype=torch.float64)
            func = rhs.separable if rhs.split else rhs
            with torch.no_grad():
                out = solvers.odeint(
                    func, rhs.to_state(xs), there, method=method, options={"step_size": 0.1}
                )
                end = tuple(s[-1] for s in out) if rhs.split else out[-1]
                ret = solvers.odeint(func, end, back, method=method, options={"step_size": 0.1})
                x_back = rhs.from_state(tuple(s[-1] for s in ret) if rhs.split else ret[-1])
            errs.append(float((x_back.double() - x).norm() / x.norm()))
        recon[(name, dtype)] = errs
        print(f"{name:31s} {str(dtype):13s} relative error back at t=0:", end="")
        print(" ".join(f"{e:.1e}" for e in errs))

plt.figure(figsize=(6, 3.8))
for (name, dtype), errs in recon.items():
    style = "-o" if dtype == torch.float64 else "--s"
    plt.loglog(depths, [max(e, 1e-17) for e in errs], style, label=f"{name}, {dtype}"[:60])
plt.xlabel("steps (h = 0.1)")
plt.ylabel("‖x_back − x‖ / ‖x‖")
plt.title("forward to T, then backward to 0")
plt.legend(fontsize=7)
plt.tight_layout()
plt.savefig(FIGURES / "03_reversibility.png", dpi=120)
plt.close()

# %% 3. Memory. With memory="reversible" the backward pass recomputes each step's input
# from its output instead of reading it from memory: the graph keeps only the stage
# output, whatever the depth. We count the bytes autograd keeps for backward.


class _Saved:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor


def saved_bytes(stage, x):
    """Bytes of the distinct (non-parameter) storages the graph of stage(x) keeps."""
    held = weakref.WeakSet()

    def pack(t):
        s = _Saved(t)
        held.add(s)
        return s

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s.tensor):
        y = stage(x)
    params = {p.untyped_storage().data_ptr() for p in stage.parameters()}
    storages = {}
    for s in list(held):
        st = s.tensor.untyped_storage()
        if st.data_ptr() not in params:
            storages[st.data_ptr()] = st.nbytes()
    del y
    return sum(storages.values())


xb = torch.randn(4 if SMALL else 16, 16, 16, 16, requires_grad=True)
mem_depths = [4, 16] if SMALL else [4, 16, 64, 256, 1024]
kib = {"autograd": [], "reversible": [], "reversible, checkpoint_every=64": []}
for n in mem_depths:
    rhs = neuralpde.HamiltonianRHS(16, n, 0.1)
    kib["autograd"].append(saved_bytes(neuralpde.Stage(rhs), xb) / 1024)
    kib["reversible"].append(saved_bytes(neuralpde.Stage(rhs, memory="reversible"), xb) / 1024)
    ck = neuralpde.Stage(rhs, memory="reversible", checkpoint_every=64)
    kib["reversible, checkpoint_every=64"].append(saved_bytes(ck, xb) / 1024)
for mode, values in kib.items():
    print(f"saved for backward, {mode:32s}", " ".join(f"{v:9.0f}" for v in values), "KiB")

plt.figure(figsize=(6, 3.5))
for mode, values in kib.items():
    plt.loglog(mem_depths, values, "-o", label=mode)
plt.xlabel("steps in the stage")
plt.ylabel("KiB saved for backward")
plt.title(f"Hamiltonian stage, input {tuple(xb.shape)} float32")
plt.legend()
plt.tight_layout()
plt.savefig(FIGURES / "03_memory.png", dpi=120)
plt.close()

# %% 4. The gradient is the discrete one, not an approximation: compare with autograd.
torch.manual_seed(0)
rhs = neuralpde.HamiltonianRHS(8, 16 if SMALL else 64, 0.1).double()
x64 = torch.randn(2, 8, 8, 8, dtype=torch.float64, requires_grad=True)
grads = {}
for memory in ("autograd", "reversible"):
    y = neuralpde.Stage(rhs, memory=memory)(x64)
    grads[memory] = torch.autograd.grad(y.pow(2).sum(), [x64, *rhs.parameters()])
worst = max(
    float((a - b).norm() / b.norm()) for a, b in zip(grads["reversible"], grads["autograd"])
)
print(f"{rhs.steps} steps, float64: largest relative gradient difference {worst:.1e}")

# %% 5. Training a deep Hamiltonian network in constant memory: digits (8×8 images),
# a 64-step stage, the same loss trajectory in both modes.
digits = load_digits()
images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
labels = torch.tensor(digits.target)
n_train, n_test = (256, 128) if SMALL else (1500, 297)
steps = 16 if SMALL else 64
batches = 3 if SMALL else 2 * (n_train // 64)


def train(memory):
    torch.manual_seed(0)
    net = neuralpde.PDECNN("hamiltonian", 1, 10, (8, 16), steps=steps, step_size=0.1, memory=memory)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(batches):
        idx = torch.randint(0, n_train, (64,), generator=gen)
        opt.zero_grad()
        loss = F.cross_entropy(net(images[idx]), labels[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        net.eval()
        test = slice(n_train, n_train + n_test)
        acc = (net(images[test]).argmax(1) == labels[test]).float().mean().item()
    return losses, acc


loss_rev, acc_rev = train("reversible")
loss_ag, acc_ag = train("autograd")
gap = max(abs(a - b) / abs(b) for a, b in zip(loss_rev, loss_ag))
print(f"reversible: first loss {loss_rev[0]:.4f}, last {loss_rev[-1]:.4f}, test acc {acc_rev:.3f}")
print(f"autograd:   first loss {loss_ag[0]:.4f}, last {loss_ag[-1]:.4f}, test acc {acc_ag:.3f}")
print(f"largest relative difference of the two loss curves: {gap:.1e}")
