"""PDECNN: the paper's schemes unrolled by hand, shapes, dtypes, errors, gradients."""

import copy

import pytest
import torch
import torch.nn.functional as F

import neuralpde
from neuralpde._layers import resnet_layer, symmetric_layer

pytestmark = pytest.mark.usefixtures("float64")


def small(arch, **kw):
    torch.manual_seed(0)
    net = neuralpde.PDECNN(arch, 3, 5, (4, 6, 8), **kw)
    with torch.no_grad():
        for stage in net.stages:
            for p in stage.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def unrolled_stage(stage, x):
    """The paper's update formulas (forward Euler; Ruthotto & Haber 2020, eqs. (14) and
    (17) for the hyperbolic networks), written out with θ_j taken by index j."""
    rhs, h = stage.rhs, stage.rhs.step_size
    if isinstance(rhs, neuralpde.ParabolicRHS):
        th = rhs.theta
        for j in range(rhs.steps):
            x = x + h * symmetric_layer(x, th.weight[j], th.scale[j], th.shift[j])
        return x
    if isinstance(rhs, neuralpde.ResNetRHS):
        th = rhs.theta
        for j in range(rhs.steps):
            x = x + h * resnet_layer(x, th.weight1[j], th.weight2[j], th.scale[j], th.shift[j])
        return x
    if isinstance(rhs, neuralpde.HamiltonianRHS):
        Y, Z = x.chunk(2, dim=1)
        a, b = rhs.theta_q, rhs.theta_p
        for j in range(rhs.steps):
            Y = Y + h * symmetric_layer(Z, a.weight[j], a.scale[j], a.shift[j])
            Z = Z - h * symmetric_layer(Y, b.weight[j], b.scale[j], b.shift[j])
        return torch.cat([Y, Z], dim=1)
    th = rhs.theta
    prev, cur = x, x  # Y_{-1} = Y_0
    for j in range(rhs.steps):
        f = symmetric_layer(cur, th.weight[j], th.scale[j], th.shift[j])
        prev, cur = cur, 2 * cur - prev + h**2 * f
    return cur


@pytest.mark.parametrize("arch", ["parabolic", "hamiltonian", "second_order", "resnet"])
@pytest.mark.parametrize("step_size", [1.0, 0.5])
def test_paper_scheme_equals_unrolled_formulas(arch, step_size):
    net = small(arch, steps=3, step_size=step_size)
    x = torch.randn(2, 3, 8, 8)
    # Through the whole network, with the same weights.
    y = net.opening(x)
    for k, (stage, conn) in enumerate(zip(net.stages, net.connectors)):
        out = stage(y)
        assert torch.allclose(out, unrolled_stage(stage, y), atol=1e-12), f"stage {k}"
        y = conn(out)
        y = y.mean(dim=(2, 3)) if k == len(net.stages) - 1 else F.avg_pool2d(y, 2)
    assert torch.allclose(net(x), net.classifier(y), atol=1e-12)


@pytest.mark.parametrize("arch", ["hamiltonian", "second_order", "parabolic"])
def test_each_step_uses_its_own_weights(arch):
    # Pin "which weights a step uses": perturbing θ_j changes the output only through step
    # j. If a stepper evaluated at t_j + h it would use θ_{j+1}: then θ_0 would have no
    # effect and θ_{n-1} would act twice. Every θ_j must matter.
    net = small(arch, steps=3)
    stage = net.stages[0]
    x = torch.randn(2, 4, 8, 8)
    base = stage(x)
    for theta in stage.rhs.thetas():
        for j in range(3):
            with torch.no_grad():
                theta.weight[j] += 0.5
            assert not torch.allclose(stage(x), base), f"θ_{j} unused"
            with torch.no_grad():
                theta.weight[j] -= 0.5
    # And the last step's weights enter exactly once: the unrolled formula agrees.
    assert torch.allclose(base, unrolled_stage(stage, x), atol=1e-12)


