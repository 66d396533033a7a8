"""The symmetric layer F_sym = -Kᵀ σ(N(K Y)) and the non-symmetric ResNet control."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ε of the total-variation normalization: 1e-4 in the authors' Meganet code (1e-3 in the text).
TV_EPS = 1e-4


def tv_norm(x: Tensor, scale: Tensor, shift: Tensor, eps: float = TV_EPS) -> Tensor:
    """Total-variation normalization: each pixel's channel vector divided by its norm.

    Args:
        x: ``(batch, channels, height, width)``.
        scale, shift: ``(channels,)`` per-channel affine map applied after normalizing.
        eps: added under the square root so a zero vector stays finite.

    Returns:
        ``x / sqrt(sum_c x_c^2 + eps) * scale + shift``, same shape as ``x``.
    """
    x = x * torch.rsqrt(x.pow(2).sum(dim=1, keepdim=True) + eps)
    return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


def symmetric_layer(
    y: Tensor,
    weight: Tensor,
    scale: Tensor | None,
    shift: Tensor | None,
    eps: float = TV_EPS,
    negate: bool = False,
) -> Tensor:
    """``F_sym(θ, Y) = -Kᵀ relu(N(K Y))`` with K a 3×3 convolution and Kᵀ its transpose.

    Differentiated by a hand-written backward (:class:`_SymmetricLayerFn`) that keeps two
    activation-sized tensors per call (the input and the normalized pre-activation) where
    plain autograd keeps four; :func:`symmetric_layer_reference` is the plain-autograd
    version of the same formula.

    Args:
        y: ``(batch, c, height, width)``.
        weight: ``(c, c, 3, 3)`` the kernel of K; Kᵀ reuses it (weight tying makes the
            Jacobian ``-Kᵀ D K`` symmetric negative semi-definite).
        scale, shift: ``(c,)`` the normalization's affine parameters; ``None`` for both
            drops the normalization (``F = -Kᵀ relu(K Y)``, a negative gradient of the
            convex ``½‖relu(K Y)‖²``).
        eps: ε of the total-variation normalization.
        negate: return ``-F_sym = Kᵀ relu(N(K Y))`` (the Hamiltonian network's ``dp/dt``),
            bit for bit ``-symmetric_layer(...)`` but without a pass over the activation
            for the sign, forward or backward.

    Returns:
        ``(batch, c, height, width)``.
    """
    if (scale is None) != (shift is None):
        raise ValueError("symmetric_layer: give both scale and shift, or neither")
    if _transformed(y, weight, scale, shift):
        # torch.func transforms and forward-mode AD differentiate the plain formula (the
        # same numbers); the lean backward only saves memory in reverse mode.
        out = symmetric_layer_reference(y, weight, scale, shift, eps)
        return -out if negate else out
    return _SymmetricLayerFn.apply(y, weight, scale, shift, eps, negate)


def _transformed(*tensors: Tensor | None) -> bool:
    """Under a ``torch.func`` transform (vmap, grad, jvp) or with forward-mode tangents."""
    if torch.compiler.is_compiling():
        return False
    if torch._C._are_functorch_transforms_active():
        return True
    if torch.autograd.forward_ad._current_level < 0:  # no dual_level open: no tangents
        return False
    return any(
        t is not None and torch.autograd.forward_ad.unpack_dual(t).tangent is not None
        for t in tensors
    )


def symmetric_layer_reference(
    y: Tensor,
    weight: Tensor,
    scale: Tensor | None,
    shift: Tensor | None,
    eps: float = TV_EPS,
) -> Tensor:
    """:func:`symmetric_layer` differentiated by plain autograd (the reference for tests).

    Same arguments, shapes and result; autograd keeps about four activation-sized tensors.
    """
    z = F.conv2d(y, weight, padding=1)
    if scale is not None:
        z = tv_norm(z, scale, shift, eps)
    z = torch.relu(z)
    return -F.conv_transpose2d(z, weight, padding=1)


_STRIDE, _PAD, _DIL, _NO_OUT_PAD = [1, 1], [1, 1], [1, 1], [0, 0]


class _SymmetricLayerFn(torch.autograd.Function):
    """``-Kᵀ relu(s ⊙ u + b)``, ``u = K y / sqrt(Σ_c (K y)² + ε)``, with a lean backward.

    Saves ``y`` and ``u`` (``relu``'s input without the affine map when there is no
    normalization) plus the per-pixel ``1/norm`` (``1/c`` of an activation); everything
    else is recomputed in the backward. The backward is built from differentiable ops, so
    double backward works. Under ``torch.autocast`` the forward's operations ran in mixed
    dtypes; the backward (called outside the region, as PyTorch's AMP recipe does)
    recomputes the formula under the forward's autocast state and lets autograd apply
    autocast's casts.
    """

    @staticmethod
    def forward(ctx, y, weight, scale, shift, eps, negate=False):
        device_type = y.device.type
        ctx.autocast = None
        if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
            ctx.autocast = (device_type, torch.get_autocast_dtype(device_type))
        z = F.conv2d(y, weight, padding=1)
        if scale is None:
            u, rnorm = z, None
            r = torch.relu(u)
        else:
            rnorm = torch.rsqrt(z.pow(2).sum(dim=1, keepdim=True) + eps)
            u = z * rnorm
            r = _affine_relu_(u, scale, shift)
        ctx.save_for_backward(y, weight, scale, shift, u, rnorm)
        ctx.eps, ctx.negate = eps, negate
        # The sign goes on the (small) kernel, not on the activation; negation is exact,
        # so this is bitwise the reference's -Kᵀ r (or its negative).
        return F.conv_transpose2d(r, weight if negate else -weight, padding=1)

    @staticmethod
    def backward(ctx, g):
        y, weight, scale, shift, u, rnorm = ctx.saved_tensors
        if ctx.autocast is not None:
            with torch.autocast(ctx.autocast[0], dtype=ctx.autocast[1]):
                return _reference_vjp(ctx, g, y, weight, scale, shift)
        if torch.is_grad_enabled():
            # Double backward: u was saved detached from y, so rebuild the graph from the
            # inputs and let autograd differentiate the plain formula.
            return _reference_vjp(ctx, g, y, weight, scale, shift)
        conv_bwd = torch.ops.aten.convolution_backward
        r = torch.relu(u) if scale is None else _affine_relu_(u, scale, shift)
        # out = (∓K)ᵀ r: the gradients with respect to r and to the kernel ∓K.
        kernel_t = weight if ctx.negate else -weight
        dr, dw_t, _ = conv_bwd(
            g, r, kernel_t, None, _STRIDE, _PAD, _DIL, True, _NO_OUT_PAD, 1, [True, True, False]
        )
        # relu' from its output: r > 0 exactly where its input is.
        da = torch.ops.aten.threshold_backward(dr, r, 0)
        d_scale = d_shift = None
        if scale is None:
            dz = da
        else:
            if ctx.needs_input_grad[2]:
                d_scale = (da * u).sum(dim=(0, 2, 3))
            if ctx.needs_input_grad[3]:
                d_shift = da.sum(dim=(0, 2, 3))
            du = da * scale.view(1, -1, 1, 1)
            # u = z / |z|: the Jacobian projects out the radial part, (I - u uᵀ) / |z|.
            # In place on fresh buffers: the same operations, in the same order, as
            # rnorm * (du - u * (du * u).sum(1)), with two activation allocations, not five.
            t = du * u
            t = torch.mul(u, t.sum(dim=1, keepdim=True), out=t)
            dz = du.sub_(t).mul_(rnorm)
        dy, dw_k, _ = conv_bwd(
            dz,
            y,
            weight,
            None,
            _STRIDE,
            _PAD,
            _DIL,
            False,
            _NO_OUT_PAD,
            1,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False],
        )
        if ctx.needs_input_grad[1]:
            dw = dw_k + dw_t if ctx.negate else dw_k - dw_t
        else:
            dw = None
        return dy, dw, d_scale, d_shift, None, None


def _affine_relu_(u: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``relu(u * scale + shift)`` in one fresh buffer (the ops of :func:`tv_norm`)."""
    a = u * scale.view(1, -1, 1, 1)
    return a.add_(shift.view(1, -1, 1, 1)).relu_()


def _reference_vjp(ctx, g, y, weight, scale, shift):
    inputs = (y, weight, scale, shift)
    need = [t is not None and n for t, n in zip(inputs, ctx.needs_input_grad)]
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        out = symmetric_layer_reference(y, weight, scale, shift, ctx.eps)
        out = -out if ctx.negate else out
        wanted = [t for t, n in zip(inputs, need) if n]
        grads = torch.autograd.grad(out, wanted, g.to(out.dtype), create_graph=create_graph)
    grads = iter(d.to(t.dtype) for d, t in zip(grads, wanted))
    return (*(next(grads) if n else None for n in need), None, None)


def biased_symmetric_layer(y: Tensor, weight: Tensor, bias: Tensor, negate: bool = False) -> Tensor:
    """``F(θ, Y) = -Kᵀ relu(K Y + b)``: the symmetric layer with N an elementwise bias.

    The normalization of the stable configuration (``normalization="bias"``). Its gain is 1,
    so the Jacobian ``-Kᵀ D K`` (``0 <= D <= I``) has its eigenvalues in ``[-ρ(KᵀK), 0]`` and
    the rate a solver sees is ``ρ(KᵀK)`` exactly; ``F = -∇Φ`` with ``Φ = ½‖relu(KY + b)‖²``
    convex, so a forward-Euler step with ``h ρ <= 2`` is non-expansive (the Convex
    Potential Layer of Meunier et al., ICML 2022, is this step at ``h = 2/ρ``). A per-channel
    scale adds nothing: it can be absorbed into ``K``.

    Differentiated by plain autograd (so ``torch.func`` transforms and double backward
    need no rule of their own).

    Args:
        y: ``(batch, c, height, width)``.
        weight: ``(c_out, c, kh, kw)`` the kernel of K (odd sizes, zero-padded "same").
        bias: ``(c_out,)``.
        negate: return ``+Kᵀ relu(K Y + b)`` (the Hamiltonian network's ``dp/dt``).

    Returns:
        ``(batch, c, height, width)``.
    """
    pad = (weight.shape[-2] // 2, weight.shape[-1] // 2)
    r = torch.relu(F.conv2d(y, weight, bias, padding=pad))
    return F.conv_transpose2d(r, weight if negate else -weight, padding=pad)


def resnet_layer(
    y: Tensor, weight1: Tensor, weight2: Tensor, scale: Tensor, shift: Tensor, eps: float = TV_EPS
) -> Tensor:
    """The non-symmetric control ``F(θ, Y) = K2 relu(N(K1 Y))`` with independent kernels.

    Args:
        y: ``(batch, c, height, width)``.
        weight1, weight2: ``(c, c, 3, 3)``.
        scale, shift: ``(c,)``.

    Returns:
        ``(batch, c, height, width)``.
    """
    z = torch.relu(tv_norm(F.conv2d(y, weight1, padding=1), scale, shift, eps))
    return F.conv2d(z, weight2, padding=1)


def init_kernel(*shape: int, generator: torch.Generator | None = None) -> Tensor:
    """A 3×3 kernel ``(c_out, c_in, 3, 3)`` drawn as in the reference code.

    Truncated normal with sd ``sqrt(2 / (3 c_in))``, clipped at ±2 sd.
    """
    sd = math.sqrt(2.0 / (3.0 * shape[-3]))
    w = torch.empty(*shape)
    return nn.init.trunc_normal_(w, std=sd, a=-2 * sd, b=2 * sd, generator=generator)


def check_width(channels: int, who: str) -> None:
    """Raise a ValueError unless ``channels`` is a positive int."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"{who}: channels must be a positive int, got {channels!r}")


def check_image(y, channels: int, who: str, name: str = "input") -> None:
    """Raise unless ``y`` is a tensor ``(batch, channels, height, width)``.

    Plain Python on static shapes: free, and invisible to ``torch.compile``.
    """
    if not isinstance(y, Tensor):
        raise TypeError(f"{who}: {name} must be a tensor, got {type(y).__name__}")
    if y.dim() != 4 or y.shape[1] != channels:
        raise ValueError(
            f"{who}: {name} must have shape (batch, {channels}, height, width), "
            f"got {tuple(y.shape)}"
        )


class SymmetricLayer(nn.Module):
    """The symmetric layer ``F_sym(θ, Y) = -Kᵀ relu(N(K Y))`` with one fixed θ.

    Args:
        channels: ``c``, the width; the layer maps ``(batch, c, h, w)`` to the same shape.
        eps: ε of the total-variation normalization.

    Parameters: ``weight (c, c, 3, 3)``, ``scale (c,)`` (init 1), ``shift (c,)`` (init 0):
    ``9c² + 2c`` numbers.
    """

    def __init__(self, channels: int, eps: float = TV_EPS):
        super().__init__()
        check_width(channels, type(self).__name__)
        self.channels = channels
        self.eps = eps
        self.weight = nn.Parameter(init_kernel(channels, channels, 3, 3))
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, y: Tensor) -> Tensor:
        """``y: (batch, c, h, w)`` -> ``(batch, c, h, w)``."""
        check_image(y, self.channels, type(self).__name__)
        return symmetric_layer(y, self.weight, self.scale, self.shift, self.eps)


class ResNetLayer(nn.Module):
    """The non-symmetric control layer ``K2 relu(N(K1 Y))`` with one fixed θ.

    Args:
        channels: ``c``; maps ``(batch, c, h, w)`` to the same shape.
        eps: ε of the total-variation normalization.

    Parameters: ``weight1, weight2 (c, c, 3, 3)``, ``scale, shift (c,)``: ``18c² + 2c``.
    """

    def __init__(self, channels: int, eps: float = TV_EPS):
        super().__init__()
        check_width(channels, type(self).__name__)
        self.channels = channels
        self.eps = eps
        self.weight1 = nn.Parameter(init_kernel(channels, channels, 3, 3))
        self.weight2 = nn.Parameter(init_kernel(channels, channels, 3, 3))
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, y: Tensor) -> Tensor:
        """``y: (batch, c, h, w)`` -> ``(batch, c, h, w)``."""
        check_image(y, self.channels, type(self).__name__)
        return resnet_layer(y, self.weight1, self.weight2, self.scale, self.shift, self.eps)
