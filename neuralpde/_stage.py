"""A stage: one right-hand side integrated over [0, T] by any ``solvers.odeint`` method."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

import solvers

from ._rhs import _RHS

# The paper's scheme for each dynamic (SPEC: forward Euler, symplectic Euler, leapfrog).
DEFAULT_METHOD = {
    "ParabolicRHS": "euler",
    "ResNetRHS": "euler",
    "HamiltonianRHS": "symplectic_euler",
    "SecondOrderRHS": "leapfrog",
}
# Tolerances for adaptive methods on a network stage: activations are O(1) and the loss
# cares about a few digits, so torchdiffeq's 1e-7/1e-9 would waste evaluations.
DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-4


class Stage(nn.Module):
    """Integrates ``rhs`` from 0 to ``rhs.T`` and returns the state at ``T``.

    Depth is integration time: the same weights θ(t) can be discretized by any method of
    :func:`solvers.methods` at run time (see :meth:`set_solver`).

    Args:
        rhs: a right-hand side (:class:`ParabolicRHS`, :class:`HamiltonianRHS`,
            :class:`SecondOrderRHS`, :class:`ResNetRHS`).
        method: defaults to the paper's scheme for that dynamic: ``"euler"`` (parabolic,
            resnet), ``"symplectic_euler"`` (Hamiltonian), ``"leapfrog"`` (second order).
        step_size: defaults to the training step ``rhs.step_size``.
        memory: ``"autograd"`` (default), ``"reversible"`` or ``"adjoint"``; see
            :meth:`set_solver`.
        options: ``rtol``, ``atol`` and torchdiffeq options (``max_num_steps``, ...);
            ``checkpoint_every`` with ``memory="reversible"``.

    ``forward(x)``: ``x (batch, channels, h, w)`` -> ``(batch, channels, h, w)``.

    Attributes:
        check_finite: check the state for NaN/Inf before and after the solve (default
            ``True``; two host–device syncs per stage). ``False`` makes a fixed-step or
            symplectic stage free of syncs (for CUDA graphs and sync-free GPU training).
    """

    def __init__(
        self,
        rhs: _RHS,
        method: str | None = None,
        step_size: float | None = None,
        memory: str = "autograd",
        **options: Any,
    ):
        super().__init__()
        if not isinstance(rhs, _RHS):
            raise TypeError(
                f"Stage: rhs must be a neuralpde right-hand side, got {type(rhs).__name__}"
            )
        self.rhs = rhs
        self.index: int | None = None
        self.last_stats: dict[str, Any] = {}
        self.check_finite = True
        self.set_solver(method, step_size, memory, **options)

    @property
    def default_method(self) -> str:
        """The paper's scheme for this stage's dynamic."""
        return DEFAULT_METHOD[type(self.rhs).__name__]

    def set_solver(
        self,
        method: str | None = None,
        step_size: float | None = None,
        memory: str = "autograd",
        **options: Any,
    ) -> None:
        """Change how this stage is discretized; the weights are untouched.

        Every argument not given is reset to its default.

        Args:
            method: a name from :func:`solvers.methods`; ``None`` restores the default.
            step_size: for fixed-step and symplectic methods; ``None`` uses the training
                step. Must be ``None`` for adaptive methods.
            memory: what the backward pass stores. ``"autograd"``: every step's
                activations (memory grows with the number of steps). ``"reversible"``
                (Hamiltonian and second-order stages with a symplectic method): only the
                stage's output; each step's input is recomputed by running the stepper
                backwards, so memory does not grow with depth and the gradient equals
                autograd's up to round-off. ``"adjoint"`` (Runge–Kutta methods):
                ``torchdiffeq.odeint_adjoint``, constant memory too, but its gradient
                solves an adjoint ODE and only approximates the discrete one.
            options: ``rtol``, ``atol`` (adaptive methods) and torchdiffeq options;
                ``checkpoint_every=k`` with ``memory="reversible"`` also stores the state
                every ``k`` steps, which bounds float32 reconstruction drift on long stages.

        Raises:
            ValueError: unknown method, or one that cannot integrate this stage (a
                symplectic method on a parabolic or resnet stage), or a ``memory`` mode this
                stage or method does not support.
        """
        method = self.default_method if method is None else method
        kinds = solvers.methods()
        if method not in kinds:
            raise ValueError(
                f"{self._name()}: unknown method {method!r}; valid methods are: "
                f"{', '.join(sorted(kinds))}"
            )
        kind = kinds[method]
        if kind == "symplectic" and not self.rhs.split:
            raise ValueError(
                f"{self._name()}: {method!r} needs a split (q, p) system, but a "
                f"{type(self.rhs).__name__} has a single state; use a Runge–Kutta method "
                "such as 'euler', 'rk4' or 'dopri5'"
            )
        if kind == "adaptive":
            if step_size is not None:
                raise ValueError(
                    f"{self._name()}: step_size is for fixed-step methods; {method!r} picks its "
                    "own steps from rtol/atol"
                )
        else:
            if step_size is not None and (
                isinstance(step_size, bool) or not isinstance(step_size, (int, float))
            ):
                raise TypeError(
                    f"{self._name()}: step_size must be a number, got {type(step_size).__name__}"
                )
            step_size = self.rhs.step_size if step_size is None else float(step_size)
            if not step_size > 0:
                raise ValueError(f"{self._name()}: step_size must be positive, got {step_size}")
        self._check_memory(memory, method, kind)
        if kind != "adaptive" and ("rtol" in options or "atol" in options):
            raise ValueError(
                f"{self._name()}: rtol/atol apply to adaptive methods only; {method!r} is "
                "fixed-step: refine it with step_size instead"
            )
        rtol = options.pop("rtol", DEFAULT_RTOL)
        atol = options.pop("atol", DEFAULT_ATOL)
        if "checkpoint_every" in options and memory != "reversible":
            raise ValueError(
                f"{self._name()}: checkpoint_every is an option of memory='reversible', "
                f"not of memory={memory!r}"
            )
        if kind == "symplectic" and set(options) - {"checkpoint_every"}:
            raise ValueError(f"{self._name()}: {method!r} takes no options, got {sorted(options)}")
        self.method, self.kind, self.step_size, self.memory = method, kind, step_size, memory
        self.rtol, self.atol, self.options = rtol, atol, options

    def _check_memory(self, memory: str, method: str, kind: str) -> None:
        modes = ("autograd", "reversible", "adjoint")
        if memory not in modes:
            raise ValueError(f"{self._name()}: memory must be one of {modes}, got {memory!r}")
        dynamic = type(self.rhs).__name__
        if memory == "reversible" and not self.rhs.split:
            raise ValueError(
                f"{self._name()}: memory='reversible' needs a time-reversible stage, but a "
                f"{dynamic} stage is not one (only the Hamiltonian and second-order stages "
                "are): its earlier states cannot be recomputed from later ones. Use "
                "memory='adjoint' (constant memory, approximate gradient) or "
                "memory='autograd'"
            )
        if memory == "reversible" and kind != "symplectic":
            names = [m for m, k in solvers.methods().items() if k == "symplectic"]
            raise ValueError(
                f"{self._name()}: memory='reversible' needs a reversible method, and {method!r} "
                f"is not one; use a symplectic method ({', '.join(sorted(names))}) or "
                "memory='adjoint' / memory='autograd'"
            )
        if memory == "adjoint" and kind == "symplectic":
            raise ValueError(
                f"{self._name()}: memory='adjoint' is torchdiffeq's adjoint for Runge–Kutta "
                f"methods and does not apply to {method!r}; use memory='reversible' (exact "
                "gradient, constant memory)"
            )

    def _name(self) -> str:
        return "stage" if self.index is None else f"stage {self.index}"

    def _solver_options(self) -> dict[str, Any] | None:
        opts = dict(self.options)
        jumps = self.rhs.jump_times()
        if self.kind == "fixed" and jumps:
            # Evaluate a step's end "just before" it, so θ_j is used on its own cell.
            opts.setdefault("perturb", True)
        if self.kind == "adaptive" and jumps and self.method != "scipy_solver":
            opts.setdefault("jump_t", torch.tensor(jumps, dtype=torch.float64))
        return opts or None

    def forward(self, x: Tensor) -> Tensor:
        rhs = self.rhs
        if x.dim() != 4 or x.shape[1] != rhs.channels:
            raise ValueError(
                f"{self._name()}: expected input (batch, {rhs.channels}, height, width), got "
                f"{tuple(x.shape)}"
            )
        # Host floats, not a device tensor: the solver never reads the grid back (no sync,
        # and torch.compile sees constants).
        t = [0.0, rhs.T]
        func = rhs.separable if self.kind == "symplectic" else rhs
        opts = self._solver_options()
        if opts and "jump_t" in opts:
            opts["jump_t"] = opts["jump_t"].to(device=x.device, dtype=x.dtype)
        try:
            solver = solvers.Solver(
                self.method,
                step_size=self.step_size,
                rtol=self.rtol,
                atol=self.atol,
                memory=self.memory,
                options=opts or {},
                check_finite=self.check_finite,
            )
            sol = solvers.solve(func, rhs.to_state(x), t, solver, save="final")
        except solvers.NonFiniteError as err:
            raise solvers.NonFiniteError(f"{self._name()}: {err}", t=err.t, step=err.step) from err
        except solvers.SolverError as err:
            raise solvers.SolverError(f"{self._name()}: {err}", status=err.status) from err
        self.last_stats = {"method": self.method, **sol.stats.as_dict()}
        return rhs.from_state(sol.y_final)

    def extra_repr(self) -> str:
        out = f"method={self.method!r}, step_size={self.step_size}"
        return out if self.memory == "autograd" else f"{out}, memory={self.memory!r}"
