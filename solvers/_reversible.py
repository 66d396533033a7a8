"""Exact backpropagation through a symplectic integration in memory independent of depth.

The forward pass runs the stepper without recording a graph and keeps only the final
state. The backward pass walks the grid in reverse. A :class:`SplittingStepper` is a
sequence of substeps ``x <- x + a h f(τ, y)`` that each change one half of the state from
the other half (its splitting tableau), and each is undone exactly (in exact arithmetic)
by ``x <- x - a h f(τ, y)`` with the same ``y`` and ``τ``. Undoing a substep needs
``f(τ, y)``, which is also the one evaluation whose vector-Jacobian product the substep's
gradient needs, so each is evaluated once with a graph, used to reconstruct the state,
differentiated, and dropped. The gradient is that of the discrete forward map (not an
adjoint ODE), up to the round-off of the reconstruction. All of it is generated from the
tableau: a user's registered splitting method gets it with no further code.

A plain :class:`Stepper` (no tableau) is handled generically: reconstruct the step's input
with the inverse step (``step`` with ``-h`` from the end of the cell), then re-run the step
under ``enable_grad`` and backpropagate through it (one more evaluation per step).

Round-off of the reconstruction accumulates over long stages (float32); storing the state
every ``checkpoint_every`` steps and restarting the reverse walk from each stored state
bounds it, at the cost of ``steps / checkpoint_every`` stored states.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ._pin import Pinned, owners
from ._split import Plan, run
from ._state import autocast_state, uncovered_tensors
from ._steppers import SplittingStepper


def gather_params(func: Sequence[Callable]) -> tuple[Tensor, ...]:
    """The trainable parameters behind ``func = (f_q, f_p)``.

    A function that is an ``nn.Module``, or a bound method of one (``rhs.f_q``), contributes
    the module's parameters that require grad; plain functions contribute none (pass
    ``params`` explicitly for tensors they close over).
    """
    seen: set[int] = set()
    out = []
    for m in owners(func):
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return tuple(out)


def _modules(func: Sequence[Callable]) -> list[nn.Module]:
    """The modules behind ``func``: a module, a bound method's module, modules in a closure."""
    out: list[nn.Module] = []
    for f in func:
        cands = [f, getattr(f, "__self__", None)]
        for cell in getattr(f, "__closure__", None) or ():
            try:
                cands.append(cell.cell_contents)
            except ValueError:  # an empty cell
                pass
        for m in cands:
            if isinstance(m, nn.Module):
                for sub in m.modules():
                    if all(sub is not o for o in out):
                        out.append(sub)
    return out


# Modules that draw random numbers in training mode: the backward pass would recompute them
# with other draws than the forward one.
_RANDOM = (nn.modules.dropout._DropoutNd, nn.RReLU)


def _check_modules(modules: list[nn.Module]) -> list[nn.modules.batchnorm._BatchNorm]:
    """Refuse random modules in training mode; return the batch norms whose running
    statistics the backward's recomputation must not update a second time."""
    random = [type(m).__name__ for m in modules if m.training and isinstance(m, _RANDOM)]
    if random:
        raise ValueError(
            f"memory='reversible' recomputes f_q and f_p in the backward pass, and "
            f"{', '.join(sorted(set(random)))} in training mode would draw other random "
            "numbers there than in the forward pass (wrong gradients): use memory='autograd', "
            "put these modules in eval mode, or move them out of the right-hand side"
        )
    return [
        m
        for m in modules
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]


def _accumulate(acc: list, grads: Sequence[Tensor | None]) -> None:
    for k, g in enumerate(grads):
        if g is not None:
            acc[k] = g if acc[k] is None else acc[k] + g


def _reverse_splitting(stepper, func, t, h, q, p, gq, gp, params, acc):
    """Undo one step substep by substep, pulling the cotangents ``(gq, gp)`` back."""
    f_q, f_p = func
    for half, tau, coef in reversed(stepper.substeps(t, h)):
        f, x, y, gx = (f_q, q, p, gq) if half == 0 else (f_p, p, q, gp)
        with torch.enable_grad():
            y_ = y.detach().requires_grad_(True)
            F = f(tau, y_)
        x = x - coef * F.detach()
        if F is y_:
            # An identity substep (the drift q' = p of a second-order system): its
            # vector-Jacobian product is the cotangent itself, no graph to walk.
            grads = (coef * gx,)
        elif F.requires_grad:
            # Under autocast F may be narrower than the state: the cotangent takes its dtype.
            cot = (coef * gx).to(F.dtype)
            grads = torch.autograd.grad(F, (y_, *params), cot, allow_unused=True)
        else:
            grads = (None,)
        if grads[0] is not None:
            if half == 0:
                gp = gp + grads[0]
            else:
                gq = gq + grads[0]
        _accumulate(acc, grads[1:])
        if half == 0:
            q = x
        else:
            p = x
    return q, p, gq, gp


