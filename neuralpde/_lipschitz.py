"""Rigorous ℓ2 Lipschitz bounds of a network and the certified radii they give.

A network is a composition, so its Lipschitz constant is at most the product of its
layers'. Each factor here is an upper bound computed without iteration: a convolution's
operator norm from its Fourier symbol (:func:`~neuralpde.stability.symbol_rho`, exact for
the circular convolution on the torus that holds the zero padding), a matrix's spectral
norm from its singular values, and a stage's from its dynamics
(:meth:`neuralpde.RHS.lipschitz`) and its solver. A power-iteration estimate is a lower
bound and is never used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import solvers

from ._spectra import symbol_rho

# Explicit Runge–Kutta methods as Butcher tableaus (A, b): the fixed-step methods of
# torchdiffeq that ``solvers`` exposes (rk4 is Kutta's 3/8 rule, docs/choosing-a-solver.md).
_T = 1.0 / 3.0
RK_TABLEAUS: dict[str, tuple[list[list[float]], list[float]]] = {
    "euler": ([[]], [1.0]),
    "midpoint": ([[], [0.5]], [0.0, 1.0]),
    "heun2": ([[], [1.0]], [0.5, 0.5]),
    "heun3": ([[], [_T], [0.0, 2 * _T]], [0.25, 0.0, 0.75]),
    "rk4": ([[], [_T], [-_T, 1.0], [1.0, -1.0, 1.0]], [0.125, 0.375, 0.375, 0.125]),
}


def rk_step_lipschitz(method: str, z: float) -> float | None:
    """A Lipschitz bound of one explicit Runge–Kutta step ``y -> y + h Σ b_i k_i`` of a
    field with Lipschitz constant ``L``, for ``z = h L``.

    With ``‖Δy‖ = 1`` each stage obeys ``‖Δk_i‖ <= L (1 + h Σ_j |a_ij| ‖Δk_j‖)``, so the
    step is at most ``1 + Σ_i |b_i| d_i`` with ``d_i = z (1 + Σ_j |a_ij| d_j)``: for forward
    Euler ``1 + z``, for a method with non-negative coefficients of order ``s = p <= 4``
    the Taylor polynomial ``Σ_k z^k / k!`` of ``e^z`` (Hairer, Nørsett & Wanner, *Solving
    ODEs I*, Sect. II.3, the growth of a Runge–Kutta step).

    Returns ``None`` for a method without a tableau here (multistep methods).
    """
    if method not in RK_TABLEAUS:
        return None
    a, b = RK_TABLEAUS[method]
    d: list[float] = []
    for row in a:
        d.append(z * (1.0 + sum(abs(x) * dj for x, dj in zip(row, d))))
    return 1.0 + sum(abs(bi) * di for bi, di in zip(b, d))


def shear_lipschitz(b: float) -> float:
    """The operator norm of ``[[I, B], [0, I]]`` over all ``‖B‖ <= b``: ``(b + sqrt(b² + 4))/2``.

    A drift ``q <- q + a h f_q(p)`` (or a kick) of a field with Lipschitz constant ``L`` has
    Jacobians of this form with ``b = |a| h L``, so this bounds its Lipschitz constant on
    the state ``(q, p)``; it is at most ``1 + b``.
    """
    return 0.5 * (b + math.sqrt(b * b + 4.0))


def _splitting_tableau(method: str):
    if solvers.methods().get(method) != "symplectic":
        return None
    return getattr(solvers.stepper(method), "tableau", None)


def steps_of(T: float, step_size: float) -> int:
    """The number of fixed steps of ``step_size`` over ``[0, T]`` (the last may be short)."""
    return max(1, math.ceil(T / step_size - 1e-9))


def scheme_lipschitz(
    method: str,
    step_size: float | None,
    T: float,
    lipschitz: float | tuple[float, float],
) -> float | None:
    """A Lipschitz bound of a stage map ``y(0) -> y(T)`` from the Lipschitz constant of its field.

    For a dynamics of your own, in :meth:`neuralpde.RHS.lipschitz`: give the Lipschitz
    constant ``L`` of ``F(t, ·)`` for all ``t`` (``(L_q, L_p)`` of ``f_q`` and ``f_p`` for
    a split state ``(q, p)``), and get a bound of the stage under the method:

    * an explicit Runge–Kutta method: :func:`rk_step_lipschitz` per step, to the power of
      the number of steps;
    * a splitting method (symplectic Euler, leapfrog, Verlet, Yoshida): each drift and kick
      of relative size ``a`` is a shear with Lipschitz constant
      :func:`shear_lipschitz` ``(|a| h L)``, and a step is their product;
    * an adaptive method: ``e^{L T}``, Grönwall's bound of the exact flow (the solver's
      local errors are not included: the bound is that of the flow it approximates).

    A split state given to a Runge–Kutta method uses ``L = max(L_q, L_p)`` (the Jacobian
    ``[[0, A], [B, 0]]`` has norm ``max(‖A‖, ‖B‖)``).

    Args:
        method: a name from :func:`solvers.methods`.
        step_size: the step (``None`` for an adaptive method).
        T: the stage's time span.
        lipschitz: ``L``, or ``(L_q, L_p)``.

    Returns:
        The bound (``math.inf`` beyond a float's range), or ``None`` where none is known
        (multistep methods, a stepper without a splitting tableau, a splitting method on a
        single state).
    """
    split = isinstance(lipschitz, tuple)
    lq, lp = lipschitz if split else (lipschitz, lipschitz)
    L = max(lq, lp)
    kind = solvers.methods().get(method)
    try:
        if kind == "adaptive":
            return math.exp(L * T)
        if kind == "symplectic":
            tableau = _splitting_tableau(method)
            if tableau is None or not split:
                return None
            step = 1.0
            for part, a, _ in tableau:
                step *= shear_lipschitz(abs(a) * step_size * (lq if part == "drift" else lp))
            return step ** steps_of(T, step_size)
        step = rk_step_lipschitz(method, step_size * L)
        return None if step is None else step ** steps_of(T, step_size)
    except OverflowError:
        return math.inf


def conv_norm(weight: Tensor, height: int, width: int) -> float:
    """``‖K‖`` bound of a zero-padded "same" convolution ``weight (c_out, c_in, kh, kw)``
    (odd sizes) on ``height × width`` images: ``sqrt`` of :func:`symbol_rho`."""
    with torch.no_grad():
        rho = symbol_rho(weight.detach().to(torch.float64)[None], height, width)
    return math.sqrt(float(rho[0]))


def matrix_norm(weight: Tensor) -> float:
    """The spectral norm ``σ_max`` of ``weight (m, n)`` (a full SVD in float64)."""
    w = weight.detach().to(torch.float64).reshape(weight.shape[0], -1)
    return float(torch.linalg.matrix_norm(w, ord=2))


class BoundedConv2d(nn.Conv2d):
    """A "same" convolution (odd kernel, stride 1, zero padding) whose operator norm is at
    most 1 on inputs of every size.

    The kernel used is ``W / max(1, sqrt(ρ̄))`` with ``ρ̄`` :func:`symbol_rho` of ``W`` at
    the input's own size, a rigorous bound of ``‖W‖²`` (spectral normalization, Miyato et
    al., ICLR 2018, with a rigorous norm). Args as ``nn.Conv2d`` (``padding`` is set).

    ``forward(x)``: ``x (batch, c_in, height, width)`` -> ``(batch, c_out, height, width)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True):
        if kernel_size % 2 != 1:
            raise ValueError(f"BoundedConv2d: kernel_size must be odd, got {kernel_size}")
        super().__init__(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias
        )

    def effective_weight(self, height: int, width: int) -> Tensor:
        """The kernel ``(c_out, c_in, k, k)`` used on ``height × width`` inputs."""
        rho = symbol_rho(self.weight[None], height, width)[0]
        # 1 + 1e-5: the rescaled kernel is rounded to its dtype; the margin keeps ρ̄ <= 1.
        return self.weight * (rho * (1 + 1e-5)).clamp(min=1.0).rsqrt()

    def forward(self, x: Tensor) -> Tensor:
        w = self.effective_weight(x.shape[-2], x.shape[-1])
        return F.conv2d(x, w, self.bias, padding=self.padding)


