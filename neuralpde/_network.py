"""PDECNN: opening, PDE stages, connectors, pooling, classifier (Ruthotto & Haber 2020, Sec. 4)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _stage
from ._lipschitz import BoundedConv2d, BoundedLinear, MaxMin
from ._rhs import RHS, arch_name, resolve_arch
from ._stage import UNCHANGED, Stage

# Table 1 of Ruthotto & Haber (2020): widths, input channels, classes.
PAPER_PRESETS = {
    "stl10": {"widths": (16, 32, 64, 128, 128), "in_channels": 3, "num_classes": 10},
    "cifar10": {"widths": (32, 64, 112, 112), "in_channels": 3, "num_classes": 10},
    "cifar100": {"widths": (32, 64, 128, 256), "in_channels": 3, "num_classes": 100},
}


# BatchNorm ε of the authors' code (Meganet, DynamicBlocks); PyTorch's default is 1e-5.
PAPER_BN_EPS = 1e-4


def _conv_bn_relu(c_in: int, c_out: int, k: int, bn_eps: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(c_out, eps=bn_eps),
        nn.ReLU(inplace=False),
    )


def _bounded_maxmin(c_in: int, c_out: int, k: int, bn_eps: float) -> nn.Sequential:
    # No BatchNorm: its eval-mode gain max|γ|/sqrt(var + ε) is unbounded in training, and
    # in training mode the map depends on the batch. The bias takes BatchNorm's shift.
    # MaxMin, not ReLU: on digits a certified network with ReLU here reached 54 % in 30
    # epochs where MaxMin reached 95.6 % (ReLU after a norm-1 map discards half the signal).
    return nn.Sequential(BoundedConv2d(c_in, c_out, k, bias=True), MaxMin())


class PDECNN(nn.Module):
    """A PDE-motivated CNN: a ResNet whose blocks are ODE stages, depth as time.

    Layout (Ruthotto & Haber 2020, Sec. 4): 3×3 conv + BatchNorm + ReLU opening to
    ``widths[0]``; for each unit ``k`` a stage at width ``widths[k]`` integrated over
    ``[0, steps·step_size]``, then a 1×1 conv + BatchNorm + ReLU connector to
    ``widths[k+1]`` and 2×2 average pooling (global average pooling after the last unit);
    an affine classifier.

    Args:
        arch: the dynamics of the stages: a registered name (``"parabolic"``,
            ``"hamiltonian"``, ``"second_order"``, ``"resnet"``, or one added with
            :func:`~neuralpde.register_arch`) or a subclass of :class:`~neuralpde.RHS`
            taking ``(channels, steps, step_size, interpolation)``.
        in_channels: channels of the input images.
        num_classes: number of classes.
        widths: ``(nf_1, ..., nf_{K+1})``; ``K = len(widths) - 1`` stages.
        steps: parameter sets (time steps) per stage.
        step_size: the training step ``h``, the width of θ(t)'s cells; each stage spans
            ``T = steps * h``. It fixes the model; :meth:`set_solver`'s ``step_size`` only
            changes how finely that model is integrated (default: this ``h``).
        interpolation: θ(t) between steps, ``"constant"`` (the paper) or ``"linear"``.
        method: solver of every stage (default: the dynamics' ``default_method``, the
            paper's scheme).
        memory: what backward stores, for every stage: ``"autograd"`` (default),
            ``"reversible"`` (split-state archs: exact gradients in memory independent of
            ``steps``) or ``"adjoint"`` (Runge–Kutta methods; approximate gradients); see
            :meth:`Stage.set_solver`.
        bn_eps: ε of every BatchNorm (PyTorch's default 1e-5; the authors' code, and
            :meth:`from_paper`, use 1e-4: Meganet's batch-norm layer).
        lipschitz: the layers outside the stages with operator norms at most 1 on inputs
            of every size, for a certified network (:func:`~neuralpde.lipschitz_bound`):
            opening and connectors are convolutions with a bias whose kernels are scaled
            by ``1/max(1, ‖K‖)`` (``‖K‖`` from the Fourier symbol, rigorous), followed by
            the MaxMin activation (so widths must be even), with no BatchNorm (batch statistics would make the map depend on the
            batch and its eval-mode gain unbounded); the classifier's matrix is scaled by
            ``1/max(1, ‖W‖₂)``. The stages are bounded by their dynamics: use
            ``rhs_options={"normalization": "bias"}`` and
            :func:`neuralpde.stability.constrain` with ``fraction=1`` for 1-Lipschitz
            forward-Euler stages.
        rhs_options: keyword arguments of every stage's dynamics beyond ``(channels, steps,
            step_size, interpolation)``, e.g. ``{"normalization": "bias"}`` for the paper's
            symmetric dynamics (the stable configuration, :func:`neuralpde.stability.constrain`).
        solver_options: ``step_size``/``rtol``/``atol``/torchdiffeq options for ``method``.

    Raises:
        ValueError: an unknown arch, widths the dynamics cannot take, a non-positive
            ``bn_eps``.
        TypeError: ``rhs_options`` the dynamics' constructor does not take.

    ``forward(x)``: ``x (batch, in_channels, height, width)`` -> logits
    ``(batch, num_classes)``; height and width must be divisible by ``2**(K-1)``.
    """

    def __init__(
        self,
        arch: str | type[RHS],
        in_channels: int,
        num_classes: int,
        widths: tuple[int, ...] | list[int],
        steps: int = 3,
        step_size: float = 1.0,
        interpolation: str = "constant",
        method: str | None = None,
        memory: str = "autograd",
        bn_eps: float = 1e-5,
        rhs_options: dict[str, Any] | None = None,
        lipschitz: bool = False,
        **solver_options: Any,
    ):
        super().__init__()
        if not isinstance(bn_eps, (int, float)) or isinstance(bn_eps, bool) or not bn_eps > 0:
            raise ValueError(f"PDECNN: bn_eps must be a positive float, got {bn_eps!r}")
        rhs_cls = resolve_arch(arch, "PDECNN")
        for name, v in (("in_channels", in_channels), ("num_classes", num_classes)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"PDECNN: {name} must be a positive int, got {v!r}")
        widths = tuple(widths)
        if len(widths) < 2 or not all(isinstance(w, int) and w > 0 for w in widths):
            raise ValueError(
                f"PDECNN: widths must list at least two positive ints (stage widths plus the "
                f"final width), got {widths!r}"
            )
        for w in widths[:-1]:
            try:
                rhs_cls.check_width(w)
            except ValueError as err:
                raise ValueError(f"PDECNN: stage widths {widths[:-1]}: {err}") from None
        self.arch = arch if isinstance(arch, str) else arch_name(arch)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.widths = widths
        self.lipschitz = bool(lipschitz)
        if self.lipschitz and any(w % 2 for w in widths):
            raise ValueError(
                f"PDECNN: lipschitz=True pairs channels in its MaxMin activations; widths must "
                f"be even, got {widths}"
            )
        block = _bounded_maxmin if self.lipschitz else _conv_bn_relu
        self.opening = block(in_channels, widths[0], 3, bn_eps)
        self.stages = nn.ModuleList()
        self.connectors = nn.ModuleList()
        rhs_options = dict(rhs_options or {})
        try:
            inspect.signature(rhs_cls).bind(
                widths[0], steps, step_size, interpolation, **rhs_options
            )
        except TypeError as err:
            raise TypeError(
                f"PDECNN: rhs_options {sorted(rhs_options)} are not arguments of "
                f"{rhs_cls.__name__}({err}); pass only what its constructor takes"
            ) from None
        self.rhs_options = rhs_options
        for k in range(len(widths) - 1):
            stage = Stage(rhs_cls(widths[k], steps, step_size, interpolation, **rhs_options))
            stage.index = k
            self.stages.append(stage)
            self.connectors.append(block(widths[k], widths[k + 1], 1, bn_eps))
        linear = BoundedLinear if self.lipschitz else nn.Linear
        self.classifier = linear(widths[-1], num_classes)
        if method is not None or solver_options or memory != "autograd":
            self.set_solver(method, memory=memory, **solver_options)

    @classmethod
    def from_paper(cls, dataset: str, arch: str, **kwargs: Any) -> PDECNN:
        """The network of the paper's Table 1 for ``dataset`` (``"stl10"``, ``"cifar10"``,
        ``"cifar100"``): its widths, 3 steps of h = 1 per stage, and exactly its parameter
        count, and the authors' BatchNorm ε = 1e-4. ``kwargs`` go to :class:`PDECNN` (e.g.
        ``steps=5``)."""
        if dataset not in PAPER_PRESETS:
            raise ValueError(
                f"PDECNN.from_paper: unknown preset {dataset!r}; choose one of "
                f"{sorted(PAPER_PRESETS)}"
            )
        return cls(arch, **PAPER_PRESETS[dataset], **{"bn_eps": PAPER_BN_EPS, **kwargs})

    def set_solver(
        self,
        method: str | None = UNCHANGED,
        step_size: float | None = UNCHANGED,
        stage: int | None = None,
        memory: str = UNCHANGED,
        **options: Any,
    ) -> None:
        """Re-discretize every stage (or stage ``stage``); only what is named changes.

        The weights and every setting not named stay: ``set_solver(step_size=0.5)`` keeps
        each stage's method, memory mode, tolerances and options. What a change of method
        does to the rest is :meth:`Stage.set_solver`'s rule; :meth:`reset_solver` returns
        to the paper's schemes. An error leaves every stage as it was.

        Args:
            method: a name from :func:`solvers.methods`; ``None`` is each stage's default.
            step_size: for fixed-step and symplectic methods (``None``: the training step).
                To train at it, take a divisor of θ(t)'s cells (``T / steps``; 1/2, 1/4
                of the default): a step across a jump of a constant θ(t) samples it where
                the step falls, and the weights learn that sampling, not θ(t)
                (``experiments.train`` refuses other steps).
            stage: index of a single stage to change; ``None`` changes all.
            memory: ``"autograd"``, ``"reversible"`` or ``"adjoint"`` (see
                :meth:`Stage.set_solver`).
            options: ``rtol``, ``atol`` and torchdiffeq options (``checkpoint_every``
                with ``memory="reversible"``).

        Raises:
            ValueError: a ``stage`` out of range, or what :meth:`Stage.set_solver` raises.
        """
        targets = self._targets(stage, "set_solver")
        before = [s.solver for s in targets]
        try:
            for s in targets:
                s.set_solver(method, step_size, memory, **dict(options))
        except (ValueError, TypeError):
            for s, solver in zip(targets, before):
                s.solver = solver
            raise

    def reset_solver(self, stage: int | None = None) -> None:
        """Every stage (or stage ``stage``) back to its dynamics' own scheme (the paper's):
        see :meth:`Stage.reset_solver`. Everything goes back, the memory mode included
        (``"autograd"``): a network built with ``memory="reversible"`` keeps that mode
        across a reset only with ``net.reset_solver(); net.set_solver(memory="reversible")``.

        Raises:
            ValueError: ``stage`` is not an int in ``[0, number of stages)``.
        """
        for s in self._targets(stage, "reset_solver"):
            s.reset_solver()

    def _targets(self, stage: int | None, who: str) -> list[Stage]:
        if stage is None:
            return list(self.stages)
        if (
            isinstance(stage, bool)
            or not isinstance(stage, int)
            or not 0 <= stage < len(self.stages)
        ):
            raise ValueError(
                f"{who}: stage must be an int in [0, {len(self.stages)}), got {stage!r}"
            )
        return [self.stages[stage]]

    def refine(self, factor: int) -> PDECNN:
        """Prolongate every stage's θ(t) onto ``factor``× the parameter sets, in place
        (:meth:`Stage.refine`): the multilevel training in time of Haber, Ruthotto &
        Holtham ("Learning across scales", AAAI 2018) and Chang et al. (ICLR 2018).

        The network computes the same function up to the interpolation error of θ(t)
        (exactly the same where θ is constant in time); fixed solver steps shrink by
        ``factor`` with the cells. Parameters of the stages are new objects afterwards:
        build the optimizer again, and wrap the network in ``DistributedDataParallel``
        again (a wrapper made before synchronizes the old parameters only; its next forward
        raises). Call ``backward`` of a forward made before ``refine`` first: with
        ``memory="reversible"`` or ``"adjoint"`` the backward recomputes the forward and
        raises once the parameters changed shape.

        Args:
            factor: a positive int.

        Returns:
            ``self``.

        Raises:
            ValueError: ``factor`` is not a positive int.
        """
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"PDECNN.refine: factor must be a positive int, got {factor!r}")
        for stage in self.stages:
            stage.refine(factor)
        return self

    def solver_stats(self) -> list[dict[str, Any]]:
        """Per stage, ``method``, ``nfe`` and ``steps`` (and ``rejected``) of the last forward."""
        return [dict(s.last_stats) for s in self.stages]

    def features(self, x: Tensor) -> Tensor:
        """The pooled feature vector ``(batch, widths[-1])`` before the classifier."""
        if not isinstance(x, Tensor):
            raise TypeError(f"PDECNN: expected a tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"PDECNN: expected input (batch, {self.in_channels}, height, width), got "
                f"{tuple(x.shape)}"
            )
        self._check_input(x)
        self._check_ddp()
        parts = (self.opening, self.stages, self.connectors)  # what _features runs
        if not _stage._KERNELS_CACHED and any(_stage.constrained(m) for m in parts):
            # Every constrained kernel once per forward pass, and under torch.compile the
            # whole network one graph (see with_kernels_cached).
            return _stage.with_kernels_cached(parts, self._features, x)
        return self._features(x)

    def _features(self, x: Tensor) -> Tensor:
        x = self.opening(x)
        last = len(self.stages) - 1
        for k, (stage, connector) in enumerate(zip(self.stages, self.connectors)):
            x = connector(stage(x))
            x = x.mean(dim=(2, 3)) if k == last else F.avg_pool2d(x, 2)
        return x

    def _check_ddp(self) -> None:
        """Refuse a forward under a ``DistributedDataParallel`` that wraps this network but
        was built before :meth:`refine` replaced its parameters: its gradient sync would
        skip the new ones (unsynchronized ranks), and the step after fail in DDP."""
        if torch.compiler.is_compiling() or not torch.distributed.is_available():
            return
        ddp = torch.nn.parallel.DistributedDataParallel._active_ddp_module
        known = getattr(ddp, "_module_parameters", None)
        if ddp is None or ddp.module is not self or known is None:
            return
        ids = {id(p) for p in known}
        if any(p.requires_grad and id(p) not in ids for p in self.parameters()):
            raise RuntimeError(
                "PDECNN: this network's parameters changed (refine()) after it was wrapped "
                "in DistributedDataParallel, which synchronizes the gradients of the old "
                "ones only: wrap it again, DistributedDataParallel(net), after refine() "
                "(and build the optimizer again)"
            )

    def _check_input(self, x: Tensor) -> None:
        param = self.classifier.weight
        if not x.is_floating_point():
            raise TypeError(f"PDECNN: input must be floating point, got dtype {x.dtype}")
        if x.dtype != param.dtype:
            raise TypeError(
                f"PDECNN: input dtype {x.dtype} differs from the network's {param.dtype}; "
                f"call x.to({param.dtype}) or net.to({x.dtype})"
            )
        if x.device != param.device:
            raise ValueError(
                f"PDECNN: input is on {x.device} but the network is on {param.device}; "
                f"move one of them with .to(device)"
            )
        factor = 2 ** (len(self.stages) - 1)
        h, w = x.shape[-2:]
        if h % factor or w % factor:
            # 2×2 pooling would silently drop the last row/column of odd-sized maps.
            raise ValueError(
                f"PDECNN: height and width must be divisible by {factor} "
                f"(2×2 pooling after each of the first {len(self.stages) - 1} stages), got "
                f"{h}×{w}; pad or crop the images"
            )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))

    def extra_repr(self) -> str:
        extra = ", lipschitz=True" if self.lipschitz else ""
        return f"arch={self.arch!r}, widths={self.widths}{extra}"


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
