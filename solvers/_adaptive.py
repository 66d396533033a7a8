"""A driver for torchdiffeq's embedded Runge–Kutta methods that keeps the stages apart.

torchdiffeq stores the stage derivatives of a step as the last axis of one tensor,
``k (*y.shape, stages)``, and forms every stage state as ``y0 + sum(k[..., :i+1] * (b h),
-1)``: a product as large as all the stages so far, then a reduction over an axis of 2 to
7 strided entries. For a stage of a convolutional network (a state of millions of
numbers and a handful of channels) that arithmetic costs more than the right-hand side
itself: on a 2-core CPU a dopri5 evaluation of a 16-channel 32x32 stage on 500 images took
2.8x a forward-Euler one (``benchmarks/adaptive_driver.py``).

This driver takes the same steps with each stage derivative its own tensor and every
combination ``y0 + sum_j (b_ij h) k_j`` formed term by term in place, skipping the zeros of
the tableau. Everything else is torchdiffeq's: the solver object it builds holds the
tableau, the tolerances and the controller's settings; its ``_before_integrate`` chooses
the first step (Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.4); its error ratio
(``_compute_error_ratio``), step-size update (``_optimal_step_size``) and dense output
(``_interp_fit``, ``_interp_evaluate``) are called as they are, with one change: bosh3's
value at the middle of a step, from which the dense output is fitted, is the cubic Hermite
one (``_BOSH3_MID``; torchdiffeq's is first order, and its outputs between steps were off
by O(h^2)). The loop is the standard
one of an embedded pair with step rejection (ibid., §II.4), stepping onto ``step_t`` and
``jump_t`` points and re-evaluating the field after a jump of ``θ(t)``, as torchdiffeq's.

Every stage state equals torchdiffeq's up to the order in which its sum is rounded. The
error estimate is a small difference of large sums, so the same rounding is larger
relative to it: where an error ratio lies that close to 1 the controller can accept a step
torchdiffeq rejects (or the other way), and from there the two solutions differ by about
the tolerance, equally close to the exact one (``tests/test_adaptive_driver.py``).
Elsewhere the numbers of steps, evaluations and rejections are torchdiffeq's (the step
sizes carry the same rounding). A right-hand side that writes every result into one
buffer it reuses is detected by the evaluation wrapper's output guard, and the solve runs
again with every evaluation copied. Interpolation coefficients are fitted only for a step an output time falls in, not after every
accepted step.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any

import torch
from torch import Tensor
from torch.autograd import forward_ad

from ._errors import NonFiniteError
from ._fixed_grid import _Eval
from ._state import in_transform

try:
    from torchdiffeq._impl.interp import _interp_evaluate, _interp_fit
    from torchdiffeq._impl.misc import (
        Perturb,
        _compute_error_ratio,
        _flat_to_shape,
        _mixed_norm,
        _optimal_step_size,
        _rms_norm,
    )
    from torchdiffeq._impl.odeint import SOLVERS
    from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver
except ImportError:  # a torchdiffeq whose internals moved: odeint uses its own loop
    SOLVERS = None

# The solver options this driver reads; with any other, torchdiffeq's loop runs.
_OPTIONS = {
    "first_step",
    "jump_t",
    "step_t",
    "max_num_steps",
    "min_step",
    "max_step",
    "safety",
    "ifactor",
    "dfactor",
    "norm",
}
_CALLBACKS = ("callback_step", "callback_accept_step", "callback_reject_step")
# Set while solvers.odeint (torchdiffeq's drop-in, its numbers bit for bit) solves: its
# adaptive methods then keep torchdiffeq's own loop and arithmetic.
_TORCHDIFFEQ_ARITHMETIC = contextvars.ContextVar("torchdiffeq_arithmetic", default=False)


@contextlib.contextmanager
def torchdiffeq_arithmetic():
    """Within it, adaptive solves take torchdiffeq's loop (its numbers bit for bit)."""
    token = _TORCHDIFFEQ_ARITHMETIC.set(True)
    try:
        yield
    finally:
        _TORCHDIFFEQ_ARITHMETIC.reset(token)