class MaxMin(nn.Module):
    """The MaxMin activation: channel pairs ``(a, b)`` -> ``(max(a, b), min(a, b))``.

    GroupSort with groups of two (Anil, Lucas & Grosse, "Sorting out Lipschitz function
    approximation", ICML 2019): piecewise a permutation, so 1-Lipschitz and norm
    preserving, where ReLU after a norm-bounded layer discards about half the signal.

    ``forward(x)``: ``x (batch, c, height, width)`` (``c`` even) -> the same shape.
    """

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


class BoundedLinear(nn.Linear):
    """An affine map whose matrix has spectral norm at most 1: ``W / max(1, ‖W‖₂)``.

    ``forward(x)``: ``x (batch, in_features)`` -> ``(batch, out_features)``.
    """

    def effective_weight(self) -> Tensor:
        """The matrix ``(out_features, in_features)`` used."""
        rho = symbol_rho(self.weight[None, :, :, None, None], 1, 1)[0]
        return self.weight * (rho * (1 + 1e-5)).clamp(min=1.0).rsqrt()

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


@dataclass
class LipschitzBound:
    """A rigorous upper bound of a network's ℓ2 Lipschitz constant, layer by layer.

    Attributes:
        total: the product of the layers' bounds (``math.inf`` when a layer has none).
        layers: one dict per layer in the order the input meets them: ``layer`` (its name),
            ``size`` (``"height×width"`` it acts on), ``bound`` (float, or ``None``: no
            finite bound known) and ``note`` (how the bound was obtained, or why there is
            none).

    ``str(bound)`` is a table.
    """

    total: float
    layers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finite(self) -> bool:
        """Whether every layer has a finite bound."""
        return math.isfinite(self.total)

    @property
    def unbounded(self) -> list[str]:
        """The names of the layers without a finite bound, with the reason."""
        return [f"{r['layer']}: {r['note']}" for r in self.layers if r["bound"] is None]

    def __str__(self) -> str:
        rows = [("layer", "size", "bound", "note")]
        for r in self.layers:
            b = "none" if r["bound"] is None else f"{r['bound']:.4g}"
            rows.append((r["layer"], r["size"], b, r["note"]))
        rows.append(("total", "", f"{self.total:.4g}", ""))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3] for row in rows
        ]
        lines.insert(1, "-" * (sum(widths) + 6 + len("note")))
        return "\n".join(lines)


