"""Faults found in the field, round 3 (issue 21): mixed precision, torch.func transforms,
higher derivatives, parameters swapped between forward and backward, in-place changes of
a stage's output, tracing, DDP across refine, and torchdiffeq's own suite.

Each kind's right value comes from autograd mode, float32/float64 or torchdiffeq; where a
kind cannot be supported, the test holds the project's named error.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torchdiffeq
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

import neuralpde
import solvers
from neuralpde import PDECNN, HamiltonianRHS, ParabolicRHS, SecondOrderRHS, Stage

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
        theirs = torchdiffeq.odeint(
            f, state, t, method=method, options=options, rtol=1e-3, atol=1e-4
        )
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


# ---- 4. and 5. higher derivatives: autograd's second order, or a named error -------------


def _penalty_grads(arch, method, memory):
    net = _net(arch, method, memory).double()
    x = torch.randn(2, 3, 8, 8, generator=_gen(1), dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(net(x).pow(2).sum(), x, create_graph=True)
    g.pow(2).sum().backward()
    return net


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_4_gradient_penalty_in_autograd_mode_has_every_second_order_term(arch):
    """Autograd mode (hand-written layer included) against a finite difference of the
    penalty ‖∂L/∂x‖² along a random direction of the parameters."""
    net = _penalty_grads(arch, None, "autograd")
    params = [p for p in net.parameters() if p.grad is not None]
    assert {id(p) for p in params} >= {id(p) for p in net.stages.parameters()}
    direction = [torch.randn(p.shape, generator=_gen(2), dtype=F64) for p in params]
    x = torch.randn(2, 3, 8, 8, generator=_gen(1), dtype=F64, requires_grad=True)

    def penalty(eps):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(eps * d)
        (g,) = torch.autograd.grad(net(x).pow(2).sum(), x)
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(eps * d)
        return g.pow(2).sum()

    eps = 1e-6
    fd = (penalty(eps) - penalty(-eps)) / (2 * eps)
    analytic = sum((p.grad * d).sum() for p, d in zip(params, direction))
    torch.testing.assert_close(analytic, fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    "arch,method,memory",
    [m for m in MODES if m[2] != "autograd"],
)
def test_4_gradient_penalty_in_memory_modes_is_a_named_error(arch, method, memory):
    with pytest.raises(RuntimeError, match=f"memory='{memory}' differentiates once.*autograd"):
        _penalty_grads(arch, method, memory)


@pytest.mark.parametrize("memory", ["reversible", "adjoint"])
def test_4_first_order_unchanged_in_memory_modes(memory):
    """Without create_graph the memory modes differentiate as before (autograd's gradient
    to round-off for reversible, to the adjoint's accuracy for adjoint)."""
    arch, method = ("hamiltonian", None) if memory == "reversible" else ("parabolic", "rk4")
    grads = {}
    x = torch.randn(2, 3, 8, 8, generator=_gen(1), dtype=F64)
    for mem in ("autograd", memory):
        net = _net(arch, method, mem).double()
        net(x).pow(2).sum().backward()
        grads[mem] = _grads(net)
    assert _rel(grads[memory], grads["autograd"]) < (1e-10 if memory == "reversible" else 1e-2)


@pytest.mark.parametrize("memory", ["autograd", "reversible"])
@pytest.mark.parametrize("rhs_cls", [HamiltonianRHS, SecondOrderRHS])
def test_5_hessian_through_a_stage(memory, rhs_cls):
    """The issue's input: autograd mode's Hessian is the finite difference of its gradient;
    reversible memory raises instead of returning zero."""
    torch.manual_seed(0)
    st = Stage(rhs_cls(4, steps=3, step_size=0.5), memory=memory).double()
    v = torch.randn(1, 4, 2, 2, generator=_gen(1), dtype=F64)

    def loss(v):
        return st(v).pow(2).sum()

    if memory == "reversible":
        with pytest.raises(RuntimeError, match="memory='reversible' differentiates once"):
            torch.autograd.functional.hessian(loss, v)
        return
    hess = torch.autograd.functional.hessian(loss, v).reshape(v.numel(), v.numel())
    assert hess.norm() > 1.0
    d = torch.randn(v.shape, generator=_gen(2), dtype=F64)

    def gradient(v):
        v = v.clone().requires_grad_()
        return torch.autograd.grad(loss(v), v)[0]

    fd = (gradient(v + 1e-6 * d) - gradient(v - 1e-6 * d)) / 2e-6
    torch.testing.assert_close(hess @ d.flatten(), fd.flatten(), rtol=1e-5, atol=1e-7)


# ---- 6. torch.func: per-sample gradients and jvp in the default memory mode -------------


@pytest.mark.parametrize("arch", ALL_ARCHS)
@pytest.mark.parametrize("interpolation", ["constant", "linear"])
def test_6_per_sample_gradients_equal_one_sample_backward(arch, interpolation):
    torch.manual_seed(0)
    net = PDECNN(arch, 3, 5, (4, 6), steps=2, interpolation=interpolation).double().eval()
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = {k: v.detach() for k, v in net.named_buffers()}
    x = torch.randn(3, 3, 8, 8, generator=_gen(1), dtype=F64)
    y = torch.tensor([0, 3, 1])

    def loss(p, xi, yi):
        out = functional_call(net, (p, buffers), (xi[None],))
        return nn.functional.cross_entropy(out, yi[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(len(x)):
        net.zero_grad()
        nn.functional.cross_entropy(net(x[i : i + 1]), y[i : i + 1]).backward()
        for name, p in net.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad, rtol=1e-9, atol=1e-12)


# PyTorch loads its forward-AD decompositions through torch.jit.script on first use, which
# warns that torch.jit.script is deprecated: PyTorch's own warning, not ours.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("arch", ["parabolic", "hamiltonian", "second_order"])
def test_6_jvp_equals_finite_difference(arch):
    torch.manual_seed(0)
    net = PDECNN(arch, 3, 5, (4, 6), steps=2).double().eval()
    x = torch.randn(2, 3, 8, 8, generator=_gen(1), dtype=F64)
    v = torch.randn(x.shape, generator=_gen(2), dtype=F64)
    out, tangent = jvp(net, (x,), (v,))
    torch.testing.assert_close(out, net(x))
    with torch.no_grad():
        fd = (net(x + 1e-6 * v) - net(x - 1e-6 * v)) / 2e-6
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-8)
    # forward-mode AD outside torch.func too
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        tangent2 = fwAD.unpack_dual(net(fwAD.make_dual(x, v))).tangent
    torch.testing.assert_close(tangent2, tangent)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_6_grad_and_jvp_through_an_adaptive_solve_and_vmap_is_a_named_error(method):
    """torch.func.grad and jvp, and dual tensors, through the adaptive driver: forward mode
    gives reverse mode's derivative (the controller's step sizes carry none; the first
    step's, chosen from f(y0), is differentiated in both, as torchdiffeq's reverse mode
    does), within the tolerance of the exact one. vmap, which cannot batch the controller's
    decisions, is a named error with the fix."""
    import torch.autograd.forward_ad as fwAD

    t = torch.tensor([0.0, 1.0], dtype=F64)
    y0 = torch.tensor([1.0, 2.0, -1.0], dtype=F64)
    solver = solvers.Solver(method, rtol=1e-8, atol=1e-10)

    def final(w, y):
        return solvers.solve(lambda s, z: -w * torch.cos(s) * z, y, t, solver).y_final

    w = torch.tensor(0.5, dtype=F64)
    reverse = torch.autograd.functional.jacobian(lambda w: final(w, y0), w)
    exact = -math.sin(1.0) * math.exp(-0.5 * math.sin(1.0)) * y0
    torch.testing.assert_close(reverse, exact, rtol=1e-4, atol=0)
    torch.testing.assert_close(grad(lambda w: final(w, y0).sum())(w), reverse.sum())
    one = torch.ones((), dtype=F64)
    _, tangent = jvp(lambda w: final(w, y0), (w,), (one,))
    torch.testing.assert_close(tangent, reverse, rtol=1e-10, atol=0)
    with fwAD.dual_level():
        dual = fwAD.unpack_dual(final(fwAD.make_dual(w, one), y0)).tangent
    torch.testing.assert_close(dual, reverse, rtol=1e-10, atol=0)

    # The drop-in odeint takes the driver under transforms (torchdiffeq's loop cannot run
    # there); what only torchdiffeq's loop does (per-component tolerances) is a named error.
    def drop_in(w):
        return solvers.odeint(lambda s, z: -w * torch.cos(s) * z, y0, t, method=method)[-1]

    wd = w.clone().requires_grad_()
    (loop_grad,) = torch.autograd.grad(drop_in(wd).sum(), wd)  # torchdiffeq's own loop
    torch.testing.assert_close(grad(lambda w: drop_in(w).sum())(w), loop_grad, rtol=1e-8, atol=0)
    per_component = solvers.Solver(method, rtol=torch.full((3,), 1e-8), atol=1e-10)

    def loop(w):
        return solvers.solve(lambda s, z: -w * z, y0, t, per_component).y_final.sum()

    with pytest.raises(RuntimeError, match=f"{method}: this solve runs torchdiffeq's own"):
        grad(loop)(w)
    with fwAD.dual_level(), pytest.raises(RuntimeError, match="torchdiffeq's own adaptive"):
        drop_in(fwAD.make_dual(w, one))
    batch = torch.stack([y0, 2 * y0])
    for fn in (lambda y: final(w, y), grad(lambda y: final(w, y).sum())):
        with pytest.raises(RuntimeError, match=f"{method}: an adaptive method cannot run under"):
            vmap(fn)(batch)
    # A fixed-step method, as the message advises, runs under vmap.
    fixed = solvers.Solver("rk4", step_size=0.05)
    out = vmap(lambda y: solvers.solve(lambda s, z: -w * z, y, t, fixed).y_final)(batch)
    torch.testing.assert_close(out, batch * math.exp(-0.5), rtol=1e-6, atol=0)


def test_6_finite_check_still_runs_outside_transforms():
    st = Stage(ParabolicRHS(4, steps=2))
    with pytest.raises(solvers.NonFiniteError):
        st(torch.full((1, 4, 4, 4), float("nan")))


@pytest.mark.parametrize("arch,method,memory", [m for m in MODES if m[2] != "autograd"])
def test_6_memory_modes_under_torch_func_are_a_named_error(arch, method, memory):
    net = _net(arch, method, memory).eval()
    params = {k: v.detach() for k, v in net.named_parameters()}
    x = torch.randn(2, 3, 8, 8, generator=_gen(1))

    def loss(p, xi):
        return functional_call(net, p, (xi[None],)).sum()

    with pytest.raises(RuntimeError, match=f"memory='{memory}'.*torch.func.*memory='autograd'"):
        vmap(grad(loss), in_dims=(None, 0))(params, x)


# ---- 7. parameters swapped between forward and backward --------------------------------


@pytest.mark.parametrize("arch,method,memory", MODES)
def test_7_functional_call_gradients_equal_the_module_with_those_weights(arch, method, memory):
    """MAML's adapted weights: the backward uses the forward's tensors in every memory
    mode; the gradient equals that of a network holding the adapted weights."""
    x = torch.randn(2, 3, 8, 8, generator=_gen(1), dtype=F64)
    net = _net(arch, method, memory).double()
    ref = _net(arch, method, memory).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(1.01)
    fast = {k: 1.01 * v for k, v in net.named_parameters()}
    functional_call(net, fast, (x,)).pow(2).sum().backward()
    ref(x).pow(2).sum().backward()
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad / 1.01, q.grad, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("arch,method,memory", [m for m in MODES if m[2] != "autograd"])
def test_7_refine_between_forward_and_backward_is_a_named_error(arch, method, memory):
    net = _net(arch, method, memory)
    out = net(torch.randn(2, 3, 8, 8, generator=_gen(1)))
    net.refine(2)
    with pytest.raises(RuntimeError, match=f"memory='{memory}'.*changed shape.*refine"):
        out.sum().backward()


# ---- 8. DistributedDataParallel kept across refine() ---------------------------------------


def test_8_ddp_across_refine_is_a_named_error(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        net = _net("parabolic", None, "autograd")
        x = torch.randn(2, 3, 8, 8, generator=_gen(1))
        DDP(net)(x).sum().backward()
        ddp = DDP(net)
        net.refine(2)
        with pytest.raises(RuntimeError, match="refine.*DistributedDataParallel.*wrap it again"):
            ddp(x)
        net.zero_grad()
        DDP(net)(x).sum().backward()  # wrapped again: every parameter has its gradient
        assert all(p.grad is not None for p in net.parameters())
    finally:
        dist.destroy_process_group()


# ---- 9. in-place change of a stage's output -------------------------------------------------


@pytest.mark.parametrize(
    "rhs_cls,method,memory,options",
    [
        (SecondOrderRHS, None, "reversible", {}),
        (SecondOrderRHS, None, "reversible", {"checkpoint_every": 1}),
        (HamiltonianRHS, None, "reversible", {}),
        (HamiltonianRHS, "yoshida4", "reversible", {"checkpoint_every": 2}),
        (ParabolicRHS, "rk4", "adjoint", {}),
        (HamiltonianRHS, "rk4", "adjoint", {}),
        (ParabolicRHS, "rk4", "autograd", {}),
    ],
)
def test_9_inplace_relu_on_the_output_behaves_as_out_of_place(rhs_cls, method, memory, options):
    """The issue's input: ``out.relu_()`` after a stage gives the gradient of
    ``out.relu()`` in every memory mode (and reversible memory autograd's)."""

    def grads(mem, inplace, **opts):
        torch.manual_seed(0)
        st = Stage(rhs_cls(4, steps=3, step_size=0.2), method, memory=mem, **opts).double()
        x = torch.randn(2, 4, 6, 6, generator=_gen(1), dtype=F64, requires_grad=True)
        out = st(x)
        out = out.relu_() if inplace else out.relu()  # what nn.ReLU(inplace=True) does next
        out.pow(2).sum().backward()
        return torch.cat([x.grad.flatten(), _grads(st)])

    ours = grads(memory, True, **options)
    torch.testing.assert_close(ours, grads(memory, False, **options), rtol=0, atol=0)
    if memory == "reversible":
        assert _rel(ours, grads("autograd", True)) < 1e-10


def test_9_reversible_solve_output_modified_in_place():
    """The same through solvers.solve with every output time saved."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 3).double()
    func = (lambda t, p: torch.tanh(lin(p)), lambda t, q: -q)
    grads = {}
    for memory in ("autograd", "reversible"):
        lin.zero_grad()
        q0 = torch.randn(2, 3, generator=_gen(1), dtype=F64)
        solver = solvers.Solver("verlet", step_size=0.1, memory=memory)
        params = list(lin.parameters()) if memory == "reversible" else None
        q, p = solvers.solve(func, (q0, q0.flip(0)), [0.0, 0.5, 1.0], solver, params=params).ys
        q.mul_(2)
        (q.sum() + p.pow(2).sum()).backward()
        grads[memory] = lin.weight.grad.clone()
    torch.testing.assert_close(grads["reversible"], grads["autograd"], rtol=1e-10, atol=1e-12)


# ---- 10. tracing an adaptive network ------------------------------------------------------


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "scipy_solver"])
def test_10_tracing_an_adaptive_method_is_a_named_error(method):
    net = PDECNN("parabolic", 3, 5, (4, 6), steps=2)
    net.set_solver(method)
    x = torch.randn(2, 3, 8, 8, generator=_gen(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's own deprecation/tracer warnings
        with pytest.raises(RuntimeError, match=f"{method} chooses its steps.*torch.jit.trace"):
            torch.jit.trace(net, x)
        with pytest.raises(RuntimeError, match=f"{method} chooses its steps"):
            torch.jit.trace(
                lambda y: solvers.odeint(
                    lambda t, y: -y, y, torch.tensor([0.0, 1.0]), method=method
                ),
                torch.ones(3),
            )


def test_10_tracing_a_fixed_step_network_still_works():
    torch.manual_seed(0)
    net = PDECNN("parabolic", 3, 5, (4, 6), steps=2).eval()
    for s in net.stages:
        s.check_finite = False  # no host reads to trace
    net.set_solver("rk4", step_size=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation warning
        traced = torch.jit.trace(net, torch.randn(2, 3, 8, 8, generator=_gen(1)))
    x = torch.randn(6, 3, 8, 8, generator=_gen(2))
    torch.testing.assert_close(traced(x), net(x))


# ---- 11. torchdiffeq's own suite: scipy_solver with t requiring grad; callbacks --------------


@pytest.mark.filterwarnings("ignore:The following arguments have no effect:UserWarning")
@pytest.mark.parametrize("scipy", ["RK45", "LSODA", "Radau"])
@pytest.mark.parametrize("reverse", [False, True])
def test_11a_scipy_with_t_requiring_grad_returns_torchdiffeqs_values(scipy, reverse):
    t = torch.linspace(1, 8, 10, dtype=F64, requires_grad=True)
    y0 = torch.tensor(3.0, dtype=F64, requires_grad=True)
    if reverse:
        t = t.flip(0)

    def f(t, y):
        return 0.2 + (y - (0.2 * t + 3.0)) ** 5

    opts = {"solver": scipy}
    ours = solvers.odeint(f, y0, t, method="scipy_solver", options=opts)
    theirs = torchdiffeq.odeint(f, y0, t, method="scipy_solver", options=opts)
    assert torch.equal(ours.detach(), theirs)
    with pytest.raises(ValueError, match="scipy_solver: gradients with respect to t"):
        torch.autograd.grad(ours.sum(), t)
    with pytest.raises(ValueError, match="scipy_solver: gradients with respect to .*y0"):
        torch.autograd.grad(ours.sum(), y0)


class _Decay(nn.Module):
    def forward(self, t, y):
        return -y


@pytest.mark.parametrize(
    "method", ["euler", "midpoint", "rk4", "implicit_adams", "dopri5", "scipy_solver"]
)
@pytest.mark.parametrize(
    "callback", ["callback_step", "callback_accept_step", "callback_reject_step"]
)
def test_11b_unsupported_callbacks_warn_as_torchdiffeq(method, callback):
    seen = {}
    for name, impl in (("torchdiffeq", torchdiffeq), ("ours", solvers)):
        f = _Decay()
        setattr(f, callback, lambda t0, y0, dt: None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            impl.odeint(f, torch.ones(2), torch.tensor([0.0, 1.0]), method=method)
        seen[name] = [str(w.message) for w in caught if "callback" in str(w.message)]
    assert seen["ours"] == seen["torchdiffeq"]
    if method in ("scipy_solver",) or callback != "callback_step" and method != "dopri5":
        assert seen["ours"]  # torchdiffeq's test_wrong_callback: a warning is due
