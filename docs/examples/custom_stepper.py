"""Adding a stepper: position Verlet, registered and used by odeint and by a network.

Run by the test suite; every claim on the page "Adding a stepper" is asserted here.
"""

import math

import torch

import neuralpde
import solvers


# --8<-- [start:class]
class PositionVerlet(solvers.Stepper):
    """Position Verlet (drift–kick–drift) with time frozen at the cell midpoint.

    ``q += h/2 f_q(p)``, ``p += h f_p(q)``, ``q += h/2 f_q(p)``. Order 2, symplectic,
    symmetric: the step with ``-h`` from ``t + h`` is its exact inverse. Reference: Hairer,
    Lubich, Wanner, *Geometric Numerical Integration*, Sect. I.3.1.
    """

    name = "position_verlet"
    order = 2
    symplectic = True
    symmetric = True
    evals = (2, 1)  # evaluations of (f_q, f_p) per step

    def step(self, func, t, h, state):
        f_q, f_p = func
        q, p = state
        # Strictly inside [t, t + h]: a right-open, piecewise-constant θ gives θ_j here.
        tau = t + 0.5 * h
        q = q + (0.5 * h) * f_q(tau, p)
        p = p + h * f_p(tau, q)
        q = q + (0.5 * h) * f_q(tau, p)
        return q, p


solvers.register_stepper(PositionVerlet())
assert solvers.methods()["position_verlet"] == "symplectic"
# --8<-- [end:class]

# --8<-- [start:order]
# Harmonic oscillator q' = p, p' = -q with q(0) = 1, p(0) = 0: q(t) = cos t.
oscillator = (lambda t, p: p, lambda t, q: -q)
q0 = torch.ones(1, dtype=torch.float64)
p0 = torch.zeros(1, dtype=torch.float64)
span = torch.tensor([0.0, 1.0], dtype=torch.float64)

errors = []
for h in (0.1, 0.05, 0.025):
    (q, p), stats = solvers.odeint(
        oscillator, (q0, p0), span, method="position_verlet", step_size=h, return_stats=True
    )
    errors.append(abs(q[-1].item() - math.cos(1.0)))
    assert stats["nfe_q"] == 2 * stats["steps"] and stats["nfe_p"] == stats["steps"]
orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
print("observed orders", [round(o, 3) for o in orders])  # ~[2.0, 2.0]
assert all(abs(o - 2.0) < 0.05 for o in orders)
# --8<-- [end:order]

# --8<-- [start:reverse]
# 10,000 steps forward, then back over the same grid: the start again, to round-off.
there = torch.tensor([0.0, 1000.0], dtype=torch.float64)
(q, p) = solvers.odeint(oscillator, (q0, p0), there, method="position_verlet", step_size=0.1)
energy = 0.5 * (q**2 + p**2)
print("energy drift", (energy - 0.5).abs().max().item())  # bounded, ~1e-3: no drift
assert (energy - 0.5).abs().max() < 5e-3
(q_back, p_back) = solvers.odeint(
    oscillator, (q[-1], p[-1]), there.flip(0), method="position_verlet", step_size=0.1
)
print("return error", (q_back[-1] - q0).abs().item(), (p_back[-1] - p0).abs().item())
assert (q_back[-1] - q0).abs() < 1e-10 and (p_back[-1] - p0).abs() < 1e-10
# --8<-- [end:reverse]

# --8<-- [start:network]
torch.manual_seed(0)
net = neuralpde.PDECNN("hamiltonian", in_channels=3, num_classes=10, widths=(8, 16))
net.set_solver("position_verlet", step_size=0.5)
logits = net(torch.randn(2, 3, 8, 8))  # (batch, num_classes)
print(net.solver_stats())  # [{'method': 'position_verlet', 'nfe': 18, 'steps': 6, ...}]
assert net.solver_stats()[0]["steps"] == 6 and net.solver_stats()[0]["nfe"] == 18
# --8<-- [end:network]

# --8<-- [start:memory]
# Reversible memory works for any stepper whose step with -h inverts the step.
y0 = (q0.clone().requires_grad_(), p0.clone().requires_grad_())
grads = {}
for memory in ("autograd", "reversible"):
    (q, p) = solvers.odeint(
        oscillator, y0, span, method="position_verlet", step_size=0.1, memory=memory
    )
    grads[memory] = torch.autograd.grad((q[-1] ** 2 + p[-1]).sum(), y0)
for a, b in zip(grads["autograd"], grads["reversible"]):
    torch.testing.assert_close(a, b)
# --8<-- [end:memory]
print("ok")