def _bn_gain(bn: nn.BatchNorm2d) -> Tensor:
    if bn.training or bn.running_var is None:
        raise ValueError(
            "lipschitz_bound: a BatchNorm in training mode (or without running statistics) "
            "depends on the batch; call net.eval() first"
        )
    g = torch.ones_like(bn.running_var) if bn.weight is None else bn.weight.detach()
    return (g.to(torch.float64) / (bn.running_var.to(torch.float64) + bn.eps).sqrt()).abs()


def _conv_weight(conv: nn.Conv2d, height: int, width: int) -> Tensor:
    odd = all(k % 2 == 1 for k in conv.kernel_size)
    same = tuple(conv.padding) == tuple(k // 2 for k in conv.kernel_size)
    plain = conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
    if not (odd and same and plain and conv.padding_mode == "zeros"):
        raise ValueError(
            f"lipschitz_bound: only zero-padded 'same' convolutions with odd kernels, stride "
            f"1, no dilation or groups are bounded; got {conv}"
        )
    if isinstance(conv, BoundedConv2d):
        return conv.effective_weight(height, width).detach()
    return conv.weight.detach()


def _sequential_rows(seq: nn.Module, name: str, height: int, width: int) -> list[dict[str, Any]]:
    """Rows of an opening or connector: a convolution, optionally a BatchNorm (merged into
    the convolution: the affine map ``x -> γ (K x - μ)/σ + β`` has the norm of the kernel
    scaled per output channel by ``γ/σ``, a tighter bound than the product), a ReLU."""
    mods = list(seq) if isinstance(seq, nn.Sequential) else [seq]
    rows, size = [], f"{height}×{width}"
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Conv2d):
            w = _conv_weight(m, height, width).to(torch.float64)
            note = f"conv {m.kernel_size[0]}×{m.kernel_size[1]}, Fourier symbol"
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            if isinstance(nxt, nn.BatchNorm2d):
                gain = _bn_gain(nxt)
                w = w * gain.view(-1, 1, 1, 1)
                note += (
                    f" of the kernel merged with eval BatchNorm (max gain {float(gain.max()):.3g})"
                )
                i += 1
            rows.append(
                {
                    "layer": f"{name}.conv",
                    "size": size,
                    "bound": conv_norm(w, height, width),
                    "note": note,
                }
            )
        elif isinstance(m, nn.BatchNorm2d):
            gain = float(_bn_gain(m).max())
            rows.append(
                {
                    "layer": f"{name}.bn",
                    "size": size,
                    "bound": gain,
                    "note": "eval BatchNorm, max|γ|/sqrt(var + ε)",
                }
            )
        elif isinstance(m, (nn.ReLU, nn.Identity, MaxMin)):
            rows.append(
                {
                    "layer": f"{name}.{type(m).__name__.lower()}",
                    "size": size,
                    "bound": 1.0,
                    "note": "1-Lipschitz",
                }
            )
        else:
            raise ValueError(f"lipschitz_bound: no bound for {name} layer {type(m).__name__}")
        i += 1
    return rows


