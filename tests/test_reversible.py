"""memory="reversible": exact gradients of symplectic stages with no per-step activations."""

from __future__ import annotations

import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

import neuralpde
import solvers
from solvers import Solver, _reversible
from solvers._methods import STEPPERS
from solvers._steppers import Stepper

ROOT = Path(__file__).resolve().parents[1]
METHODS = sorted(STEPPERS)  # every registered stepper
ARCHS = {"hamiltonian": neuralpde.HamiltonianRHS, "second_order": neuralpde.SecondOrderRHS}
F64 = torch.float64


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def stage_grads(rhs, x, method, memory, h, **options):
    """Output and gradients (input first, then every parameter) of a stage and a loss."""
    stage = neuralpde.Stage(rhs, method, h, memory=memory, **options)
    x = x.detach().requires_grad_(True)
    y = stage(x)
    # A fixed random readout: every output entry matters, with different weights.
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    loss = (w * y).sum() + 0.1 * (y**2).sum()
    return y.detach(), torch.autograd.grad(loss, [x, *rhs.parameters()])


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("steps", [3, 17])
def test_gradients_equal_autograd_float64(arch, method, steps):
    torch.manual_seed(0)
    rhs = ARCHS[arch](4, steps, 0.3).to(F64)
    x = torch.randn(2, 4, 5, 5, dtype=F64)
    y_ref, g_ref = stage_grads(rhs, x, method, "autograd", 0.3)
    y_rev, g_rev = stage_grads(rhs, x, method, "reversible", 0.3)
    # The forward pass is the stepper's arithmetic, operation for operation.
    assert torch.equal(y_rev, y_ref)
    names = ["input"] + [n for n, _ in rhs.named_parameters()]
    for name, a, b in zip(names, g_rev, g_ref):
        assert rel(a, b) <= 1e-10, name
        if name.endswith("weight"):
            # Time-dependent weights: every step's set gets its own gradient. (With
            # symplectic Euler the second-order output q does not see the last step's
            # weights, so that one may be zero in both modes.)
            assert a.shape[0] == steps
            assert b[0].norm() > 0
            for j in range(steps):
                assert float((a[j] - b[j]).norm()) <= 1e-10 * float(b.norm()), (name, j)


@pytest.mark.parametrize("arch,method", [("hamiltonian", "verlet"), ("second_order", "leapfrog")])
def test_gradients_equal_autograd_256_steps(arch, method):
    torch.manual_seed(0)
    rhs = ARCHS[arch](4, 256, 0.05).to(F64)
    x = torch.randn(2, 4, 4, 4, dtype=F64)
    _, g_ref = stage_grads(rhs, x, method, "autograd", 0.05)
    _, g_rev = stage_grads(rhs, x, method, "reversible", 0.05)
    for a, b in zip(g_rev, g_ref):
        assert rel(a, b) <= 1e-10
    # The first and last steps' weights both get their gradient.
    weight = [n for n, _ in rhs.named_parameters()].index(
        "theta_q.weight" if arch == "hamiltonian" else "theta.weight"
    )
    for j in (0, 255):
        assert rel(g_rev[1 + weight][j], g_ref[1 + weight][j]) <= 1e-10


def test_gradients_equal_autograd_float32():
    torch.manual_seed(0)
    rhs = neuralpde.HamiltonianRHS(8, 64, 0.1)
    x = torch.randn(4, 8, 6, 6)
    _, g_ref = stage_grads(rhs, x, "symplectic_euler", "autograd", 0.1)
    _, g_rev = stage_grads(rhs, x, "symplectic_euler", "reversible", 0.1)
    for a, b in zip(g_rev, g_ref):
        assert rel(a, b) <= 1e-4


def test_checkpoints_bound_float32_drift():
    # h = 1 with random weights: the state grows and the inverse steps amplify round-off,
    # so the reconstruction drifts; restarting from a stored state every 8 steps bounds it.
    torch.manual_seed(0)
    rhs = neuralpde.HamiltonianRHS(4, 256, 1.0)
    x = torch.randn(2, 4, 6, 6)
    _, g_ref = stage_grads(rhs, x, "symplectic_euler", "autograd", 1.0)
    _, g_rev = stage_grads(rhs, x, "symplectic_euler", "reversible", 1.0)
    _, g_ck = stage_grads(rhs, x, "symplectic_euler", "reversible", 1.0, checkpoint_every=8)
    assert max(rel(a, b) for a, b in zip(g_rev, g_ref)) > 1e-3
    for a, b in zip(g_ck, g_ref):
        assert rel(a, b) <= 1e-4


