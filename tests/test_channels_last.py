"""The channels_last recipe works for every network: same outputs and gradients as NCHW.

``net.to(memory_format=torch.channels_last)`` and channels_last inputs are the standard
recipe for faster convolutions on GPUs (tensor cores want NHWC). θ(t) stores its kernels
stacked in time, ``(n, c_out, c_in, 3, 3)``; the conversion must keep that public shape,
give each θ_j a channels_last layout, and change no number beyond round-off.
"""

import pytest
import torch
import torch.nn.functional as F

import neuralpde

CL = torch.channels_last
ARCHS = sorted(neuralpde.archs())


def _net(arch, dtype, **kwargs):
    # The same seed twice gives the same weights: the reference and the converted network.
    torch.manual_seed(0)
    return neuralpde.PDECNN(arch, 3, 5, widths=(4, 6), steps=2, **kwargs).to(dtype)


def _loss_and_grads(net, x, y):
    loss = F.cross_entropy(net(x), y)
    return net(x), torch.autograd.grad(loss, list(net.parameters()))


def _batch(dtype):
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 8, 8, dtype=dtype, generator=g), torch.tensor([0, 3, 4])


@pytest.mark.parametrize("interpolation", ["constant", "linear"])
@pytest.mark.parametrize("arch", ARCHS)
def test_channels_last_network_equals_the_contiguous_one(arch, interpolation):
    ref = _net(arch, torch.float64, interpolation=interpolation)
    net = _net(arch, torch.float64, interpolation=interpolation).to(memory_format=CL)
    # The public shape of every parameter is kept; the stacked kernels are now a stack of
    # channels_last kernels (each θ_j is what a channels_last convolution wants).
    for (name, p), (_, q) in zip(ref.named_parameters(), net.named_parameters()):
        assert p.shape == q.shape and torch.equal(p, q), name
        if q.dim() == 5:
            assert all(k.is_contiguous(memory_format=CL) for k in q), name
        if q.dim() == 4 and q.shape[-1] > 1:
            assert q.is_contiguous(memory_format=CL), name
    x, y = _batch(torch.float64)
    out_ref, grads_ref = _loss_and_grads(ref, x, y)
    for inputs in (x, x.to(memory_format=CL)):
        out, grads = _loss_and_grads(net, inputs, y)
        torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
        for g, g_ref in zip(grads, grads_ref):
            assert g.shape == g_ref.shape
            torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("arch", ARCHS)
def test_channels_last_float32_training_step(arch):
    """A float32 SGD step on the channels_last network lands on the same weights."""
    ref = _net(arch, torch.float32)
    net = _net(arch, torch.float32).to(memory_format=CL)
    x, y = _batch(torch.float32)
    for model, inputs in ((ref, x), (net, x.to(memory_format=CL))):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        F.cross_entropy(model(inputs), y).backward()
        opt.step()
    for (name, p), (_, q) in zip(ref.named_parameters(), net.named_parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    # Its state dict loads into a plain network and back (shapes are the public ones).
    fresh = _net(arch, torch.float32)
    fresh.load_state_dict(net.state_dict())
    net.load_state_dict(ref.state_dict())


@pytest.mark.parametrize(
    "arch,method,memory",
    [("hamiltonian", "verlet", "reversible"), ("second_order", "leapfrog", "reversible")],
)
def test_channels_last_reversible_memory(arch, method, memory):
    ref = _net(arch, torch.float64, method=method, memory=memory)
    net = _net(arch, torch.float64, method=method, memory=memory).to(memory_format=CL)
    x, y = _batch(torch.float64)
    out_ref, grads_ref = _loss_and_grads(ref, x, y)
    out, grads = _loss_and_grads(net, x.to(memory_format=CL), y)
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_time_weights_conversions_keep_values_and_identity():
    """dtype and no-op conversions behave as for any module; 5-d stacks are no exception."""
    w = neuralpde.TimeWeights({"k": torch.randn(3, 2, 2, 3, 3), "s": torch.randn(3, 2)}, T=3.0)
    k = w.k
    w.to(torch.float32)  # a no-op: the very same parameter object and storage
    assert w.k is k and w.k.data_ptr() == k.data_ptr()
    w.double()
    assert w.k.dtype == torch.float64 and w.k.shape == (3, 2, 2, 3, 3)
    before = w.k.detach().clone()
    w.to(memory_format=CL)
    assert w.k.shape == (3, 2, 2, 3, 3) and torch.equal(w.k, before)
    assert w.k[1].is_contiguous(memory_format=CL) and w.knots.dtype == torch.float64
    t = torch.tensor(1.5, dtype=torch.float64)
    torch.testing.assert_close(w(t)["k"], before[1], rtol=0, atol=0)
