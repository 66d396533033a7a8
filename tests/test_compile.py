"""The whole PDECNN compiles with ``fullgraph=True`` (no graph break) for fixed-step methods.

Inductor's code generation is exercised by ``benchmarks/compile.py`` (run at tiny size by
tests/test_benchmarks.py), which also checks compiled against eager outputs.
"""

import pytest
import torch
import torch.nn.functional as F

import neuralpde
from solvers import Solver

# (arch, method): every fixed-step and symplectic method on a network it applies to.
CASES = [
    ("parabolic", "euler"),
    ("parabolic", "rk4"),
    ("hamiltonian", "symplectic_euler"),
    ("hamiltonian", "verlet"),
    ("hamiltonian", "yoshida4"),
    ("hamiltonian", "rk4"),
    ("second_order", "leapfrog"),
]


def _net(arch, method):
    torch.manual_seed(0)
    net = neuralpde.PDECNN(arch, 3, 5, widths=(4, 6), steps=2, method=method)
    return net.double()


def _loss_and_grads(net, x, y):
    loss = F.cross_entropy(net(x), y)
    return loss, torch.autograd.grad(loss, list(net.parameters()))


@pytest.mark.slow
@pytest.mark.parametrize("arch,method", CASES)
def test_fullgraph_compiles_and_matches_eager(arch, method):
    torch._dynamo.reset()
    net = _net(arch, method)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([1, 3])
    loss, grads = _loss_and_grads(net, x, y)
    # aot_eager traces forward and backward (the layer's hand-written backward included)
    # without inductor's code generation, which would take minutes on two cores.
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    for stage in net.stages:
        stage.last_stats = {}
    loss_c, grads_c = _loss_and_grads(compiled, x, y)
    torch.testing.assert_close(loss_c, loss, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads_c, grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # Solver statistics still reach the stages of a compiled network.
    stats = net.solver_stats()
    assert [s["method"] for s in stats] == [method] and stats[0]["steps"] == 2


def test_explain_reports_no_graph_break():
    torch._dynamo.reset()
    net = _net("hamiltonian", "verlet")
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    explanation = torch._dynamo.explain(net)(x)
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1


@pytest.mark.slow
def test_solver_change_recompiles():
    """A compiled network follows set_solver: new step sizes and methods, same as eager.

    From the second change of a number on, dynamo traces it as a symbolic float (automatic
    dynamic); checks on it must be comparisons, which it can trace (``math.isfinite`` on a
    symbolic float was an ``Unsupported`` error on the third step size).
    """
    torch._dynamo.reset()
    net = _net("hamiltonian", "symplectic_euler")
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    changes = [
        ({}, 2),
        ({"step_size": 0.5}, 4),
        ({"step_size": 0.25}, 8),
        ({"method": "verlet", "step_size": 1 / 3}, 6),
    ]
    for change, steps in changes:
        net.set_solver(**change)
        out = compiled(x)
        stats = net.solver_stats()[0]
        assert stats["method"] == net.stages[0].method and stats["steps"] == steps, change
        torch.testing.assert_close(out, net(x), rtol=1e-13, atol=1e-13, msg=str(change))


# Dynamo reads .grad of the cached kernels, the graph's inputs that are not leaves, and
# PyTorch warns from inside while it does.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_a_constrained_network_is_one_graph_after_its_kernels(monkeypatch):
    """Under stability.constrain each kernel's bound is computed eagerly, once per forward
    pass, before the network; the rest, a training mix included, is one graph (a graph
    break inside parametrize's cache ran the whole network eagerly, each solver step a
    frame of its own that recompiled until dynamo's limit)."""
    import solvers
    from neuralpde import stability

    torch._dynamo.reset()
    torch.manual_seed(0)
    net = neuralpde.PDECNN("parabolic", 3, 5, widths=(4, 6, 6), steps=2, method="midpoint")
    net = net.double()
    stability.constrain(net, (3, 8, 8), fraction=0.5)
    for stage in net.stages:
        stage.training_mix = [solvers.Solver("midpoint"), solvers.Solver("euler")]
    calls = []
    rho = stability.symbol_rho
    monkeypatch.setattr(stability, "symbol_rho", lambda *a, **k: calls.append(1) or rho(*a, **k))
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([1, 3, 0, 2])
    loss, grads = _loss_and_grads(net, x, y)
    assert len(calls) == 2  # one constrained kernel stack per stage, once
    explanation = torch._dynamo.explain(net)(x)
    # The one break: the eager frame that fills parametrize's cache, then the features
    # (every stage, both shares) as one graph, and the classifier.
    assert explanation.graph_break_count == 1, explanation.break_reasons
    compiled = torch.compile(net, backend="aot_eager")
    for _ in range(3):  # no recompilation from one step to the next
        calls.clear()
        loss_c, grads_c = _loss_and_grads(compiled, x, y)
        assert len(calls) == 2
    torch.testing.assert_close(loss_c, loss, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads_c, grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_a_bare_adaptive_solve_and_odeint_compile_and_match_eager():
    # torchdiffeq's setup checks the step and jump times for duplicates with Tensor.unique,
    # which Inductor cannot lower (aten._unique2): both calls failed before their first step.
    import torchdiffeq

    import solvers

    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    a = -torch.eye(4, dtype=torch.float64) + 0.3 * torch.randn(
        4, 4, generator=gen, dtype=torch.float64
    )

    def f(t, y):
        return torch.tanh(y @ a) * (1 + t)

    y0 = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    # θ(t)'s jumps are where the solve is taken over: with them, the steps stop on each.
    jumps = Solver("dopri5", rtol=1e-8, atol=1e-10, options={"jump_t": torch.tensor([0.3, 0.6])})
    for solver in (Solver("bosh3", rtol=1e-8, atol=1e-10), jumps):
        compiled = torch.compile(lambda y, s=solver: solvers.solve(f, y, t, s))(y0)
        eager = solvers.solve(f, y0, t, solver)
        assert compiled.stats.nfe == eager.stats.nfe
        torch.testing.assert_close(compiled.ys, eager.ys, rtol=0, atol=1e-12)
    # odeint keeps torchdiffeq's loop, run eagerly: torchdiffeq's numbers, bit for bit.
    compiled = torch.compile(lambda y: solvers.odeint(f, y, t, rtol=1e-8, atol=1e-10))(y0)
    assert torch.equal(compiled, torchdiffeq.odeint(f, y0, t, rtol=1e-8, atol=1e-10))
