"""The hand-written backward of F_sym: equal to autograd's, and lean in saved memory."""

import pytest
import torch

from neuralpde._layers import _SymmetricLayerFn, symmetric_layer, symmetric_layer_reference


def _inputs(normalize: bool, c: int = 3, dtype=torch.float64, seed: int = 0, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(batch, c, 5, 4, generator=g, dtype=dtype, requires_grad=True)
    w = (0.4 * torch.randn(c, c, 3, 3, generator=g, dtype=dtype)).requires_grad_()
    if not normalize:
        return y, w, None, None
    # Scale away from 1 and shift away from 0 so that their gradients are exercised.
    s = (1.0 + 0.3 * torch.randn(c, generator=g, dtype=dtype)).requires_grad_()
    b = (0.2 * torch.randn(c, generator=g, dtype=dtype)).requires_grad_()
    return y, w, s, b


@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck_hand_written_backward(normalize):
    args = _inputs(normalize, batch=1)
    tensors = [a for a in args if a is not None]

    def f(*ts):
        y, w, *rest = ts
        s, b = rest if rest else (None, None)
        return symmetric_layer(y, w, s, b, 1e-4)

    assert torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-7)
    # Double backward goes through the plain formula; fast mode keeps the check cheap.
    assert torch.autograd.gradgradcheck(f, tensors, eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("normalize", [True, False])
def test_backward_equals_autograd(normalize):
    y, w, s, b = _inputs(normalize, c=4, seed=1)
    tensors = [a for a in (y, w, s, b) if a is not None]
    g = torch.randn(2, 4, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = symmetric_layer(y, w, s, b)
    ref = symmetric_layer_reference(y, w, s, b)
    assert torch.equal(out, ref)  # the forward is the same arithmetic in the same order
    ours = torch.autograd.grad(out, tensors, g)
    theirs = torch.autograd.grad(ref, tensors, g)
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_gradient_of_input_only():
    # needs_input_grad skips the weight gradient; the input gradient must not change.
    y, w, s, b = _inputs(True, seed=3)
    w, s, b = w.detach(), s.detach(), b.detach()
    (dy,) = torch.autograd.grad(symmetric_layer(y, w, s, b).sum(), y)
    (dy_ref,) = torch.autograd.grad(symmetric_layer_reference(y, w, s, b).sum(), y)
    torch.testing.assert_close(dy, dy_ref, rtol=1e-12, atol=1e-12)


def _saved(fn, y, w, s, b) -> tuple[int, float]:
    """Distinct tensors autograd keeps for one call of ``fn``: how many have the input's
    size, and all their bytes in units of one input."""
    seen = {}

    def pack(t):
        seen[(t.data_ptr(), t.dtype, tuple(t.shape))] = t
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(y, w, s, b)
    big = sum(t.numel() == y.numel() for t in seen.values())
    nbytes = sum(t.numel() * t.element_size() for t in seen.values())
    return big, nbytes / (y.numel() * y.element_size())


def test_saves_at_most_two_activations():
    _, w, s, b = _inputs(True, c=16, dtype=torch.float32)
    y = torch.randn(4, 16, 16, 16, requires_grad=True)
    big, size = _saved(symmetric_layer, y, w, s, b)
    big_ref, size_ref = _saved(symmetric_layer_reference, y, w, s, b)
    # y and u; besides them only 1/norm (1/c of an activation) and the weights.
    assert big == 2 and size < 2 + 1 / 16 + 0.16
    assert big_ref >= 4 and size_ref > 3.9
    big, _ = _saved(symmetric_layer, y, w, None, None)
    assert big == 2


def test_scale_and_shift_together():
    y, w, s, _ = _inputs(True)
    with pytest.raises(ValueError, match="both scale and shift"):
        symmetric_layer(y, w, s, None)


def test_function_is_private_autograd_function():
    assert issubclass(_SymmetricLayerFn, torch.autograd.Function)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_negate_is_bitwise_minus_the_layer(normalize, dtype):
    """negate=True (the Hamiltonian's dp/dt) puts the sign on the kernel: forward and every
    gradient equal those of -symmetric_layer(...) bit for bit, with no pass for the sign."""
    y, w, s, b = (
        None if a is None else a.detach().to(dtype).requires_grad_()
        for a in _inputs(normalize, c=4, seed=5)
    )
    tensors = [a for a in (y, w, s, b) if a is not None]
    g = torch.randn(2, 4, 5, 4, dtype=dtype, generator=torch.Generator().manual_seed(6))
    out = symmetric_layer(y, w, s, b, negate=True)
    ref = -symmetric_layer(y, w, s, b)
    assert torch.equal(out, ref)
    assert type(out.grad_fn).__name__ != "NegBackward0"
    for a, e in zip(torch.autograd.grad(out, tensors, g), torch.autograd.grad(ref, tensors, g)):
        assert torch.equal(a, e)


def test_negate_gradcheck_and_double_backward():
    args = [a for a in _inputs(True, batch=1, seed=7) if a is not None]

    def f(y, w, s, b):
        return symmetric_layer(y, w, s, b, 1e-4, negate=True)

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(f, args, eps=1e-6, atol=1e-6, fast_mode=True)