def _reverse_generic(stepper, func, t, h, q, p, gq, gp, params, acc):
    """Reconstruct the step's input with the inverse step, then backprop the step itself."""
    with torch.no_grad():
        q, p = stepper.step(func, t + h, -h, (q, p))
    with torch.enable_grad():
        q_ = q.detach().requires_grad_(True)
        p_ = p.detach().requires_grad_(True)
        out = stepper.step(func, t, h, (q_, p_))
        grads = torch.autograd.grad(out, (q_, p_, *params), (gq, gp), allow_unused=True)
    gq = grads[0] if grads[0] is not None else torch.zeros_like(gq)
    gp = grads[1] if grads[1] is not None else torch.zeros_like(gp)
    _accumulate(acc, grads[2:])
    return q, p, gq, gp


def _weights(plan: Plan) -> list[list[tuple[int, float]]]:
    """Per grid point m: the outputs ``j`` holding a share ``w`` of the state ``y_m``."""
    out: list[list[tuple[int, float]]] = [[] for _ in range(len(plan.steps) + 1)]
    out[0].append((0, 1.0))
    for i, place in enumerate(plan.place):
        for j, s in place:
            if s != 1.0:
                out[i].append((j, 1.0 - s))
            if s != 0.0:
                out[i + 1].append((j, s))
    return out


_SECOND_ORDER = (
    "memory='reversible' differentiates once: second derivatives (backward or grad with "
    "create_graph=True, as gradient penalties, Hessians and Hessian-vector products need, "
    "torch.autograd.functional.hessian included) would need the stage's input, which this "
    "mode does not keep. Use memory='autograd' for them"
)


