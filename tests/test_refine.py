"""Multilevel refinement in time: TimeWeights/Stage/PDECNN.refine prolongate θ(t)."""

import pytest
import torch

import neuralpde
from neuralpde import PDECNN, TimeWeights

pytestmark = pytest.mark.usefixtures("float64")

ARCHS = ("parabolic", "hamiltonian", "second_order", "resnet")


def _smooth(n, shape=(2, 3)):
    """θ_j = a + b·t_j + c·t_j², sampled at the cell midpoints (constant) of [0, 3]."""
    t = ((torch.arange(n) + 0.5) * 3 / n).view(-1, *([1] * len(shape)))
    a, b, c = (torch.randn(shape) for _ in range(3))
    return a + b * t + c * t**2


@pytest.mark.parametrize("interpolation", ["constant", "linear"])
def test_constant_in_time_theta_is_unchanged_bit_for_bit(interpolation):
    value = torch.randn(4, 5)
    w = TimeWeights({"k": value.expand(3, 4, 5).clone()}, 3.0, interpolation)
    ts = torch.linspace(0, 3, 37)
    before = [w(t)["k"].clone() for t in ts]
    w.refine(4)
    assert w.k.shape[0] == (12 if interpolation == "constant" else 9)
    assert all(torch.equal(w(t)["k"], b) for t, b in zip(ts, before))
    assert all(torch.equal(w.k[j], value) for j in range(w.n))


def test_linear_theta_keeps_the_same_function():
    w = TimeWeights({"k": torch.randn(4, 3)}, 2.0, "linear")
    ts = torch.linspace(-0.5, 2.5, 301)
    before = torch.stack([w(t)["k"] for t in ts])
    w.refine(3)
    assert w.n == 10
    after = torch.stack([w(t)["k"] for t in ts])
    torch.testing.assert_close(after, before, rtol=0, atol=1e-14)


def test_constant_prolongation_is_second_order_at_cell_midpoints():
    # Cell values sampled from a smooth θ(t): the prolongated values at the fine midpoints
    # differ from θ there by O(H²) (linear interpolation), so halving H divides by ~4.
    errs = []
    for n in (4, 8, 16):
        t = (torch.arange(n) + 0.5) * 1.0 / n
        w = TimeWeights({"k": torch.sin(3 * t).view(n, 1)}, 1.0)
        w.refine(2)
        tf = (torch.arange(2 * n) + 0.5) / (2 * n)
        inner = (tf > t[0]) & (tf < t[-1])  # beyond the end midpoints values are held
        errs.append((w.k[:, 0] - torch.sin(3 * tf))[inner].abs().max().item())
    assert errs[0] / errs[1] > 3.5 and errs[1] / errs[2] > 3.5


def test_refine_keeps_grid_buffers_and_jump_times_consistent():
    w = TimeWeights({"k": torch.randn(3, 2)}, 3.0)
    w.refine(2)
    assert w.n == 6 and w.jump_times() == [0.5, 1.0, 1.5, 2.0, 2.5]
    assert w.knots.dtype == torch.float64 and w.cells.shape == (1, 6)
    # θ_j on its own cell [t_j, t_{j+1}), right-open, after refinement too.
    for j in range(6):
        assert torch.equal(w(torch.tensor(0.5 * j))["k"], w.k[j])
        assert torch.equal(w(torch.tensor(0.5 * j + 0.49))["k"], w.k[j])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_refine_rejects_a_factor_that_is_not_a_positive_int(bad):
    w = TimeWeights({"k": torch.randn(3, 2)}, 3.0)
    with pytest.raises(ValueError, match="factor must be a positive int"):
        w.refine(bad)
    net = PDECNN("parabolic", 1, 3, (4, 4))
    with pytest.raises(ValueError, match="factor must be a positive int"):
        net.refine(bad)


