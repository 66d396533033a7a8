"""Adding a stepper: position Verlet, written as its splitting tableau, registered, used.

Run by the test suite; every claim on the page "Adding a stepper" is asserted here.
"""

import math

import torch

import neuralpde
import solvers

# --8<-- [start:class]
# Position Verlet (drift-kick-drift): q += h/2 f_q(p), p += h f_p(q), q += h/2 f_q(p), with
# time frozen at the cell midpoint (node c = 1/2). Order 2, symplectic, symmetric.
# Reference: Hairer, Lubich & Wanner, Geometric Numerical Integration, Sect. I.3.1.
position_verlet = solvers.SplittingStepper(
    "position_verlet",
    order=2,
    tableau=[("drift", 0.5, 0.5), ("kick", 1.0, 0.5), ("drift", 0.5, 0.5)],
    reference="Hairer, Lubich & Wanner, Sect. I.3.1",
)
solvers.register_stepper(position_verlet)
assert solvers.methods()["position_verlet"] == "symplectic"
# Derived from the tableau: evaluations per step of (f_q, f_p), and symmetry.
assert position_verlet.evals == (2, 1) and position_verlet.symmetric
# --8<-- [end:class]

# --8<-- [start:order]
# Harmonic oscillator q' = p, p' = -q with q(0) = 1, p(0) = 0: q(t) = cos t.
oscillator = (lambda t, p: p, lambda t, q: -q)
q0 = torch.ones(1, dtype=torch.float64)
p0 = torch.zeros(1, dtype=torch.float64)
span = torch.tensor([0.0, 1.0], dtype=torch.float64)

errors = []
for h in (0.1, 0.05, 0.025):
    sol = solvers.solve(oscillator, (q0, p0), span, solvers.Solver("position_verlet", step_size=h))
    q, p = sol.y_final
    errors.append(abs(q.item() - math.cos(1.0)))
    assert sol.stats.nfe_q == 2 * sol.stats.steps and sol.stats.nfe_p == sol.stats.steps
orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
print("observed orders", [round(o, 3) for o in orders])  # ~[2.0, 2.0]
assert all(abs(o - position_verlet.order) < 0.05 for o in orders)
# --8<-- [end:order]

# --8<-- [start:reverse]
# 10,000 steps forward, then back over the same grid: the start again, to round-off.
solver = solvers.Solver("position_verlet", step_size=0.1)
there = torch.tensor([0.0, 1000.0], dtype=torch.float64)
q, p = solvers.solve(oscillator, (q0, p0), there, solver).ys
energy = 0.5 * (q**2 + p**2)
print("energy drift", (energy - 0.5).abs().max().item())  # bounded, ~1e-3: no drift
assert (energy - 0.5).abs().max() < 5e-3
q_back, p_back = solvers.solve(oscillator, (q[-1], p[-1]), there.flip(0), solver).y_final
print("return error", (q_back - q0).abs().item(), (p_back - p0).abs().item())
assert (q_back - q0).abs() < 1e-10 and (p_back - p0).abs() < 1e-10
# The inverse of one step, generated from the tableau, undoes it to round-off.
t0 = torch.tensor(0.0, dtype=torch.float64)
one = position_verlet.step(oscillator, t0, 0.1, (q0, p0))
back = position_verlet.inverse(oscillator, t0, 0.1, one)
assert all(torch.allclose(a, b, rtol=0, atol=1e-15) for a, b in zip(back, (q0, p0)))
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
# Reversible memory comes from the tableau: the same gradients as plain autograd.
y0 = (q0.clone().requires_grad_(), p0.clone().requires_grad_())
grads = {}
for memory in ("autograd", "reversible"):
    solver = solvers.Solver("position_verlet", step_size=0.1, memory=memory)
    q, p = solvers.solve(oscillator, y0, span, solver, save="final").y_final
    grads[memory] = torch.autograd.grad((q**2 + p).sum(), y0)
for a, b in zip(grads["autograd"], grads["reversible"]):
    torch.testing.assert_close(a, b)
# --8<-- [end:memory]
print("ok")