@pytest.mark.parametrize("arch", ["parabolic", "hamiltonian", "second_order", "resnet"])
def test_float32_float64_and_device_follow_module(arch):
    net = small(arch).float()
    out = net(torch.randn(2, 3, 8, 8, dtype=torch.float32))
    assert out.dtype == torch.float32 and out.shape == (2, 5)
    net = net.double()
    assert net(torch.randn(2, 3, 8, 8)).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "arch, memory",
    [("parabolic", "autograd"), ("resnet", "autograd"), ("second_order", "autograd"),
     ("hamiltonian", "autograd"), ("hamiltonian", "reversible")],
)  # fmt: skip
def test_cuda_equals_cpu(arch, memory):
    """Logits and every parameter's gradient on the GPU equal the CPU's (float64)."""
    net = small(arch, memory=memory)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 4])

    def run(device):
        m = copy.deepcopy(net).to(device)
        out = m(x.to(device))
        F.cross_entropy(out, y.to(device)).backward()
        return out.cpu(), {n: p.grad.cpu() for n, p in m.named_parameters()}

    out_cpu, g_cpu = run("cpu")
    out_gpu, g_gpu = run("cuda")
    assert torch.allclose(out_gpu, out_cpu, rtol=1e-10, atol=1e-12)
    for name, g in g_cpu.items():
        assert torch.allclose(g_gpu[name], g, rtol=1e-8, atol=1e-11), name
    assert any(g.abs().max() > 0 for n, g in g_cpu.items() if n.startswith("stages."))


def test_wrong_input_rank_and_channels():
    net = small("parabolic")
    with pytest.raises(ValueError, match=r"expected input \(batch, 3, height, width\)"):
        net(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match=r"got \(2, 1, 8, 8\)"):
        net(torch.randn(2, 1, 8, 8))


def test_solver_that_cannot_integrate_stage():
    net = small("parabolic")
    with pytest.raises(ValueError, match="stage 0: 'verlet' needs a split"):
        net.set_solver("verlet")
    with pytest.raises(ValueError, match="unknown method 'rk45'"):
        net.set_solver("rk45")
    with pytest.raises(ValueError, match="step_size=0.1 is for fixed-step"):
        net.set_solver("dopri5", step_size=0.1)
    with pytest.raises(ValueError, match="stage must be"):
        net.set_solver("rk4", stage=7)


def test_set_solver_one_stage_and_stats():
    net = small("second_order")
    x = torch.randn(2, 3, 8, 8)
    net(x)
    assert [s["method"] for s in net.solver_stats()] == ["leapfrog", "leapfrog"]
    net.set_solver("rk4", step_size=0.5, stage=1)
    net(x)
    stats = net.solver_stats()
    assert stats[0]["method"] == "leapfrog" and stats[0]["steps"] == 3
    assert stats[1] == {"method": "rk4", "nfe": 24, "steps": 6}
    net.reset_solver()  # back to the paper's schemes
    net(x)
    assert [s["method"] for s in net.solver_stats()] == ["leapfrog", "leapfrog"]


def test_gradcheck_tiny_network():
    torch.manual_seed(0)
    net = neuralpde.PDECNN("hamiltonian", 1, 2, (2, 2), steps=2).eval()
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    # Gradient w.r.t. the input, through opening, stage, connector and classifier.
    assert torch.autograd.gradcheck(net, (x,))
    # And w.r.t. the stage weights of every step (and the classifier), as functions.
    names = [n for n, _ in net.named_parameters() if n.startswith(("stages.", "classifier."))]
    params = dict(net.named_parameters())

    def g(*ps):
        return torch.func.functional_call(net, {**params, **dict(zip(names, ps))}, (x.detach(),))

    inputs = tuple(params[n].detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(g, inputs)


@pytest.mark.parametrize("arch", ["parabolic", "hamiltonian", "second_order", "resnet"])
@pytest.mark.parametrize("method", [None, "rk4"])
def test_stage_graph_holds_no_copy_of_its_states(arch, method, graph_ops):
    """A stage asks odeint for its end state only: no stack of [y0, yT] and no select of
    yT in the graph (each would copy states forward and scatter gradients backward)."""
    stage = small(arch).stages[0]
    if method is not None:
        stage.set_solver(method)
    x = torch.randn(2, stage.rhs.channels, 4, 4, requires_grad=True)
    names = graph_ops(stage(x))
    assert "AddBackward0" in names  # the walk reached the steps
    assert not {"StackBackward0", "SelectBackward0", "UnbindBackward0"} & names