class _ReversibleSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan, func, every, final_only, norms, pin, q0, p0, *params):
        stepper = plan.stepper
        stored: list[Tensor] = []
        marks: list[int] = []

        def step(t, h, q, p):
            return stepper.step(func, t, h, (q, p))

        def after_step(i, q, p):
            if every is not None and (i + 1) % every == 0:
                stored.extend((q, p))
                marks.append(i + 1)

        with torch.no_grad():
            sol_q, sol_p = run(step, plan, (q0.detach(), p0.detach()), final_only, after_step)
        n = len(plan.steps)
        if marks and marks[-1] == n:
            del stored[-2:], marks[-1]
        # The final state is saved as a copy: the output is the caller's to modify in place
        # (nn.ReLU(inplace=True) next), which would otherwise change the saved state.
        last = (sol_q, sol_p) if final_only else (sol_q[-1], sol_p[-1])
        if n == 0:
            last = (q0.detach(), p0.detach())
        stored.extend(x.clone() for x in last)
        marks.append(n)
        # Only these states are kept for backward: the final one, plus the checkpoints.
        ctx.save_for_backward(*stored)
        ctx.plan, ctx.func, ctx.marks, ctx.final_only = plan, func, marks, final_only
        ctx.params = params
        ctx.norms = norms
        ctx.pin = pin
        # The backward is called outside an autocast region (PyTorch's AMP recipe) and
        # recomputes the forward's evaluations: it runs them under the forward's state.
        ctx.autocast = autocast_state(q0.device)
        # Parameters are referenced, not saved: they live in the module anyway, and their
        # size grows with depth (one set per step), which would hide the saving. Their
        # version counters catch an in-place update between forward and backward instead.
        ctx.versions = [w._version for w in params]
        return sol_q, sol_p

    @staticmethod
    def backward(ctx, g_sol_q: Tensor, g_sol_p: Tensor):
        if torch.is_grad_enabled():
            raise RuntimeError(_SECOND_ORDER)
        autocast = (
            torch.autocast(ctx.autocast[0], dtype=ctx.autocast[1])
            if ctx.autocast is not None
            else contextlib.nullcontext()
        )
        with autocast, ctx.pin.restored():
            return _ReversibleSolve._backward(ctx, g_sol_q, g_sol_p)

    @staticmethod
    def _backward(ctx, g_sol_q: Tensor, g_sol_p: Tensor):
        plan, func, params = ctx.plan, ctx.func, ctx.params
        if any(w._version != v for w, v in zip(params, ctx.versions)):
            raise RuntimeError(
                "memory='reversible': a parameter was modified in place between the forward "
                "and the backward pass (e.g. an optimizer step); call backward first"
            )
        stepper = plan.stepper
        saved = ctx.saved_tensors
        checkpoints = {m: (saved[2 * j], saved[2 * j + 1]) for j, m in enumerate(ctx.marks)}
        reverse = _reverse_splitting if isinstance(stepper, SplittingStepper) else _reverse_generic
        n = len(plan.steps)
        q, p = checkpoints[n]
        if ctx.final_only:
            weights = None
            gq, gp = g_sol_q, g_sol_p
        else:
            weights = _weights(plan)
            gq = sum(w * g_sol_q[j] for j, w in weights[n])
            gp = sum(w * g_sol_p[j] for j, w in weights[n])
            gq = gq if isinstance(gq, Tensor) else torch.zeros_like(q)
            gp = gp if isinstance(gp, Tensor) else torch.zeros_like(p)
        acc: list[Tensor | None] = [None] * len(params)
        # A batch norm in training mode normalizes by the batch statistics of its input,
        # which the recomputation reproduces; its running statistics must count the
        # forward's batches once, so they are put back as they were after the walk.
        running = [
            (b, b.clone())
            for m in ctx.norms
            for b in (m.running_mean, m.running_var, m.num_batches_tracked)
            if b is not None
        ]
        for i in reversed(range(n)):
            t, h = plan.steps[i]
            q, p, gq, gp = reverse(stepper, func, t, h, q, p, gq, gp, params, acc)
            if i in checkpoints:
                q, p = checkpoints[i]
            if weights is not None:  # gradients reaching the earlier output times
                for j, w in weights[i]:
                    gq = gq + (g_sol_q[j] if w == 1.0 else w * g_sol_q[j])
                    gp = gp + (g_sol_p[j] if w == 1.0 else w * g_sol_p[j])
        with torch.no_grad():
            for b, value in running:
                b.copy_(value)
        return (None, None, None, None, None, None, gq, gp, *acc)


def integrate(func, y0, plan: Plan, params, checkpoint_every, final_only):
    """Integrate ``y0 = (q0, p0)`` over ``plan`` storing no per-step activations.

    Args:
        func: ``(f_q, f_p)``.
        y0: ``(q0, p0)``, each ``(*shape)``.
        plan: the grid and its outputs (:class:`_split.Plan`).
        params: tensors to differentiate besides ``y0``; ``None`` gathers the parameters of
            the module(s) ``func`` belongs to (:func:`gather_params`).
        checkpoint_every: also store the state every this many steps (``None``: only the
            final state).
        final_only: return the final ``(q, p)`` alone, each ``(*shape)``.

    Returns:
        ``(q, p)`` stacked at the output times, each ``(n_times, *shape)``, and the stats.
    """
    given = params is not None
    params = gather_params(func) if params is None else tuple(params)
    for w in params:
        if not isinstance(w, Tensor):
            raise TypeError(f"params must be tensors, got {type(w).__name__}")
    lost = uncovered_tensors(func, params)
    if lost:
        raise ValueError(
            f"memory='reversible' differentiates (q0, p0) and "
            f"{'the tensors given as params' if given else 'the parameters of the modules of f_q, f_p'}"
            f"; these tensors f_q, f_p read require grad but are not among them, so their "
            f"gradient would be lost: {'; '.join(lost)}. Pass every tensor to differentiate as "
            "params=, or detach the ones you mean to hold fixed (a plain tensor attribute of "
            "a module may also become an nn.Parameter of it)"
        )
    norms = _check_modules(_modules(func))
    pin = Pinned(owners(func), "reversible")
    sol = _ReversibleSolve.apply(
        plan, tuple(func), checkpoint_every, final_only, norms, pin, y0[0], y0[1], *params
    )
    return sol, plan.stats()