def supports(func, y0, t: Tensor, method: str, rtol, atol, options: dict, adjoint: bool) -> bool:
    """Whether :func:`integrate_adaptive` takes this call (otherwise torchdiffeq's loop).

    Not within :func:`torchdiffeq_arithmetic` (except under a ``torch.func`` transform,
    where torchdiffeq's loop cannot run: its autograd Function has no ``setup_context``),
    nor for the adjoint (torchdiffeq's backward solve), a ``t`` with a gradient,
    per-component tolerances, complex states, options outside ``_OPTIONS``, or a ``func``
    with step callbacks (torchdiffeq calls them with its own wrapped arguments).
    """
    if SOLVERS is None or adjoint or method not in SOLVERS:
        return False
    if _TORCHDIFFEQ_ARITHMETIC.get() and not in_transform():
        return False
    if not issubclass(SOLVERS[method], RKAdaptiveStepsizeODESolver):
        return False
    parts = y0 if isinstance(y0, tuple) else (y0,)
    scalar = all(not isinstance(x, Tensor) or x.numel() == 1 for x in (rtol, atol))
    return (
        set(options) <= _OPTIONS
        and scalar
        and not t.requires_grad
        and all(p.is_floating_point() for p in parts)
        and not any(hasattr(func, name) for name in _CALLBACKS)
    )


# Eager under torch.compile: torchdiffeq's setup checks step_t and jump_t for duplicates
# with Tensor.unique, whose output shape depends on the data; Inductor cannot lower it
# (aten._unique2), so a compiled solve failed there before its first step.
@torch.compiler.disable
def _before_integrate(solver, t: Tensor) -> None:
    """f(t0) and the first step, as torchdiffeq chooses them."""
    solver._before_integrate(t)


def _combine(y0: Tensor | None, ks: list[Tensor], row: list[float], h) -> Tensor:
    """``y0 + sum_j (row[j] h) ks[j]`` (``y0`` absent: the sum alone), term by term; a zero
    of the tableau adds nothing and is skipped. ``h`` is a float, or a tensor when the
    step carries a gradient (torchdiffeq's first step is chosen from ``f(y0)``, and its
    size is differentiated as torchdiffeq differentiates it). In place from the second term
    on, so that ``y0`` and every ``k`` stay as autograd saved them."""
    out = y0
    for k, b in zip(ks, row):
        if b == 0.0:
            continue
        if isinstance(h, Tensor):
            term = k * (b * h)
            out = term if out is None else out + term
        elif out is None:
            out = k * (b * h)
        elif out is y0:
            out = torch.add(y0, k, alpha=b * h)
        else:
            out.add_(k, alpha=b * h)
    if out is None:
        return torch.zeros_like(ks[0])
    return out.clone() if out is y0 else out


def _scalar(dt: Tensor):
    """The step as a float, or the tensor itself while it carries a derivative: a gradient
    (reverse mode) or a tangent (forward mode: a dual tensor, or inside ``torch.func``)."""
    if dt.requires_grad or in_transform() or forward_ad.unpack_dual(dt).tangent is not None:
        return dt
    return float(dt)


# bosh3's value at the middle of a step, for the dense output: the cubic Hermite
# interpolant of (y0, f0, y1, f1) there, y0 + (y1 - y0)/2 + h (f0 - f1)/8, written in the
# stage derivatives (y1 - y0 = h (2/9 k1 + 1/3 k2 + 4/9 k3), f1 = k4). With it the quartic
# through y0, y_mid, y1, f0, f1 is that cubic, third order like the pair (Bogacki &
# Shampine, "A 3(2) pair of Runge-Kutta formulas", Appl. Math. Lett. 2, 1989). torchdiffeq's
# midpoint, y0 + h/2 k2, is first order: between steps its output was off by O(h^2), e.g.
# 21 units at t = 2 for a falling body, whose few large steps are each exact.
_BOSH3_MID = [17 / 72, 1 / 6, 2 / 9, -1 / 8]