@pytest.mark.parametrize("every", [1, 5, 16])
def test_checkpoints_keep_float64_gradients(every):
    torch.manual_seed(0)
    rhs = neuralpde.SecondOrderRHS(4, 16, 0.3).to(F64)
    x = torch.randn(2, 4, 5, 5, dtype=F64)
    _, g_ref = stage_grads(rhs, x, "yoshida4", "autograd", 0.3)
    _, g_ck = stage_grads(rhs, x, "yoshida4", "reversible", 0.3, checkpoint_every=every)
    for a, b in zip(g_ck, g_ref):
        assert rel(a, b) <= 1e-10


def test_odeint_plain_functions_several_outputs_and_backwards_time():
    # Plain closures: their tensors are differentiated only when passed as params.
    torch.manual_seed(0)
    A = torch.randn(3, 3, dtype=F64, requires_grad=True)
    B = torch.randn(3, 3, dtype=F64, requires_grad=True)
    func = (lambda t, p: torch.tanh(p @ A) * (1 + t), lambda t, q: -torch.sin(q @ B))
    q0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    p0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    for t in (torch.tensor([0.0, 0.35, 1.0, 1.2], dtype=F64), torch.tensor([1.0, 0.2, -0.5])):
        grads = []
        for memory, params in [("autograd", None), ("reversible", (A, B))]:
            solver = Solver("yoshida4", step_size=0.1, memory=memory)
            q, p = solvers.solve(func, (q0, p0), t, solver, params=params).ys
            loss = (q**2).sum() + (p * torch.arange(p.numel()).view_as(p)).sum()
            grads.append(torch.autograd.grad(loss, (q0, p0, A, B)))
        for a, b in zip(*grads):
            assert rel(a, b) <= 1e-10


def test_odeint_gathers_module_parameters():
    torch.manual_seed(0)
    rhs = neuralpde.HamiltonianRHS(4, 3, 0.5).to(F64)
    assert _reversible.gather_params(rhs.separable) == tuple(rhs.parameters())
    state = rhs.to_state(torch.randn(1, 4, 3, 3, dtype=F64))
    t = torch.tensor([0.0, 1.5], dtype=F64)
    q, p = solvers.solve(
        rhs.separable, state, t, Solver("verlet", step_size=0.5, memory="reversible")
    ).ys
    grads = torch.autograd.grad(q[-1].sum() + p[-1].sum(), list(rhs.parameters()))
    assert all(g.norm() > 0 for g in grads)


class _GenericVerlet(Stepper):
    """Verlet as a plain Stepper: no tableau, so the reversible backward takes the generic
    path (reconstruct with the step of -h, then differentiate the step again)."""

    name = "test_generic_verlet"
    order = 2
    evals = (1, 2)

    def step(self, func, t, h, state):
        return STEPPERS["verlet"].step(func, t, h, state)


def test_generic_path_for_a_stepper_without_a_tableau():
    torch.manual_seed(0)
    rhs = neuralpde.HamiltonianRHS(4, 4, 0.25).to(F64)
    x = torch.randn(2, 4, 4, 4, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.6, 1.0], dtype=F64)  # 0.6 is interpolated between two steps
    ref = solvers.solve(rhs.separable, rhs.to_state(x), t, Solver("verlet", step_size=0.25)).ys
    solvers.register_stepper(_GenericVerlet())
    try:
        solver = Solver("test_generic_verlet", step_size=0.25, memory="reversible")
        out = solvers.solve(rhs.separable, rhs.to_state(x), t, solver).ys
    finally:
        del STEPPERS["test_generic_verlet"]
    params = [x, *rhs.parameters()]
    g_ref = torch.autograd.grad(ref[0].sum() + 2 * ref[1][1:].sum(), params)
    g_gen = torch.autograd.grad(out[0].sum() + 2 * out[1][1:].sum(), params)
    for a, b in zip(g_gen, g_ref):
        assert rel(a, b) <= 1e-10


