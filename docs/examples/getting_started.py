"""Getting started: the building blocks of neuralpde, one at a time (run by the tests)."""

import io

import torch

import neuralpde
import solvers

torch.manual_seed(0)

# --8<-- [start:rhs]
rhs = neuralpde.ParabolicRHS(channels=8, steps=3, step_size=1.0)  # θ(t) on [0, 3]
y = torch.randn(4, 8, 16, 16)  # (batch, channels, height, width)
dy = rhs(torch.tensor(0.5), y)  # dY/dt at t = 0.5: same shape as y
assert dy.shape == y.shape
# --8<-- [end:rhs]

# --8<-- [start:odeint]
t = torch.tensor([0.0, 1.0, 2.0, 3.0])
ys = solvers.odeint(rhs, y, t, method="euler", options={"step_size": 1.0})  # torchdiffeq's call
print(ys.shape)  # (len(t), batch, channels, height, width) = (4, 4, 8, 16, 16)
# The same solve as a value: a Solver, and a Solution with the statistics.
solver = solvers.Solver("euler", step_size=1.0)
sol = solvers.solve(rhs, y, t, solver)
assert torch.equal(sol.ys, ys)
print(sol.stats)  # Stats(nfe=3, steps=3, rejected=None, nfe_q=None, nfe_p=None)
# Only the end state, without building the (len(t), ...) solution: what a stage asks for.
end = solvers.solve(rhs, y, t, solver, save="final").y_final
assert torch.equal(end, ys[-1])  # (batch, channels, height, width)
# --8<-- [end:odeint]

# --8<-- [start:stage]
stage = neuralpde.Stage(rhs)  # the paper's scheme for this dynamic: forward Euler, h = 1
out = stage(y)  # the state at T = 3, (batch, channels, height, width)
torch.testing.assert_close(out, sol.ys[-1])
stage.set_solver("rk4", step_size=0.5)  # same weights, 6 RK4 steps
print(stage(y).shape, stage.last_stats)  # {'method': 'rk4', 'nfe': 24, 'steps': 6}
# --8<-- [end:stage]

# --8<-- [start:split]
ham = neuralpde.HamiltonianRHS(channels=8)
q, p = ham.to_state(y)  # the channel halves Y | Z: (batch, 4, height, width) each
f_q, f_p = ham.separable  # dq/dt = f_q(t, p), dp/dt = f_p(t, q)
(qs, ps) = solvers.odeint(
    (f_q, f_p),
    (q, p),
    torch.tensor([0.0, 3.0]),
    method="symplectic_euler",
    options={"step_size": 1.0},
)
by_hand = ham.from_state((qs[-1], ps[-1]))  # (batch, 8, height, width)
torch.testing.assert_close(neuralpde.Stage(ham)(y), by_hand)
# --8<-- [end:split]

# --8<-- [start:network]
net = neuralpde.PDECNN("second_order", in_channels=1, num_classes=10, widths=(8, 16, 16))
images = torch.randn(5, 1, 8, 8)  # (batch, in_channels, height, width)
print(net(images).shape)  # (batch, num_classes) = (5, 10)
print([s["method"] for s in net.solver_stats()])  # ['leapfrog', 'leapfrog']
# --8<-- [end:network]

# --8<-- [start:save]
buffer = io.BytesIO()  # or a file name
torch.save(net.state_dict(), buffer)
buffer.seek(0)
copy = neuralpde.PDECNN("second_order", in_channels=1, num_classes=10, widths=(8, 16, 16))
copy.load_state_dict(torch.load(buffer))
net.eval(), copy.eval()  # BatchNorm: use running statistics
torch.testing.assert_close(copy(images), net(images))
# --8<-- [end:save]
print("ok")
