"""Exact backpropagation through a symplectic integration in memory independent of depth.

The forward pass runs the stepper without recording a graph and keeps only the final
state. The backward pass walks the grid in reverse: every step of a separable symplectic
method is a composition of *kicks* ``x <- x + c f(τ, y)`` that change one half of the state
from the other half, and each kick is undone exactly (in exact arithmetic) by
``x <- x - c f(τ, y)`` with the same ``y``. Undoing a kick needs ``f(τ, y)``, which is also
the one evaluation whose vector-Jacobian product the kick's gradient needs, so each kick is
evaluated once with a graph, used to reconstruct the state, differentiated, and dropped.
The gradient is that of the discrete forward map (not an adjoint ODE), up to the round-off
of the reconstruction.

A stepper with no known kick decomposition is handled generically: reconstruct the step's
input with the inverse step (``step`` with ``-h`` from the end of the cell), then re-run
the step under ``enable_grad`` and backpropagate through it (one more evaluation per step).

Round-off of the reconstruction accumulates over long stages (float32); storing the state
every ``checkpoint_every`` steps and restarting the reverse walk from each stored state
bounds it, at the cost of ``steps / checkpoint_every`` stored states.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ._steppers import _W0, _W1, Leapfrog, Stepper, SymplecticEuler, Verlet, Yoshida4

# A kick: (which half moves: 0 = q via f_q(τ, p), 1 = p via f_p(τ, q), τ, coefficient c).
Kick = tuple[int, Tensor, float]


def _verlet_kicks(t: Tensor, h: float) -> list[Kick]:
    tau = t + 0.5 * h
    return [(1, tau, 0.5 * h), (0, tau, h), (1, tau, 0.5 * h)]


def _euler_kicks(q_first: bool):
    def kicks(t: Tensor, h: float) -> list[Kick]:
        tau = t + 0.5 * h
        # h < 0 applies the adjoint method (the other order), exactly as the stepper does.
        first = 0 if q_first == (h >= 0) else 1
        return [(first, tau, h), (1 - first, tau, h)]

    return kicks


def _yoshida_kicks(t: Tensor, h: float) -> list[Kick]:
    return (
        _verlet_kicks(t, _W1 * h)
        + _verlet_kicks(t + _W1 * h, _W0 * h)
        + _verlet_kicks(t + (_W1 + _W0) * h, _W1 * h)
    )


# Each decomposition repeats its stepper's arithmetic operation for operation, so the
# forward pass here gives the same numbers as ``stepper.step`` (a test pins it).
KICKS: dict[type, Callable[[Tensor, float], list[Kick]]] = {
    SymplecticEuler: _euler_kicks(q_first=True),
    Leapfrog: _euler_kicks(q_first=False),
    Verlet: _verlet_kicks,
    Yoshida4: _yoshida_kicks,
}


def gather_params(func: Sequence[Callable]) -> tuple[Tensor, ...]:
    """The trainable parameters behind ``func = (f_q, f_p)``.

    A function that is an ``nn.Module``, or a bound method of one (``rhs.f_q``), contributes
    the module's parameters that require grad; plain functions contribute none (pass
    ``params`` explicitly for tensors they close over).
    """
    owners: list[nn.Module] = []
    for f in func:
        m = f if isinstance(f, nn.Module) else getattr(f, "__self__", None)
        if isinstance(m, nn.Module) and all(m is not o for o in owners):
            owners.append(m)
    seen: set[int] = set()
    out = []
    for m in owners:
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return tuple(out)


class _Plan:
    """Everything the backward pass needs that is not a tensor to save."""

    def __init__(self, stepper, func, grid, times, checkpoint_every, final_only=False):
        self.stepper = stepper
        self.final_only = final_only
        self.func = func
        self.grid = grid
        self.times = times
        self.checkpoint_every = checkpoint_every
        self.kicks = KICKS.get(type(stepper))


def _forward_step(plan: _Plan, t: Tensor, h: float, q: Tensor, p: Tensor):
    if plan.kicks is None:
        return plan.stepper.step(plan.func, t, h, (q, p))
    f_q, f_p = plan.func
    for which, tau, c in plan.kicks(t, h):
        if which == 0:
            q = q + c * f_q(tau, p)
        else:
            p = p + c * f_p(tau, q)
    return q, p


def _accumulate(acc: list, grads: Sequence[Tensor | None]) -> None:
    for k, g in enumerate(grads):
        if g is not None:
            acc[k] = g if acc[k] is None else acc[k] + g


def _reverse_step_kicks(plan, t, h, q, p, gq, gp, params, acc):
    """Undo one step kick by kick, pulling the cotangents ``(gq, gp)`` back through it."""
    f_q, f_p = plan.func
    for which, tau, c in reversed(plan.kicks(t, h)):
        f, x, y, gx = (f_q, q, p, gq) if which == 0 else (f_p, p, q, gp)
        with torch.enable_grad():
            y_ = y.detach().requires_grad_(True)
            F = f(tau, y_)
        x = x - c * F.detach()
        if F is y_:
            # An identity kick (the drift q' = p of a second-order system): its
            # vector-Jacobian product is the cotangent itself, no graph to walk.
            grads = (c * gx,)
        elif F.requires_grad:
            grads = torch.autograd.grad(F, (y_, *params), c * gx, allow_unused=True)
        else:
            grads = (None,)
        if grads[0] is not None:
            if which == 0:
                gp = gp + grads[0]
            else:
                gq = gq + grads[0]
        _accumulate(acc, grads[1:])
        if which == 0:
            q = x
        else:
            p = x
    return q, p, gq, gp


def _reverse_step_generic(plan, t, h, q, p, gq, gp, params, acc):
    """Reconstruct the step's input with the inverse step, then backprop the step itself."""
    with torch.no_grad():
        q, p = plan.stepper.step(plan.func, t + h, -h, (q, p))
    with torch.enable_grad():
        q_ = q.detach().requires_grad_(True)
        p_ = p.detach().requires_grad_(True)
        out = plan.stepper.step(plan.func, t, h, (q_, p_))
        grads = torch.autograd.grad(out, (q_, p_, *params), (gq, gp), allow_unused=True)
    gq = grads[0] if grads[0] is not None else torch.zeros_like(gq)
    gp = grads[1] if grads[1] is not None else torch.zeros_like(gp)
    _accumulate(acc, grads[2:])
    return q, p, gq, gp


