"""Output times and the one time grid of every fixed-step method.

The grid is torchdiffeq's (``FixedGridODESolver``): points ``t[0] + k h`` over the whole
span, the last one replaced by ``t[-1]``; output times between two points are linearly
interpolated from the two states. Decreasing times walk the increasing grid of their span
backwards (see :func:`grid`), so that forward and backward integrations over the same
times use the same cells. Without a step size the grid is the output times
themselves (torchdiffeq's behaviour). The Runge–Kutta methods, the symplectic steppers and
the reversible backward all step on this grid, so one ``step_size`` means one set of
evaluation times. One rule is added to torchdiffeq's: the grid always has at least one
step, so no output time is ever dropped (torchdiffeq leaves a row of ``t = [0, 1e-9]`` with
``step_size=0.1`` unfilled).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import torch
from torch import Tensor


def output_times(t: Tensor | Sequence[float], like: Tensor) -> tuple[list[float], Tensor]:
    """Check ``t`` and return it as Python floats and as a tensor.

    Args:
        t: ``(n_times,)`` tensor, or a list/tuple of Python numbers (made into a tensor of
            ``like``'s dtype and device, with no host–device sync).
        like: a state tensor, for the dtype and device of a tensor made from a list.

    Returns:
        ``(ts, t)``: the times as floats (one sync for a device tensor), and as a tensor.

    Raises:
        TypeError / ValueError: not 1-d, not floating point, empty, not finite, or not
            strictly monotone.
    """
    if isinstance(t, (list, tuple)):
        if len(t) < 1 or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in t
        ):
            raise ValueError(f"t must hold at least one time as Python numbers, got {t!r}")
        ts = [float(x) for x in t]
        dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
        t = torch.tensor(ts, dtype=dtype, device=like.device)
    else:
        if not isinstance(t, Tensor):
            raise TypeError(f"t must be a 1-d tensor of times, got {type(t).__name__}")
        if t.dim() != 1 or t.numel() < 1:
            raise ValueError(f"t must be a 1-d tensor with at least one time, got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"t must be a floating-point tensor, got dtype {t.dtype}")
        # One host-device sync, before the first step: the grid is fixed from here on.
        ts = t.detach().to("cpu", torch.float64).tolist()
    if not all(math.isfinite(x) for x in ts):
        raise ValueError(f"t must be finite, got {ts}")
    diffs = [b - a for a, b in zip(ts[:-1], ts[1:])]
    if not (all(d > 0 for d in diffs) or all(d < 0 for d in diffs)):
        raise ValueError(
            f"t must be strictly increasing or strictly decreasing, got {ts}; "
            "sort the output times or split the integration in two calls"
        )
    return ts, t


def _rounder(dtype: torch.dtype):
    """Python functions rounding a float as torch's kernels do for a ``dtype`` tensor op:
    the result is computed in float64 (float64) or float32 (narrower types) and rounded
    once to ``dtype``; the second function rounds a Python scalar operand."""

    def f32(x: float) -> float:
        return struct.unpack("f", struct.pack("f", x))[0]

    if dtype == torch.float64:
        return (lambda x: x), (lambda x: x)
    if dtype == torch.float32:
        return f32, f32
    if dtype == torch.float16:
        return (lambda x: struct.unpack("e", struct.pack("e", f32(x)))[0]), f32
    if dtype == torch.bfloat16:

        def bf16(x: float) -> float:
            bits = struct.unpack("I", struct.pack("f", f32(x)))[0]
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            return struct.unpack("f", struct.pack("I", bits))[0]

        return bf16, f32
    raise TypeError(f"unsupported time dtype {dtype}")


def grid(ts: list[float], step_size: float | None, dtype: torch.dtype) -> list[float]:
    """The step grid for output times ``ts`` (monotone) and ``step_size``, as floats.

    The points of a span ``[lo, hi]`` are torchdiffeq's for increasing times: ``lo + k h``
    rounded as its ``dtype`` tensor arithmetic rounds them, ``ceil((hi - lo) / h + 1)`` of
    them but at least 2, the last replaced by ``hi``. Decreasing ``ts`` walk the same
    points backwards, so a symplectic method retraces its forward cells exactly and
    returns to its start to round-off (torchdiffeq builds a decreasing grid from ``t[0]``
    downwards: the same points to round-off when ``h`` divides the span, the short step
    at the other end when it does not). ``step_size=None``: ``ts`` itself.
    """
    if step_size is None or len(ts) < 2:
        return list(ts)
    if ts[-1] > ts[0]:
        return _increasing(ts[0], ts[-1], step_size, dtype)
    return _increasing(ts[-1], ts[0], step_size, dtype)[::-1]


def _increasing(start: float, end: float, step_size: float, dtype: torch.dtype) -> list[float]:
    rnd, op_scalar = _rounder(dtype)
    h = op_scalar(step_size)  # a Python scalar enters a kernel in its compute type
    n = max(2, math.ceil(rnd(rnd(rnd(end - start) / h) + 1.0)))
    points = [rnd(rnd(rnd(float(k)) * h) + start) for k in range(n)]
    points[-1] = end
    return points


def grid_constructor(step_size: float):
    """:func:`grid` as torchdiffeq's ``grid_constructor`` option: built from the tensor
    ``t`` itself, so the gradient with respect to ``t[0]`` and ``t[-1]`` flows."""

    def construct(func, y0, t: Tensor) -> Tensor:
        # torchdiffeq passes the times as given (and negates what this returns itself
        # when they decrease). The number of points reads the same floats grid() reads.
        t0, t1 = (float(x) for x in t[[0, -1]].detach().to("cpu", torch.float64))
        n = len(grid([t0, t1], step_size, t.dtype))
        k = torch.arange(0, n, dtype=t.dtype, device=t.device)
        if t1 > t0:
            return torch.cat([(t[0] + k * step_size)[:-1], t[-1:]])
        return torch.cat([t[:1], (t[-1] + k * step_size).flip(0)[1:]])

    return construct


def placements(points: list[float], ts: list[float]) -> list[list[tuple[int, float]]]:
    """For each step ``i`` (from ``points[i]`` to ``points[i + 1]``), the outputs it gives:
    ``(j, s)`` with the state at ``ts[j]`` equal to ``(1 - s) y_i + s y_{i+1}``.

    ``s`` is 0 or 1 when ``ts[j]`` is a grid point, which it is for the first and the last
    output and for every output without a step size. Output 0 is ``y0`` and not listed.
    """
    sign = -1.0 if len(ts) > 1 and ts[-1] < ts[0] else 1.0
    g = [sign * x for x in points]
    want = [sign * x for x in ts]
    out: list[list[tuple[int, float]]] = [[] for _ in range(len(g) - 1)]
    j = 1
    for i in range(len(g) - 1):
        while j < len(want) and g[i + 1] >= want[j]:
            if want[j] == g[i]:
                s = 0.0
            elif want[j] == g[i + 1]:
                s = 1.0
            else:
                s = (want[j] - g[i]) / (g[i + 1] - g[i])
            out[i].append((j, s))
            j += 1
    return out