def test_a_users_splitting_method_gets_reversible_memory():
    """Registered from its tableau alone (position Verlet), with interpolated outputs."""
    user = solvers.SplittingStepper(
        "test_position_verlet_rev",
        order=2,
        tableau=[("drift", 0.5, 0.5), ("kick", 1.0, 0.5), ("drift", 0.5, 0.5)],
    )
    torch.manual_seed(0)
    A = torch.randn(3, 3, dtype=F64, requires_grad=True)
    func = (lambda t, p: torch.tanh(p @ A) * (1 + t), lambda t, q: -torch.sin(q) * (2 - t))
    y0 = tuple(torch.randn(2, 3, dtype=F64, requires_grad=True) for _ in range(2))
    t = torch.tensor([0.0, 0.35, 1.0], dtype=F64)
    solvers.register_stepper(user)
    try:
        grads = []
        for memory, params in [("autograd", None), ("reversible", (A,))]:
            solver = Solver(user.name, step_size=0.1, memory=memory)
            q, p = solvers.solve(func, y0, t, solver, params=params).ys
            grads.append(torch.autograd.grad((q**2).sum() + p.sum(), (*y0, A)))
    finally:
        del STEPPERS[user.name]
    for a, b in zip(*grads):
        assert rel(a, b) <= 1e-10


class _Held:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor


def saved_bytes(stage, x) -> int:
    """Bytes of distinct non-parameter storages the graph of stage(x) keeps for backward."""
    held = weakref.WeakSet()
    params = {p.untyped_storage().data_ptr() for p in stage.parameters()}

    def pack(t):
        s = _Held(t)
        held.add(s)
        return s

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s.tensor):
        y = stage(x)
    out = {}
    for s in list(held):
        st = s.tensor.untyped_storage()
        if st.data_ptr() not in params:
            out[st.data_ptr()] = st.nbytes()
    del y
    return sum(out.values())


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_saved_bytes_constant_when_reversible_linear_when_autograd(arch):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 12, 12, requires_grad=True)
    state = x.numel() * x.element_size()

    def count(steps, memory, **options):
        rhs = ARCHS[arch](4, steps, 0.1)
        return saved_bytes(neuralpde.Stage(rhs, memory=memory, **options), x)

    rev = [count(n, "reversible") for n in (8, 64)]
    assert rev[0] == rev[1]
    assert rev[0] <= 2 * state  # the final (q, p) and nothing per step
    ag = [count(n, "autograd") for n in (8, 16, 32)]
    per_step = (ag[1] - ag[0]) / 8
    assert per_step >= state  # at least one activation per step...
    assert (ag[2] - ag[1]) / 16 == pytest.approx(per_step, rel=0.05)  # ...linear in depth
    assert ag[1] >= 10 * rev[0]
    # Checkpoints cost one stored state per checkpoint.
    ck = count(64, "reversible", checkpoint_every=16)
    half = state // 2 if arch == "hamiltonian" else state
    assert ck - rev[0] == 3 * 2 * half


def test_training_256_step_stage_same_loss_trajectory():
    def train(memory):
        torch.manual_seed(0)
        net = neuralpde.PDECNN(
            "hamiltonian", 1, 3, (4, 4), steps=256, step_size=0.02, memory=memory
        ).to(F64)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(4, 1, 4, 4, dtype=F64, generator=gen)
        labels = torch.tensor([0, 1, 2, 1])
        opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
        losses = []
        for _ in range(4):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x), labels)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, torch.cat([p.detach().flatten() for p in net.parameters()])

    l_ag, w_ag = train("autograd")
    l_rev, w_rev = train("reversible")
    assert l_ag[-1] < l_ag[0]  # it does train
    assert l_rev == pytest.approx(l_ag, rel=1e-10)
    assert float((w_rev - w_ag).abs().max()) <= 1e-10 * float(w_ag.abs().max())


