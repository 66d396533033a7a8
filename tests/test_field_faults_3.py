"""Faults found in the field, round 3 (issue 21): mixed precision, torch.func transforms,
higher derivatives, parameters swapped between forward and backward, in-place changes of
a stage's output, tracing, DDP across refine, and torchdiffeq's own suite.

Each kind's right value comes from autograd mode, float32/float64 or torchdiffeq; where a
kind cannot be supported, the test holds the project's named error.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchdiffeq
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

import neuralpde
import solvers
from neuralpde import HamiltonianRHS, ParabolicRHS, PDECNN, SecondOrderRHS, Stage

BF16 = torch.bfloat16
F64 = torch.float64
SPLIT_ARCHS = ["hamiltonian", "second_order"]
ALL_ARCHS = ["parabolic", "hamiltonian", "second_order", "resnet"]
CUDA = torch.cuda.is_available()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm() / b.norm()).detach())


def _grads(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])


# A fixed solver for every network test: (method, memory) per arch.
MODES = [
    ("parabolic", "euler", "autograd"),
    ("parabolic", "rk4", "adjoint"),
    ("resnet", "midpoint", "adjoint"),
    ("hamiltonian", None, "autograd"),
    ("hamiltonian", None, "reversible"),
    ("hamiltonian", "verlet", "reversible"),
    ("second_order", None, "reversible"),
]


def _net(arch, method, memory, step_size=0.1, steps=3, **kw):
    torch.manual_seed(0)
    net = PDECNN(arch, 3, 5, (4, 6), steps=steps, step_size=step_size, **kw)
    net.set_solver(method, memory=memory)
    return net


# ---- 1. mixed precision on the Runge–Kutta path ------------------------------------------


@pytest.mark.parametrize(
    "method,options",
    [
        ("rk4", {"step_size": 0.1}),
        ("euler", {"step_size": 0.1}),
        ("midpoint", None),
        ("implicit_adams", {"step_size": 0.1}),
        ("dopri5", None),
        ("bosh3", None),
    ],
)
@pytest.mark.parametrize("tuple_state", [False, True])
def test_1_autocast_derivative_matches_torchdiffeq(method, options, tuple_state):
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    y0 = torch.randn(3, 4, generator=_gen())
    t = torch.tensor([0.0, 0.5, 1.0])

    def f(t, y):
        if tuple_state:
            return tuple(torch.tanh(lin(v)) for v in y)
        return torch.tanh(lin(y))

    state = (y0, 2 * y0) if tuple_state else y0
    with torch.autocast("cpu", dtype=BF16):
        ours = solvers.odeint(f, state, t, method=method, options=options, rtol=1e-3, atol=1e-4)
        theirs = torchdiffeq.odeint(f, state, t, method=method, options=options, rtol=1e-3, atol=1e-4)
    for a, b in zip(ours if tuple_state else (ours,), theirs if tuple_state else (theirs,)):
        assert a.dtype == torch.float32  # the state keeps its dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["rk4", "dopri5", "verlet"])
def test_1_autocast_solve_is_near_float32(method):
    """``solve`` under autocast: the float32 solution to bf16 accuracy, every kind of method."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    y0 = torch.randn(3, 4, generator=_gen())
    step = None if method == "dopri5" else 0.1
    solver = solvers.Solver(method, step_size=step, rtol=1e-3 if step is None else 1e-7)
    if method == "verlet":
        func, state = (lambda t, p: torch.tanh(lin(p)), lambda t, q: -lin(q)), (y0, y0.flip(0))
    else:
        func, state = (lambda t, y: torch.tanh(lin(y))), y0
    ref = solvers.solve(func, state, [0.0, 1.0], solver).y_final
    with torch.autocast("cpu", dtype=BF16):
        out = solvers.solve(func, state, [0.0, 1.0], solver).y_final
    for a, b in zip(solvers._state.parts(out), solvers._state.parts(ref)):
        assert a.dtype == torch.float32
        assert _rel(a, b) < 2e-2


def test_1_autocast_still_refuses_a_wrong_shape():
    with torch.autocast("cpu", dtype=BF16), pytest.raises(ValueError, match="shape"):
        solvers.odeint(lambda t, y: y[:2], torch.ones(3, 4), torch.tensor([0.0, 1.0]), method="rk4")