class _ReversibleSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan: _Plan, n_params: int, q0: Tensor, p0: Tensor, *params: Tensor):
        k = plan.checkpoint_every
        q, p = q0.detach(), p0.detach()
        qs, ps = [q], [p]
        stored: list[Tensor] = []
        marks: list[int] = []
        i = 0
        with torch.no_grad():
            for _, h, n in plan.grid:
                for _ in range(n):
                    q, p = _forward_step(plan, plan.times[i], h, q, p)
                    i += 1
                    if k is not None and i % k == 0:
                        stored += [q, p]
                        marks.append(i)
                if not plan.final_only:
                    qs.append(q)
                    ps.append(p)
            # The final state is returned as it is (it is also saved below): no copy.
            sol_q, sol_p = (q, p) if plan.final_only else (torch.stack(qs), torch.stack(ps))
        if k is None or not marks or marks[-1] != i:
            stored += [q, p]
            marks.append(i)
        # Only these states are kept for backward: the final one, plus the checkpoints.
        ctx.save_for_backward(*stored)
        ctx.plan, ctx.marks, ctx.steps = plan, marks, i
        ctx.params = params
        # Parameters are referenced, not saved: they live in the module anyway, and their
        # size grows with depth (one set per step), which would hide the saving. Their
        # version counters catch an in-place update between forward and backward instead.
        ctx.versions = [w._version for w in params]
        return sol_q, sol_p

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_sol_q: Tensor, g_sol_p: Tensor):
        plan, params = ctx.plan, ctx.params
        if any(w._version != v for w, v in zip(params, ctx.versions)):
            raise RuntimeError(
                "memory='reversible': a parameter was modified in place between the forward "
                "and the backward pass (e.g. an optimizer step); call backward first"
            )
        saved = ctx.saved_tensors
        checkpoints = {m: (saved[2 * j], saved[2 * j + 1]) for j, m in enumerate(ctx.marks)}
        reverse = _reverse_step_generic if plan.kicks is None else _reverse_step_kicks
        q, p = checkpoints[ctx.steps]
        if plan.final_only:
            gq, gp = g_sol_q, g_sol_p
        else:
            gq, gp = g_sol_q[-1], g_sol_p[-1]
        acc: list[Tensor | None] = [None] * len(params)
        i = ctx.steps
        for k in reversed(range(len(plan.grid))):
            _, h, n = plan.grid[k]
            for _ in range(n):
                i -= 1
                q, p, gq, gp = reverse(plan, plan.times[i], h, q, p, gq, gp, params, acc)
                if i in checkpoints:
                    q, p = checkpoints[i]
            if not plan.final_only:  # gradients reaching the earlier output times
                gq = gq + g_sol_q[k]
                gp = gp + g_sol_p[k]
        return (None, None, gq, gp, *acc)


def odeint_reversible(
    stepper: Stepper,
    func: tuple[Callable, Callable],
    y0: tuple[Tensor, Tensor],
    grid: list[tuple[float, float, int]],
    times: Tensor,
    params: Sequence[Tensor] | None = None,
    checkpoint_every: int | None = None,
    final_only: bool = False,
) -> tuple[Tensor, Tensor]:
    """Integrate ``y0 = (q0, p0)`` over ``grid`` storing no per-step activations.

    Args:
        stepper: a registered symplectic stepper (its ``step`` with ``-h`` inverts it).
        func: ``(f_q, f_p)``.
        y0: ``(q0, p0)``, each ``(*shape)``.
        grid: per output interval ``(start, signed step, number of steps)``.
        times: ``(total steps,)`` start time of every step.
        params: tensors to differentiate besides ``y0``; ``None`` gathers the parameters of
            the module(s) ``func`` belongs to (:func:`gather_params`).
        checkpoint_every: also store the state every this many steps (``None``: only the
            final state).
        final_only: return the final ``(q, p)`` alone, each ``(*shape)``.

    Returns:
        ``(q, p)`` stacked at the output times, each ``(n_times, *shape)``.
    """
    params = gather_params(func) if params is None else tuple(params)
    for w in params:
        if not isinstance(w, Tensor):
            raise TypeError(f"params must be tensors, got {type(w).__name__}")
    plan = _Plan(stepper, tuple(func), grid, times, checkpoint_every, final_only)
    return _ReversibleSolve.apply(plan, len(params), y0[0], y0[1], *params)