def test_adjoint_memory_gradient_is_approximate():
    # torchdiffeq's adjoint re-solves the state backwards with the adjoint ODE: its
    # gradient is not the gradient of the discrete forward pass, only converges to it.
    def err(h):
        torch.manual_seed(0)
        rhs = neuralpde.ParabolicRHS(4, 3, 0.5, interpolation="linear").to(F64)
        x = torch.randn(2, 4, 4, 4, dtype=F64)
        _, g_ref = stage_grads(rhs, x, "rk4", "autograd", h)
        _, g_adj = stage_grads(rhs, x, "rk4", "adjoint", h)
        return max(rel(a, b) for a, b in zip(g_adj, g_ref))

    coarse, fine = err(0.5), err(0.02)
    assert coarse > 0.1
    assert fine < coarse / 10


def test_errors_are_clear():
    with pytest.raises(ValueError, match="reversible.*'euler'.*symplectic"):
        Solver("euler", step_size=0.1, memory="reversible")
    with pytest.raises(ValueError, match="reversible.*'dopri5'"):
        Solver("dopri5", memory="reversible")
    with pytest.raises(ValueError, match="memory='reversible'"):
        Solver("verlet", step_size=0.1, memory="adjoint")
    with pytest.raises(ValueError, match="memory must be one of"):
        Solver("verlet", step_size=0.1, memory="checkpoint")
    with pytest.raises(ValueError, match="checkpoint_every"):
        Solver("verlet", step_size=0.1, memory="reversible", options={"checkpoint_every": 0})
    with pytest.raises(ValueError, match="takes no options"):
        Solver("verlet", step_size=0.1, options={"checkpoint_every": 2})
    with pytest.raises(ValueError, match="params= names the tensors"):
        solvers.solve(
            (lambda t, p: p, lambda t, q: -q),
            (torch.ones(2), torch.zeros(2)),
            [0.0, 1.0],
            Solver("verlet", step_size=0.1),
            params=(),
        )

    with pytest.raises(ValueError, match="stage 0: memory='reversible'.*ParabolicRHS.*adjoint"):
        neuralpde.PDECNN("parabolic", 1, 2, (4, 4), memory="reversible")
    with pytest.raises(ValueError, match="ResNetRHS"):
        neuralpde.PDECNN("resnet", 1, 2, (4, 4), memory="reversible")
    with pytest.raises(ValueError, match="'rk4' is not one; use a symplectic method"):
        neuralpde.PDECNN("hamiltonian", 1, 2, (4, 4), method="rk4", memory="reversible")
    net = neuralpde.PDECNN("second_order", 1, 2, (4, 4, 4))
    with pytest.raises(ValueError, match="stage 1: memory='adjoint'.*'leapfrog'.*reversible"):
        net.set_solver(stage=1, memory="adjoint")
    with pytest.raises(ValueError, match=r"takes no options.*memory='reversible' takes checkpoint"):
        net.set_solver(checkpoint_every=4)


def test_per_stage_memory_and_reset():
    net = neuralpde.PDECNN("hamiltonian", 1, 2, (4, 4, 4), memory="reversible")
    assert [s.memory for s in net.stages] == ["reversible", "reversible"]
    net.set_solver(stage=0, method="rk4", memory="adjoint")
    assert [s.memory for s in net.stages] == ["adjoint", "reversible"]
    net.set_solver(step_size=0.5)  # a setting not named is kept
    assert [s.memory for s in net.stages] == ["adjoint", "reversible"]


def test_inplace_update_between_forward_and_backward_is_caught():
    rhs = neuralpde.HamiltonianRHS(4, 3, 0.5)
    stage = neuralpde.Stage(rhs, memory="reversible")
    y = stage(torch.randn(1, 4, 3, 3))
    with torch.no_grad():
        rhs.theta_q.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        y.sum().backward()


@pytest.mark.parametrize("script", ["memory", "reversible_drift"])
def test_benchmark_runs_tiny(script):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--tiny"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"command: python benchmarks/{script}.py --tiny" in out.stdout
    rows = [ln for ln in out.stdout.splitlines() if ln.startswith("| hamiltonian")]
    assert len(rows) == (2 if script == "memory" else 4)