def _varying(arch, eps, interpolation="constant"):
    """A network whose θ(t) is its initial θ_0 plus ``eps`` times a quadratic in time."""
    torch.manual_seed(0)
    net = PDECNN(arch, 2, 5, (4, 8), steps=4, interpolation=interpolation).eval()
    with torch.no_grad():
        for w in (m for m in net.modules() if isinstance(m, TimeWeights)):
            for name in w.names:
                p = getattr(w, name)
                p.copy_(p[:1] + eps * _smooth(w.n, p.shape[1:]))
    return net


@pytest.mark.parametrize("arch", ARCHS)
def test_network_refine_changes_the_output_by_the_interpolation_error(arch):
    # Piecewise-constant θ: prolongation moves θ(t) by O(|θ_{j+1} − θ_j|); the output
    # moves by at most that much, to first order in the time variation ε (and not at all
    # when θ is constant, tested above).
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    errs = []
    epss = (1e-2, 1e-3, 1e-4)
    for eps in epss:
        net = _varying(arch, eps)
        net.set_solver("rk4", step_size=0.125)
        before = net(x)
        net.refine(2)
        assert all(
            s.rhs.steps == 8 and s.rhs.step_size == 0.5 and s.rhs.T == 4.0 for s in net.stages
        )
        assert all(s.step_size == 0.0625 for s in net.stages)  # fixed steps shrink with cells
        net.set_solver(step_size=0.125)
        errs.append((net(x) - before).abs().max().item())
    assert all(0 < e <= eps for e, eps in zip(errs, epss))
    assert errs[1] / errs[0] < 0.35 and errs[2] / errs[1] < 0.35  # vanishes with ε


@pytest.mark.parametrize("arch", ARCHS)
def test_network_with_linear_theta_computes_the_same_function_after_refine(arch):
    # θ(t) is the same function to round-off (1e-16); the normalized layers amplify
    # round-off (gain up to |scale|/sqrt(ε) near zero), so compare at a stable step.
    x = torch.randn(3, 2, 8, 8)
    net = _varying(arch, 0.1, "linear")
    net.set_solver("euler", step_size=0.125)
    before = net(x)
    net.refine(3)
    net.set_solver(step_size=0.125)
    torch.testing.assert_close(net(x), before, rtol=0, atol=1e-9)


@pytest.mark.parametrize("arch", ARCHS)
def test_refined_network_has_a_gradient_for_every_parameter(arch):
    torch.manual_seed(1)
    net = PDECNN(arch, 1, 3, (4, 4))
    net.refine(2)
    names = {n for n, _ in net.named_parameters()}
    assert any("stages" in n for n in names)
    net(torch.randn(2, 1, 4, 4)).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing
    counts = [p.shape[0] for n, p in net.named_parameters() if "stages.0" in n]
    assert set(counts) == {6}


def test_refine_follows_the_training_step_and_keeps_other_settings():
    net = PDECNN("hamiltonian", 1, 3, (4, 4, 4), memory="reversible")
    net.stages[0].set_solver("verlet", step_size=0.5)
    net.refine(2)
    s0, s1 = net.stages
    assert (s0.method, s0.step_size, s0.memory) == ("verlet", 0.25, "reversible")
    # Stage 1 kept the training step (None): it follows the cells, 1 -> 1/2.
    assert (s1.method, s1.step_size, s1.memory) == ("symplectic_euler", 0.5, "reversible")
    net.stages[1].set_solver("dopri5", step_size=None, memory="autograd")
    net.refine(2)
    assert net.stages[1].step_size is None and net.stages[1].rhs.steps == 12


def test_refined_state_dict_loads_into_a_network_refined_the_same_way():
    torch.manual_seed(2)
    a = PDECNN("second_order", 1, 3, (4, 4)).refine(2)
    b = PDECNN("second_order", 1, 3, (4, 4))
    with pytest.raises(RuntimeError, match="size mismatch"):
        b.load_state_dict(a.state_dict())
    b.refine(2).load_state_dict(a.state_dict())
    x = torch.randn(2, 1, 4, 4)
    assert torch.equal(a.eval()(x), b.eval()(x))


def test_refine_is_public_on_every_level():
    for obj in (TimeWeights, neuralpde.Stage, PDECNN, neuralpde.RHS):
        assert callable(obj.refine)
        assert obj.refine.__doc__