def _stage_row(stage, k: int, height: int, width: int) -> dict[str, Any]:
    rhs = stage.rhs
    method, h = stage.method, stage.step_size
    value = rhs.lipschitz(height, width, method, h)
    where = f"{method}" + ("" if h is None else f", h = {h:g}")
    who = type(rhs).__name__
    if value is None:
        note = f"{who} declares no Lipschitz bound under {where}"
    elif float(value) == math.inf:
        value, note = None, f"{who}, {where}: the bound exceeds a float's range"
    else:
        value = float(value)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(
                f"lipschitz_bound: {who}.lipschitz returned {value!r}; return a "
                "non-negative float (math.inf or None: no finite bound)"
            )
        note = f"{who}, {where}"
        if stage.kind == "adaptive":
            note += ": a bound of the exact flow (the solver's local errors are not in it)"
        if any("scale" in w.names for w in rhs.thetas()):
            note += (
                "; the TV normalization's gain max|scale|/sqrt(ε) is in it (finite but "
                "vacuous: use normalization='bias')"
            )
    return {"layer": f"stage{k}", "size": f"{height}×{width}", "bound": value, "note": note}


def lipschitz_bound(net: nn.Module, input_shape: tuple[int, ...]) -> LipschitzBound:
    """A rigorous upper bound of the ℓ2 Lipschitz constant of ``net`` (in eval mode) as a
    function of its input, with each layer's factor: logits per unit of the network's
    input (the data path's normalized units; :mod:`experiments` converts to pixels).

    The network is the composition opening → (stage → connector → pooling) per unit →
    classifier (:class:`~neuralpde.PDECNN`), so its constant is at most the product of:

    * a convolution: ``sqrt`` of :func:`~neuralpde.stability.symbol_rho` at the size it
      acts on (the largest singular value of the kernel's Fourier symbol on the torus that
      holds the zero padding; Sedghi, Gupta & Long, ICLR 2019). A BatchNorm after it, in
      eval mode, is the affine map ``γ (x - μ)/sqrt(var + ε) + β`` and is merged into the
      kernel; alone it has gain ``max|γ|/sqrt(var + ε)``.
    * ReLU and MaxMin: 1. 2×2 average pooling: 1/2 (each output averages four disjoint
      inputs).
      Global mean pooling over ``h × w``: ``1/sqrt(h w)`` (Cauchy–Schwarz).
    * the classifier: its matrix's spectral norm.
    * each stage: :meth:`neuralpde.RHS.lipschitz` of its dynamics under its current
      solver; for the paper's dynamics, see there (a forward-Euler step of the parabolic
      dynamics with an elementwise bias and ``h ρ(KᵀK) <= 2`` is non-expansive, Baillon &
      Haddad 1977, and so is the parabolic flow; adaptive rows bound the exact flow).

    Args:
        net: a :class:`~neuralpde.PDECNN` (any arch; eval mode when it has BatchNorm).
        input_shape: ``(channels, height, width)`` or ``(batch, channels, height, width)``.

    Returns:
        A :class:`LipschitzBound`; ``total`` is ``math.inf`` when some stage has no finite
        bound, and :attr:`LipschitzBound.unbounded` names it.

    Raises:
        TypeError: ``net`` is not a :class:`~neuralpde.PDECNN`.
        ValueError: a malformed ``input_shape`` (or one with other channels, or a size the
            network's pooling cannot take), a BatchNorm in training mode, a layer
            this function has no bound for, a dynamics returning a negative or non-finite
            value.
    """
    from ._network import PDECNN

    if not isinstance(net, PDECNN):
        raise TypeError(f"lipschitz_bound: expected a PDECNN, got {type(net).__name__}")
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) not in (3, 4) or min(shape) < 1:
        raise ValueError(
            "lipschitz_bound: input_shape must be (channels, height, width) or (batch, "
            f"channels, height, width), got {input_shape!r}"
        )
    height, width = shape[-2:]
    if shape[-3] != net.in_channels:
        raise ValueError(
            f"lipschitz_bound: input_shape has {shape[-3]} channels, the network takes "
            f"{net.in_channels}; pass (channels, height, width) of its input"
        )
    factor = 2 ** (len(net.stages) - 1)
    if height % factor or width % factor:
        raise ValueError(
            f"lipschitz_bound: the network pools 2×2 after each of its first "
            f"{len(net.stages) - 1} stages, so height and width must be divisible by "
            f"{factor}, got {height}×{width}"
        )
    rows = _sequential_rows(net.opening, "opening", height, width)
    last = len(net.stages) - 1
    for k, (stage, connector) in enumerate(zip(net.stages, net.connectors)):
        rows.append(_stage_row(stage, k, height, width))
        rows += _sequential_rows(connector, f"connector{k}", height, width)
        if k == last:
            rows.append(
                {
                    "layer": "global mean pool",
                    "size": f"{height}×{width}",
                    "bound": 1.0 / math.sqrt(height * width),
                    "note": "1/sqrt(h·w)",
                }
            )
        else:
            rows.append(
                {
                    "layer": f"pool{k}",
                    "size": f"{height}×{width}",
                    "bound": 0.5,
                    "note": "2×2 average pooling",
                }
            )
            height, width = height // 2, width // 2
    cls = net.classifier
    w = cls.effective_weight().detach() if isinstance(cls, BoundedLinear) else cls.weight.detach()
    rows.append(
        {"layer": "classifier", "size": "", "bound": matrix_norm(w), "note": "spectral norm"}
    )
    total = 1.0
    for r in rows:
        total = math.inf if r["bound"] is None else total * r["bound"]
    return LipschitzBound(total, rows)


