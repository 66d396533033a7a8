"""A stage: one right-hand side integrated over [0, T] by any ``solvers.odeint`` method."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

import solvers

from ._rhs import RHS

# Tolerances for adaptive methods on a network stage: activations are O(1) and the loss
# cares about a few digits, so torchdiffeq's 1e-7/1e-9 would waste evaluations.
DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-4


class _Unchanged:
    """The default of :meth:`Stage.set_solver`'s arguments: keep the current setting."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Any = _Unchanged()


# True while with_kernels_cached holds every constrained kernel of the module it runs.
_KERNELS_CACHED = False


def constrained(module: nn.Module) -> bool:
    """Whether ``module`` or a submodule has a parametrized tensor (e.g. a kernel under
    :func:`neuralpde.stability.constrain`)."""
    return any(parametrize.is_parametrized(m) for m in module.modules())


@torch.compiler.disable  # eager: kernels, not activations; nothing to gain from a graph
def _fill_cache(modules: tuple[nn.Module, ...]) -> None:
    for module in modules:
        for m in module.modules():
            if parametrize.is_parametrized(m):
                for name in m.parametrizations:
                    getattr(m, name)


# Eager, its callees compiled (recursive=False): torch.compile can neither trace
# parametrize's cache nor break a graph inside it (it would run the whole network eagerly,
# each solver step a frame of its own). So this frame fills the cache with every
# parametrized tensor of ``modules`` (a constrained kernel: computed once per forward pass,
# not at every evaluation of the right-hand side nor once per share of a training mix),
# and ``fn``, compiled as a frame of its own, reads them from it.
@torch.compiler.disable(recursive=False)
def with_kernels_cached(modules: tuple[nn.Module, ...], fn, x: Tensor) -> Tensor:
    """``fn(x)`` with every parametrized tensor of ``modules`` (those ``fn`` runs) computed
    once, up front."""
    global _KERNELS_CACHED
    with parametrize.cached():
        _fill_cache(modules)
        before, _KERNELS_CACHED = _KERNELS_CACHED, True
        try:
            return fn(x)
        finally:
            _KERNELS_CACHED = before


