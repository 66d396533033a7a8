"""solvers.Solver is one immutable, validated value; Solution and Stats what a solve returns."""

import dataclasses

import pytest
import torch

import solvers
from solvers import Solver


def test_immutable_and_validated_once():
    s = Solver("rk4", step_size=0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.method = "euler"
    with pytest.raises(TypeError):
        s.options["perturb"] = True  # a read-only view: the value cannot change under a solve
    assert (
        s.kind == "fixed" and Solver().kind == "adaptive" and Solver("verlet").kind == "symplectic"
    )
    assert Solver().method == "dopri5"  # torchdiffeq's default


def test_replace_keeps_every_setting_not_named():
    s = Solver("verlet", step_size=0.5, memory="reversible", options={"checkpoint_every": 4})
    r = s.replace(step_size=0.25)
    assert (r.method, r.step_size, r.memory, dict(r.options)) == (
        "verlet",
        0.25,
        "reversible",
        {"checkpoint_every": 4},
    )
    assert s.step_size == 0.5  # the original is untouched
    assert s.replace(method="yoshida4").memory == "reversible"


def test_replace_with_a_contradiction_is_a_named_error():
    s = Solver("rk4", step_size=0.1)
    with pytest.raises(ValueError, match=r"keeps step_size=0.1.*pass step_size=None"):
        s.replace(method="dopri5")
    assert s.replace(method="dopri5", step_size=None) == Solver("dopri5")
    with pytest.raises(ValueError, match="'rk4' is not one; use a symplectic method"):
        Solver("verlet", step_size=0.1, memory="reversible").replace(method="rk4")
    with pytest.raises(TypeError, match="no settings"):
        s.replace(stepsize=0.2)


def test_equality_and_repr():
    assert Solver("rk4", step_size=0.1) == Solver("rk4", step_size=0.1)
    assert Solver("rk4", step_size=0.1) != Solver("rk4", step_size=0.2)
    assert Solver(atol=torch.tensor([1e-6, 1e-7])) == Solver(atol=torch.tensor([1e-6, 1e-7]))
    assert repr(Solver("rk4", step_size=0.1)) == "Solver('rk4', step_size=0.1)"
    assert "memory='adjoint'" in repr(Solver("rk4", memory="adjoint"))
    assert Solver("euler", step_size=1).step_size == 1.0


def test_stats_add_and_as_dict():
    a = solvers.Stats(nfe=4, steps=2)
    b = solvers.Stats(nfe=6, steps=3)
    assert (a + b).as_dict() == {"nfe": 10, "steps": 5}
    assert (a + solvers.Stats(nfe=1, steps=None)).steps is None


def test_solution_of_a_single_time_is_y0():
    y0 = torch.randn(3)
    sol = solvers.solve(lambda t, y: -y, y0, [0.5], Solver("rk4", step_size=0.1))
    assert torch.equal(sol.ys, y0[None]) and sol.y_final is y0 and sol.stats.nfe == 0


def _cases():
    pair = (lambda t, p: torch.tanh(p) * (1 + t), lambda t, q: -torch.sin(q))
    return [
        (Solver("rk4", step_size=0.1), lambda t, y: -y * torch.cos(t), "single"),
        (Solver("dopri5", rtol=1e-6, atol=1e-8), lambda t, y: -y * torch.cos(t), "single"),
        (Solver("verlet", step_size=0.1), pair, "split"),
        (Solver("yoshida4", step_size=0.1, memory="reversible"), pair, "split"),
    ]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", range(4))
def test_cuda_equals_cpu(case):
    """The same solve on the GPU gives the CPU's states and gradients (float64, to round-off)."""
    solver, func, kind = _cases()[case]
    torch.manual_seed(0)
    y_cpu = torch.randn(4, 8, dtype=torch.float64)
    out = {}
    for device in ("cpu", "cuda"):
        y = y_cpu.to(device).requires_grad_(True)
        y0 = (y, 0.5 * y) if kind == "split" else y
        sol = solvers.solve(func, y0, [0.0, 0.45, 1.0], solver)
        ys = sol.ys if kind == "single" else torch.stack(sol.ys)
        (g,) = torch.autograd.grad(ys.square().sum(), y)
        out[device] = (ys.detach().cpu(), g.cpu(), sol.stats)
        assert ys.device.type == device
    (a, ga, sa), (b, gb, sb) = out["cpu"], out["cuda"]
    assert sa == sb
    torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gb, ga, rtol=1e-10, atol=1e-12)