# ---- 2. mixed precision through the hand-written layer ----------------------------------


@pytest.mark.parametrize("rhs_cls", [HamiltonianRHS, ParabolicRHS, SecondOrderRHS])
@pytest.mark.parametrize("dtype", [BF16, torch.float16])
def test_2_symmetric_layer_under_autocast_equals_autograd(rhs_cls, dtype):
    """The issue's input: forward under autocast, backward outside. The hand-written
    backward gives autograd's gradient of the same formula under autocast."""
    grads = {}
    for name in ("ours", "reference"):
        torch.manual_seed(0)
        st = Stage(rhs_cls(4, steps=3, step_size=0.25))
        x = torch.randn(2, 4, 8, 8, generator=_gen(1), requires_grad=True)
        with torch.autocast("cpu", dtype=dtype), pytest.MonkeyPatch.context() as mp:
            if name == "reference":  # every symmetric layer through plain autograd
                mp.setattr(neuralpde._layers, "_transformed", lambda *a: True)
            out = st(x)
        out.float().pow(2).sum().backward()
        grads[name] = torch.cat([x.grad.flatten(), _grads(st)])
    torch.testing.assert_close(grads["ours"], grads["reference"], rtol=1e-5, atol=1e-6)


def test_2_layer_autocast_gradient_near_float32():
    torch.manual_seed(0)
    w = torch.randn(4, 4, 3, 3, generator=_gen()) * 0.3
    y = torch.randn(2, 4, 6, 6, generator=_gen(1))
    scale, shift = torch.ones(4), torch.zeros(4)
    out = {}
    for dt in (None, BF16):
        ins = [v.clone().requires_grad_() for v in (y, w, scale, shift)]
        with torch.autocast("cpu", dtype=BF16, enabled=dt is not None):
            o = neuralpde._layers.symmetric_layer(*ins)
        assert o.dtype == (BF16 if dt else torch.float32)
        o.float().pow(2).sum().backward()
        out[dt] = [v.grad for v in ins]
    for a, b in zip(out[BF16], out[None]):
        assert a.dtype == b.dtype == torch.float32
        assert _rel(a, b) < 3e-2


# ---- 3. mixed precision in every memory mode ----------------------------------------------


@pytest.mark.parametrize("arch,method,memory", MODES)
def test_3_autocast_gradients_match_float32_in_every_memory_mode(arch, method, memory):
    x = torch.randn(4, 3, 8, 8, generator=_gen(1))
    grads = {}
    for dt in (None, BF16):
        net = _net(arch, method, memory)
        with torch.autocast("cpu", dtype=BF16, enabled=dt is not None):
            out = net(x)
        out.float().pow(2).sum().backward()
        grads[dt] = _grads(net)
    assert _rel(grads[BF16], grads[None]) < 5e-2


@pytest.mark.parametrize("memory", ["autograd", "reversible"])
def test_3_reversible_under_autocast_equals_autograd_under_autocast(memory):
    """The reversible recomputation runs under the forward's autocast state: the same
    gradient as autograd mode under autocast, to the reconstruction's round-off."""
    x = torch.randn(2, 4, 8, 8, generator=_gen(1))
    grads = {}
    for mem in ("autograd", memory):
        torch.manual_seed(0)
        st = Stage(HamiltonianRHS(4, steps=4, step_size=0.1), memory=mem)
        with torch.autocast("cpu", dtype=BF16):
            out = st(x.to(BF16))
        assert out.dtype == BF16
        out.float().pow(2).sum().backward()
        grads[mem] = _grads(st)
    assert _rel(grads[memory], grads["autograd"]) < 2e-2


@pytest.mark.skipif(not CUDA, reason="needs a GPU")
@pytest.mark.parametrize("arch,method,memory", MODES)
def test_3_autocast_on_cuda_matches_cpu(arch, method, memory):
    x = torch.randn(4, 3, 8, 8, generator=_gen(1))
    grads = {}
    for device in ("cpu", "cuda"):
        net = _net(arch, method, memory).to(device)
        with torch.autocast(device, dtype=BF16):
            out = net(x.to(device))
        out.float().pow(2).sum().backward()
        grads[device] = _grads(net).cpu()
    assert _rel(grads["cuda"], grads["cpu"]) < 5e-2