class Stage(nn.Module):
    """Integrates ``rhs`` from 0 to ``rhs.T`` and returns the state at ``T``.

    Depth is integration time: the same weights θ(t) can be discretized by any method of
    :func:`solvers.methods` at run time (see :meth:`set_solver`); in training, several
    methods can share each batch (:attr:`training_mix`).

    Args:
        rhs: a right-hand side, any subclass of :class:`~neuralpde.RHS` (the paper's
            dynamics, the image filters, or one of your own).
        method: defaults to the dynamics' ``rhs.default_method`` (the paper's scheme:
            ``"euler"`` for parabolic and resnet, ``"symplectic_euler"`` for Hamiltonian,
            ``"leapfrog"`` for second order).
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
        rhs: RHS,
        method: str | None = None,
        step_size: float | None = None,
        memory: str = "autograd",
        **options: Any,
    ):
        super().__init__()
        if not isinstance(rhs, RHS):
            raise TypeError(
                f"Stage: rhs must be a neuralpde right-hand side (a subclass of neuralpde.RHS), "
                f"got {type(rhs).__name__}"
            )
        self.rhs = rhs
        self.index: int | None = None
        self.last_stats: dict[str, Any] = {}
        self.check_finite = True
        self._mix: tuple[solvers.Solver, ...] = ()
        self.reset_solver()
        self.set_solver(method, step_size, memory, **options)

    @property
    def default_method(self) -> str:
        """The scheme the dynamics declares (``rhs.default_method``)."""
        return self.rhs.default_method

    @property
    def solver(self) -> solvers.Solver:
        """This stage's :class:`solvers.Solver`; its ``step_size=None`` means the training
        step ``rhs.step_size`` for a fixed-step method (none for an adaptive one).

        Assigning a ``Solver`` replaces every setting at once (``stage.solver = saved``
        restores one read earlier); it is checked against the dynamics first.

        Raises:
            TypeError: on assignment, a value that is not a :class:`solvers.Solver`.
            ValueError: on assignment, a solver this stage's dynamics cannot take.
        """
        return self._solver

    @solver.setter
    def solver(self, value: solvers.Solver) -> None:
        if not isinstance(value, solvers.Solver):
            raise TypeError(
                f"{self._name()}: solver must be a solvers.Solver, got {type(value).__name__}"
            )
        self._solver = self._checked(value)

    @property
    def method(self) -> str:
        """The name of the current method."""
        return self._solver.method

    @property
    def kind(self) -> str:
        """The current method's kind: ``"fixed"``, ``"adaptive"`` or ``"symplectic"``."""
        return self._solver.kind

    @property
    def step_size(self) -> float | None:
        """The current step: the one set, else the training step ``rhs.step_size``;
        ``None`` for an adaptive method."""
        return self._step_of(self._solver)

    def _step_of(self, solver: solvers.Solver) -> float | None:
        """The step ``solver`` takes on this stage (``None``: the training step)."""
        if solver.kind == "adaptive":
            return None
        return self.rhs.step_size if solver.step_size is None else solver.step_size

    def _training_discretizations(self) -> list[tuple[str, float]]:
        """``(method, h)`` of every fixed-step discretization a training batch is
        integrated with: each solver of :attr:`training_mix` in training mode, else the
        stage's own solver (what :class:`~neuralpde.stability.StabilityPenalty` holds)."""
        mix = self._mix if self.training else ()
        return [
            (s.method, float(self._step_of(s)))
            for s in mix or (self._solver,)
            if s.kind != "adaptive"
        ]

    @property
    def memory(self) -> str:
        """What the backward pass stores: ``"autograd"``, ``"reversible"`` or ``"adjoint"``."""
        return self._solver.memory

    @property
    def rtol(self) -> float:
        """Relative tolerance of an adaptive method."""
        return self._solver.rtol

    @property
    def atol(self) -> float:
        """Absolute tolerance of an adaptive method."""
        return self._solver.atol

    @property
    def options(self) -> dict[str, Any]:
        """The method's and memory mode's options (a copy)."""
        return dict(self._solver.options)

    @property
    def training_mix(self) -> tuple[solvers.Solver, ...]:
        """The solvers that share each batch in training mode (empty: :attr:`solver` alone).

        Assigning a sequence of :class:`solvers.Solver` (two or more; each checked against
        the dynamics as :attr:`solver` is) makes every forward pass in training mode cut
        the batch (dimension 0) into ``len(mix)`` contiguous shares whose sizes differ by
        at most one (``torch.tensor_split``), integrate share ``i`` with ``mix[i]`` and
        concatenate the results in order (a solver listed twice takes two shares); an empty
        share (a batch smaller than the mix) is skipped. Neighbouring shares of one
        fixed-step or symplectic solver are integrated in one call, which gives the same
        result up to rounding for dynamics whose samples do not interact (every dynamics of
        this library) at less cost; :attr:`last_stats` then counts one integration for
        them. Evaluation mode always uses :attr:`solver`, so a swap table or a
        checkpoint's evaluation never sees the mix.
        Assign ``()`` or ``None`` to clear it.
        The mix is its own setting: :meth:`set_solver`, :meth:`reset_solver` and
        :meth:`refine` leave it as it is, and each of its solvers carries its own step and
        memory mode (``dataclasses.replace(stage.solver, method=...)`` keeps the stage's).
        It is not part of the ``state_dict``.

        Why shares and not one solver per batch: the BatchNorms after a stage then
        normalize every batch, and average into their running statistics, the features of
        every method at once; a method whose features drift from the others' then costs
        training loss, so training removes the drift, and whichever method evaluates
        meets statistics that fit it. A method drawn per batch leaves running statistics
        of the last batches' draws (CIFAR-10, parabolic network, midpoint and forward
        Euler drawn per batch: 64.5 % under midpoint, 69.6 % under forward Euler on the
        same weights). That several discretizations of one θ(t) agree is the test of Ott
        et al., "ResNet After All? Neural ODEs and Their Numerical Solution", ICLR 2021;
        training one θ(t) to be accurate under several methods is the aim of Queiruga et
        al., "Continuous-in-Depth Neural Networks", arXiv:2008.02389, 2020.

        Raises:
            TypeError: on assignment, an element that is not a :class:`solvers.Solver`.
            ValueError: on assignment, a mix of one solver, or a solver this stage's
                dynamics cannot take.
        """
        return self._mix

    @training_mix.setter
    def training_mix(self, mix) -> None:
        if mix is None:
            mix = ()
        if isinstance(mix, (solvers.Solver, str)) or not hasattr(mix, "__iter__"):
            raise TypeError(
                f"{self._name()}: training_mix takes a sequence of solvers.Solver (e.g. "
                '[solvers.Solver("verlet"), solvers.Solver("leapfrog")]), got '
                f"{type(mix).__name__}"
            )
        mix = tuple(mix)
        if len(mix) == 1:
            raise ValueError(
                f"{self._name()}: a training mix of one solver is that solver: assign it to "
                "stage.solver, or give two or more"
            )
        for s in mix:
            if not isinstance(s, solvers.Solver):
                raise TypeError(
                    f"{self._name()}: training_mix takes solvers.Solver objects (e.g. "
                    f'solvers.Solver("{s}") for a name), got {type(s).__name__}'
                )
        self._mix = tuple(self._checked(s) for s in mix)

    def reset_solver(self) -> None:
        """Back to the dynamics' own scheme: ``rhs.default_method`` at the training step
        ``rhs.step_size``, ``memory="autograd"`` (whatever the mode was: a reset is a
        whole new solver; name the mode again with :meth:`set_solver` to keep it), the
        stage's default tolerances (rtol 1e-3, atol 1e-4), no options."""
        try:
            default = solvers.Solver(self.rhs.default_method, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL)
        except ValueError as err:
            raise ValueError(
                f"{self._name()}: {type(self.rhs).__name__}.default_method: {err}"
            ) from None
        self.solver = default

    def set_solver(
        self,
        method: str | None = UNCHANGED,
        step_size: float | None = UNCHANGED,
        memory: str = UNCHANGED,
        **options: Any,
    ) -> None:
        """Change how this stage is discretized; only what is named changes.

        The weights are untouched, and so is every setting not named: ``set_solver(
        step_size=0.5)`` keeps the method, the memory mode, the tolerances and the options;
        :meth:`reset_solver` returns to the dynamics' own scheme. A change of method keeps
        the other settings too (the rule of :meth:`solvers.Solver.replace`): a setting the
        new method cannot take — a step size given for a fixed-step method, then an
        adaptive method; ``memory="reversible"``, then a Runge–Kutta method; a method's
        options — is an error that names it, never silently dropped. The default step
        (``step_size=None``) is the training step ``rhs.step_size`` for every fixed-step
        method and no step for an adaptive one, so it carries over everywhere.

        Args:
            method: a name from :func:`solvers.methods`; ``None`` is the dynamics' default
                method ``rhs.default_method``.
            step_size: for fixed-step and symplectic methods; ``None`` is the training step
                ``rhs.step_size``. Not for adaptive methods.
            memory: what the backward pass stores. ``"autograd"``: every step's
                activations (memory grows with the number of steps). ``"reversible"``
                (split-state dynamics with a symplectic method): only the stage's output;
                each step's input is recomputed by running the stepper backwards, so
                memory does not grow with depth and the gradient equals autograd's up to
                round-off. ``"adjoint"`` (Runge–Kutta methods):
                ``torchdiffeq.odeint_adjoint``, constant memory too, but its gradient
                solves an adjoint ODE and only approximates the discrete one.
            options: ``rtol``, ``atol`` (adaptive methods) and torchdiffeq options, added
                to (or replacing) the current ones; ``checkpoint_every=k`` with
                ``memory="reversible"`` also stores the state every ``k`` steps, which
                bounds float32 reconstruction drift on long stages.

        Raises:
            ValueError: unknown method, or one that cannot integrate this stage (a
                symplectic method on a single-state dynamics), a ``memory`` mode this
                stage or method does not support, a step size for an adaptive method or
                tolerances for a fixed-step one, options the method does not take. The
                stage is unchanged after an error.
            TypeError: a step size that is not a number.
        """
        changes: dict[str, Any] = {}
        if method is not UNCHANGED:
            changes["method"] = self.rhs.default_method if method is None else method
        if step_size is not UNCHANGED:
            changes["step_size"] = step_size
        if memory is not UNCHANGED:
            changes["memory"] = memory
        for tol in ("rtol", "atol"):
            if tol in options:
                changes[tol] = options.pop(tol)
        if options:
            changes["options"] = {**self._solver.options, **options}
        kind = self._kind(changes.get("method", self.method))
        if kind != "adaptive" and {"rtol", "atol"} & set(changes):
            raise ValueError(
                f"{self._name()}: rtol/atol apply to adaptive methods only; "
                f"{changes.get('method', self.method)!r} is fixed-step: refine it with "
                "step_size instead"
            )
        self.solver = self._new_solver(**changes)

    def _new_solver(self, **changes: Any) -> solvers.Solver:
        """The current solver with ``changes``, or an error prefixed with the stage's name
        that says which settings were kept."""
        current = self._solver
        # What the dynamics allows comes first: it is the more telling error.
        self._check_state(
            changes.get("method", current.method), changes.get("memory", current.memory)
        )
        try:
            return dataclasses.replace(current, **changes)
        except (ValueError, TypeError) as err:
            kept = {
                k: getattr(current, k)
                for k in ("step_size", "memory", "options")
                if k not in changes and getattr(current, k)
            }
            hint = ""
            if "method" in changes and kept:
                shown = ", ".join(
                    f"{k}={v if k != 'options' else dict(v)!r}" for k, v in kept.items()
                )
                hint = f" (set_solver keeps what it is not given: {shown})"
            raise type(err)(f"{self._name()}: {err}{hint}") from None

    def _kind(self, method: str) -> str:
        kinds = solvers.methods()
        if method not in kinds:
            raise ValueError(
                f"{self._name()}: unknown method {method!r}; valid methods are: "
                f"{', '.join(sorted(kinds))}"
            )
        return kinds[method]

    def _check_state(self, method: str, memory: str) -> None:
        try:
            self.rhs.check_solver(method, memory)
        except ValueError as err:
            raise ValueError(f"{self._name()}: {err}") from None

    def _checked(self, solver: solvers.Solver) -> solvers.Solver:
        """``solver`` if this stage's dynamics can take it (the rules of the state live in
        :meth:`RHS.check_solver`; those of the method in :class:`solvers.Solver`)."""
        self._check_state(solver.method, solver.memory)
        return solver

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
        if (
            not isinstance(x, Tensor)
            or x.dim() != 4
            or (rhs.channels is not None and x.shape[1] != rhs.channels)
        ):
            width = "channels" if rhs.channels is None else rhs.channels
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{self._name()}: expected input (batch, {width}, height, width), got {shape}"
            )
        if not _KERNELS_CACHED and constrained(self.rhs):
            return with_kernels_cached((self.rhs,), self._integrate_any, x)
        return self._integrate_any(x)

    def _integrate_any(self, x: Tensor) -> Tensor:
        if self._mix and self.training and x.shape[0]:
            return self._integrate_mix(x)
        return self._integrate(x)

    def _integrate_mix(self, x: Tensor) -> Tensor:
        # Neighbouring shares of one fixed-step solver are integrated as one: its steps do
        # not depend on the batch, so the result is the same (up to rounding) for dynamics
        # whose samples do not interact, and the work is one call on a larger batch
        # instead of several on small ones (the parabolic network's euler, euler,
        # euler, midpoint: two integrations a batch, not four). An adaptive solver's steps
        # follow the error of its whole share, so its shares stay apart.
        # The share sizes torch.tensor_split gives: the first ``extra`` one image larger.
        base, extra = divmod(x.shape[0], len(self._mix))
        runs: list[tuple[solvers.Solver, int]] = []
        for i, solver in enumerate(self._mix):
            n = base + (i < extra)
            if runs and runs[-1][0] == solver and solver.kind != "adaptive":
                runs[-1] = (solver, runs[-1][1] + n)
            elif n:
                runs.append((solver, n))
        own, outs, stats = self._solver, [], []
        try:
            for share, (solver, _) in zip(x.split([n for _, n in runs]), runs):
                self._solver = solver
                outs.append(self._integrate(share))
                stats.append(self.last_stats)
        finally:
            self._solver = own
        self.last_stats = {
            "method": "+".join(s["method"] for s in stats),
            "nfe": sum(s["nfe"] for s in stats),
            "steps": sum(s["steps"] or 0 for s in stats),
            "shares": stats,
        }
        return torch.cat(outs)

    def _integrate(self, x: Tensor) -> Tensor:
        rhs = self.rhs
        # Host floats, not a device tensor: the solver never reads the grid back (no sync,
        # and torch.compile sees constants).
        t = [0.0, rhs.T]
        func = rhs.separable if self.kind == "symplectic" else rhs
        opts = self._solver_options()
        if opts and "jump_t" in opts:
            opts["jump_t"] = opts["jump_t"].to(device=x.device, dtype=x.dtype)
        try:
            solver = dataclasses.replace(
                self._solver,
                step_size=self.step_size,
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

    def refine(self, factor: int) -> Stage:
        """Multilevel refinement in time, in place: θ(t) prolongated onto ``factor``× the
        parameter sets (:meth:`TimeWeights.refine`) and a fixed step divided by
        ``factor``, so each cell keeps its number of solver steps; ``T`` is unchanged.

        Returns ``self``. Raises ``ValueError`` for a ``factor`` that is not a positive int.
        """
        step = self._solver.step_size  # None: the training step, which refines itself
        self.rhs.refine(factor)
        if step is not None:
            self.set_solver(step_size=step / factor)
        return self

    def extra_repr(self) -> str:
        out = f"method={self.method!r}, step_size={self.step_size}"
        if self.memory != "autograd":
            out += f", memory={self.memory!r}"
        if self._mix:
            # print(net) shows how training discretizes, not only how evaluation does.
            out += f", training_mix={[(s.method, self._step_of(s)) for s in self._mix]}"
        return out