class _Step:
    """One accepted step: what its dense output is fitted from, when an output needs it."""

    def __init__(self, t0, t1, y0, y1, ks, mid):
        self.t0, self.t1, self.y0, self.y1, self.ks, self.mid = t0, t1, y0, y1, ks, mid
        self._coeff = None

    def at(self, t: Tensor) -> Tensor:
        if self.ks is None:  # the start: no step taken yet
            return self.y0
        if self._coeff is None:
            dt = (self.t1 - self.t0).to(self.y0.dtype)
            y_mid = _combine(self.y0, self.ks, self.mid, _scalar(dt))
            self._coeff = _interp_fit(self.y0, self.y1, y_mid, self.ks[0], self.ks[-1], dt)
        return _interp_evaluate(self._coeff, self.t0, self.t1, t)


def integrate_adaptive(
    func,
    y0: Tensor | tuple[Tensor, ...],
    t: Tensor,
    rtol,
    atol,
    method: str,
    options: dict[str, Any],
    final_only: bool = False,
) -> tuple[Tensor | tuple[Tensor, ...], int, int, int]:
    """``torchdiffeq.odeint(func, y0, t, rtol, atol, method, options)`` with the stages
    kept apart (see the module's docstring). ``supports`` must have said yes.

    Returns:
        the solution ``(len(t), *y0.shape)`` (``y0.shape`` with ``final_only``; a tuple for
        a tuple state), the number of evaluations, of accepted and of rejected steps.

    Raises:
        AssertionError: torchdiffeq's own, with its words: ``max_num_steps exceeded``,
            ``underflow in dt`` (the caller names them).
        NonFiniteError: the state became NaN/Inf (with the time of the step that starts
            from it).
        SharedOutput: ``func`` reuses one output buffer (the caller solves again with every
            evaluation copied).
    """
    state0 = y0
    shapes = None
    options = dict(options)
    if isinstance(y0, tuple):
        shapes = [y.shape for y in y0]
        y0 = torch.cat([y.reshape(-1) for y in y0])
    user_norm = options.pop("norm", None)
    if shapes is None:
        norm = user_norm or _rms_norm
    else:
        tuple_norm = user_norm or _mixed_norm

        def norm(flat: Tensor):
            return tuple_norm(_flat_to_shape(flat, (), shapes))

    reverse = len(t) > 1 and bool(t[0] > t[1])
    if reverse:  # torchdiffeq integrates -f in negated time
        t = -t
        for name in ("step_t", "jump_t"):
            if options.get(name) is not None:
                options[name] = -torch.as_tensor(options[name])
    f = _Eval(func, shapes, reverse, method, state0)
    solver = SOLVERS[method](func=f, y0=y0, rtol=rtol, atol=atol, norm=norm, **options)
    t = t.to(solver.dtype)
    _before_integrate(solver, t)
    tab = solver.tableau
    alpha = [float(a) for a in tab.alpha]
    beta = [[float(b) for b in row] for row in tab.beta]
    c_sol = [float(c) for c in tab.c_sol]
    c_err = [float(c) for c in tab.c_error]
    # odeint (under transforms, where it takes this driver) keeps torchdiffeq's midpoint.
    hermite = method == "bosh3" and not _TORCHDIFFEQ_ARITHMETIC.get()
    mid = _BOSH3_MID if hermite else [float(m) for m in solver.mid]
    # Dormand–Prince and the like: the last stage is evaluated at y1 itself (FSAL).
    fsal = c_sol[-1] == 0.0 and c_sol[:-1] == beta[-1]
    step_t, jump_t = solver.step_t, solver.jump_t
    i_step, i_jump = solver.next_step_index, solver.next_jump_index
    step_list, jump_list = step_t.tolist(), jump_t.tolist()
    state = solver.rk_state
    y, fy, t_now, dt = state.y1, state.f1, state.t1, state.dt
    last = _Step(t_now, t_now, y, y, None, mid)
    steps = rejected = 0
    out = [y0]
    for j in range(1, len(t)):
        next_t = t[j]
        attempts = 0
        while next_t > last.t1:
            assert attempts < solver.max_num_steps, (
                f"max_num_steps exceeded ({attempts}>={solver.max_num_steps})"
            )
            attempts += 1
            if not torch.isfinite(dt):
                dt = solver.min_step
            dt = dt.clamp(solver.min_step, solver.max_step)
            t1 = t_now + dt
            assert t1 > t_now, f"underflow in dt {dt.item()}"
            if not torch.isfinite(y).all():
                where = -float(t_now) if reverse else float(t_now)
                raise NonFiniteError(
                    f"{method}: the state became NaN/Inf at t={where:g} (the error norm "
                    "let a non-finite stage through); the right-hand side is not finite "
                    "there",
                    t=where,
                )
            # Step onto the next prescribed point, and onto a jump of θ(t) before that.
            on_step = on_jump = False
            if step_list and t_now < step_t[i_step] < t1:
                t1, on_step = step_t[i_step], True
            if jump_list and t_now < jump_t[i_jump] < t1:
                t1, on_jump, on_step = jump_t[i_jump], True, False
            if on_step or on_jump:
                # Only a shortened step is measured from its end: (t + dt) - t rounds to
                # a little more than a dt at max_step, which would then be rejected forever.
                dt = t1 - t_now
            # As torchdiffeq's step: stage times and coefficients in the state's dtype.
            t0_y, dt_y = t_now.to(y.dtype), dt.to(y.dtype)
            h = _scalar(dt_y)
            ks = [fy]
            y_i = y
            for a, a_y, row in zip(alpha, tab.alpha, beta):
                if a == 1.0:  # just before the end of the step, where θ(t) may jump
                    t_i, perturb = t1, Perturb.PREV
                else:
                    t_i, perturb = t0_y + a_y * dt_y, Perturb.NONE
                y_i = _combine(y, ks, row, h)
                ks.append(f(t_i, y_i, perturb=perturb))
            y1 = y_i if fsal else _combine(y, ks, c_sol, h)
            error = _combine(None, ks, c_err, h)
            # The controller's quantities carry no derivative: torchdiffeq computes the next
            # step size under torch.no_grad, which forward-mode AD (jvp, dual tensors) does
            # not obey; without the detach the tangents of the step positions entered the
            # field's time argument (dopri5's jvp was 20 % off, bosh3's diverged with the
            # tolerance). The first step's size stays differentiated, as in reverse mode.
            ratio = _compute_error_ratio(error, solver.rtol, solver.atol, y, y1, norm).detach()
            accept = bool(ratio <= 1)
            if dt > solver.max_step:
                accept = False
            if dt <= solver.min_step:
                accept = True
            if accept:
                steps += 1
                last = _Step(t_now, t1, y, y1, ks, mid)
                if on_step and i_step != len(step_list) - 1:
                    i_step += 1
                if on_jump:
                    if i_jump != len(jump_list) - 1:
                        i_jump += 1
                    # Past a jump of the field: its value on the far side.
                    fy = f(t1, y1, perturb=Perturb.NEXT)
                else:
                    fy = ks[-1]
                t_now, y = t1, y1
            else:
                rejected += 1
            dt = (
                _optimal_step_size(
                    dt, ratio, solver.safety, solver.ifactor, solver.dfactor, solver.order
                )
                .clamp(solver.min_step, solver.max_step)
                .detach()
            )
        if final_only and j < len(t) - 1:
            continue
        out.append(last.at(next_t))
    if final_only:
        y_end = out[-1].to(y0.dtype)
        return (
            (y_end if shapes is None else _flat_to_shape(y_end, (), shapes)),
            f.nfe,
            steps,
            rejected,
        )
    sol = torch.stack([o.to(y0.dtype) for o in out])
    if shapes is not None:
        sol = _flat_to_shape(sol, (len(t),), shapes)
    return sol, f.nfe, steps, rejected