def _checked_bound(bound: LipschitzBound | float, x: Tensor) -> float:
    """``L`` of a bound given to :func:`certify`, refused where it cannot be one of ``x``'s."""
    fix = "pass bound=lipschitz_bound(net, x.shape), or leave it out"
    if isinstance(bound, LipschitzBound):
        size = f"{x.shape[-2]}×{x.shape[-1]}"
        if bound.layers and bound.layers[0]["size"] != size:
            raise ValueError(
                f"certify: the bound was computed for {bound.layers[0]['size']} inputs, x is "
                f"{size} (a convolution's norm depends on the size); {fix}"
            )
        return bound.total
    if isinstance(bound, bool) or not isinstance(bound, (int, float)):
        raise ValueError(f"certify: bound must be a LipschitzBound or a float, got {bound!r}")
    if not bound >= 0:  # also NaN
        raise ValueError(f"certify: bound must be >= 0 (math.inf: none), got {bound!r}; {fix}")
    return float(bound)


def certify(
    net: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    *,
    bound: LipschitzBound | float | None = None,
) -> Tensor:
    """Certified ℓ2 radii: no perturbation of ``x[i]`` of norm below ``radius[i]`` changes
    the predicted class.

    With ``L`` a Lipschitz bound of the logits (:func:`lipschitz_bound`) and ``m`` the lead
    of the top logit over the runner-up, the radius is ``m / (sqrt(2) L)`` (Tsuzuku, Sato &
    Sugiyama, "Lipschitz-Margin Training", NeurIPS 2018, Prop. 1: ``f_i - f_j`` is
    ``sqrt(2) L``-Lipschitz).

    Args:
        net: a :class:`~neuralpde.PDECNN`; evaluated in eval mode (restored afterwards).
        x: ``(batch, channels, height, width)``, the network's input units.
        y: ``(batch,)`` labels, optional: the radius is 0 where the prediction is wrong.
        bound: a :class:`LipschitzBound` or a float ``L >= 0`` already computed for this
            input size (default: :func:`lipschitz_bound` of ``net`` at ``x``'s shape).

    Returns:
        ``(batch,)`` float64 radii in the units of ``x``: 0 everywhere when the bound is
        infinite, ``inf`` where ``L = 0`` (a constant network).

    Raises:
        ValueError: ``x`` not 4-d, ``y`` not a tensor of ``x``'s length, a ``bound`` that is
            negative, NaN, not a number, or computed for another image size; what
            :func:`lipschitz_bound` raises.
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(
            f"certify: x must be (batch, channels, height, width), got {getattr(x, 'shape', x)!r}"
        )
    if y is not None and (not isinstance(y, Tensor) or y.dim() != 1 or len(y) != len(x)):
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"certify: y must be a ({len(x)},) tensor of labels, got {got}")
    L = _checked_bound(bound, x) if bound is not None else None
    was = net.training
    net.eval()
    try:
        if L is None:
            L = lipschitz_bound(net, tuple(x.shape)).total
        with torch.no_grad():
            logits = net(x)
    finally:
        net.train(was)
    top2 = logits.topk(2, dim=1)
    margin = (top2.values[:, 0] - top2.values[:, 1]).to(torch.float64)
    if not math.isfinite(L):
        radius = torch.zeros_like(margin)
    elif L == 0:
        radius = torch.full_like(margin, math.inf)  # a constant network: nothing moves it
    else:
        radius = margin / (math.sqrt(2.0) * L)
    if y is not None:
        radius = torch.where(
            top2.indices[:, 0] == y.to(top2.indices.device), radius, torch.zeros_like(radius)
        )
    return radius
