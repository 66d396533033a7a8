"""Time-dependent weights θ(t): one object that answers "the weights at time t"."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

INTERPOLATIONS = ("constant", "linear")


def _per_time_slice(fn):
    """``fn`` of ``Module._apply``, applied to a stack of conv kernels as 4-d kernels.

    ``module.to(memory_format=torch.channels_last)`` converts every 4-d and 5-d tensor, and
    a 5-d one with channels_last raises "required rank 4 tensor". A parameter
    ``(n, c_out, c_in, kh, kw)`` is ``n`` kernels of a 2-d convolution: converting it as
    ``(n·c_out, c_in, kh, kw)`` gives each θ_j the layout a 2-d convolution wants and keeps
    the public shape. Values are untouched; dtype and device conversions are unaffected.
    """

    def apply(t):
        if t.dim() != 5:
            return fn(t)
        out = fn(t.flatten(0, 1)).unflatten(0, t.shape[:2])
        same = (
            out.data_ptr() == t.data_ptr()
            and out.stride() == t.stride()
            and out.dtype == t.dtype
            and out.device == t.device
        )
        # Nothing changed: hand back the tensor itself, not a view of it (as fn would).
        return t if same else out

    return apply


class TimeWeights(nn.Module):
    """Parameters that vary in time, stored with a leading time axis.

    ``interpolation="constant"``: ``n`` parameter sets on the cells ``[t_j, t_{j+1})`` of a
    uniform grid ``t_j = j h`` over ``[0, T]``, ``h = T / n`` — the paper's ResNet-like layers.
    Cells are right-open (θ_j on [t_j, t_{j+1})) and ``T`` itself belongs to the last cell.

    ``interpolation="linear"``: ``n >= 2`` knots at ``t_k = k T / (n - 1)``, linearly
    interpolated in between and held constant outside ``[0, T]``: θ(t) is continuous, which
    is what adaptive solvers want.

    The lookup uses ``torch.searchsorted`` and tensor arithmetic only: no host–device sync and
    no Python branch on ``t``, so it runs under adaptive solvers, ``torch.compile`` and CUDA
    graphs.

    Args:
        params: ``{name: tensor (n, *shape)}`` initial values; each becomes a parameter
            ``self.<name>`` of shape ``(n, *shape)``.
        T: the final time.
        interpolation: ``"constant"`` or ``"linear"``.

    Call ``weights(t)`` with a 0-d tensor ``t`` to get ``{name: tensor (*shape)}``.
    """

    def __init__(self, params: dict[str, Tensor], T: float, interpolation: str = "constant"):
        super().__init__()
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}"
            )
        if not isinstance(params, dict) or not params:
            raise TypeError(
                "TimeWeights: params must be a non-empty dict {name: tensor (n, *shape)}, "
                f"got {params!r}"
            )
        for name, value in params.items():
            if not isinstance(value, torch.Tensor) or value.dim() < 1:
                raise TypeError(
                    f"TimeWeights: params[{name!r}] must be a tensor with a leading time axis "
                    f"(n, *shape), got {type(value).__name__}"
                )
        sizes = {v.shape[0] for v in params.values()}
        if len(sizes) != 1:
            raise ValueError(f"all parameters need the same number of time knots, got {sizes}")
        n = sizes.pop()
        if n < 1 or (interpolation == "linear" and n < 2):
            raise ValueError(f"{interpolation!r} interpolation needs more knots, got {n}")
        if not T > 0:
            raise ValueError(f"T must be positive, got {T}")
        self.names = tuple(params)
        self.interpolation = interpolation
        self.T = float(T)
        self.n = n
        for name, value in params.items():
            setattr(self, name, nn.Parameter(value))
        if interpolation == "constant":
            knots = torch.arange(n, dtype=torch.float64) * (self.T / n)
        else:
            knots = torch.linspace(0.0, self.T, n, dtype=torch.float64)
        self.register_buffer("knots", knots, persistent=False)
        # A (1, n) row, so that the one-hot lookup below is a plain mm (no unsqueeze/squeeze).
        self.register_buffer("cells", torch.arange(n).reshape(1, n), persistent=False)

    def _apply(self, fn, *args, **kwargs):
        # Knot times stay float64 whatever dtype the parameters take: in float32 a knot
        # such as 2/3·T would move by an ulp and θ(t) near it would change cell.
        out = super()._apply(_per_time_slice(fn), *args, **kwargs)
        self.knots = self.knots.to(torch.float64)
        return out

    def jump_times(self) -> list[float]:
        """Times where θ(t) is discontinuous (interior cell boundaries; none if linear)."""
        if self.interpolation == "linear":
            return []
        return [j * self.T / self.n for j in range(1, self.n)]

    def index(self, t: Tensor) -> Tensor:
        """``(1,)`` long tensor: the cell (constant) or left knot (linear) holding ``t``."""
        t, knots = self._common(t)
        i = torch.searchsorted(knots, t, right=True) - 1
        hi = self.n - 1 if self.interpolation == "constant" else self.n - 2
        return i.clamp(0, hi)

    def _common(self, t: Tensor) -> tuple[Tensor, Tensor]:
        # Compare in the finer of the two dtypes: a solver's "just before the jump" time
        # (torchdiffeq's perturb) must not round onto the jump.
        t = torch.as_tensor(t, device=self.knots.device)
        dtype = torch.promote_types(t.dtype, self.knots.dtype)
        return t.to(dtype).reshape(1), self.knots.to(dtype)

    def forward(self, t: Tensor) -> dict[str, Tensor]:
        """The weights at time ``t`` (0-d tensor): ``{name: (*shape)}``."""
        i = self.index(t)
        params = {name: getattr(self, name) for name in self.names}
        if self.interpolation == "constant":
            # θ_i as a one-hot row times the stacked sets (exact: 1·θ_i + 0·θ_k). Its
            # backward is a small dense outer product, where index_select's backward is a
            # scatter into all n sets that costs as much as a convolution of the stage.
            hot = self.cells == i
            return {
                name: torch.mm(hot.to(p.dtype), p.reshape(self.n, -1)).reshape(p.shape[1:])
                for name, p in params.items()
            }
        tt, knots = self._common(t)
        k0, k1 = knots.index_select(0, i), knots.index_select(0, i + 1)
        w = ((tt - k0) / (k1 - k0)).clamp(0.0, 1.0)
        out = {}
        for name, p in params.items():
            a, b = p.index_select(0, i)[0], p.index_select(0, i + 1)[0]
            wp = w.to(p.dtype).reshape((1,) * a.dim())
            out[name] = a + wp * (b - a)
        return out

    def refine(self, factor: int) -> TimeWeights:
        """Prolongate θ(t) onto a grid with ``factor`` times the parameter sets, in place.

        Multilevel training in time (Haber, Ruthotto & Holtham, "Learning across scales",
        AAAI 2018; Chang et al., "Multi-level residual networks from dynamical systems
        view", ICLR 2018): train on a coarse grid, prolongate, continue on the fine one.

        ``"linear"``: ``n`` knots become ``factor·(n − 1) + 1`` knots on the same
        ``[0, T]``; θ(t) is piecewise linear, so the new knots lie on it and the function is
        unchanged (to round-off). ``"constant"``: each cell ``[t_j, t_{j+1})`` splits into
        ``factor`` cells whose values are the linear interpolation, at the new cell
        midpoints, of the old values at the old cell midpoints (held constant beyond the
        first and last midpoint) — the multigrid prolongation of cell-centred values.
        θ(t) then moves by at most ``|θ_{j+1} − θ_j| / 2`` near a jump and is smoother
        (copying each cell would keep θ(t) exactly, and its jumps too), so the network's
        output changes by that much; a θ that is constant in time is kept exactly (bit for
        bit).

        The parameters are replaced by new ``nn.Parameter`` objects of shape
        ``(n·factor, *shape)`` (``(factor·(n − 1) + 1, *shape)`` for linear) on the same
        device and dtype, with the same ``requires_grad``: rebuild the optimizer after.

        Args:
            factor: an int ``>= 1``.

        Returns:
            ``self``.

        Raises:
            ValueError: ``factor`` is not a positive int.
        """
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"TimeWeights.refine: factor must be a positive int, got {factor!r}")
        n = self.n
        if self.interpolation == "linear":
            new_n = factor * (n - 1) + 1
            # Knot i of the fine grid lies at fraction (i % factor)/factor of old interval i // factor.
            pos = torch.arange(new_n, dtype=torch.float64) / factor
        else:
            new_n = n * factor
            # Fine cell midpoints in units of the coarse cell width, measured from the
            # first coarse midpoint; clamped, so values beyond the end midpoints are held.
            pos = ((torch.arange(new_n, dtype=torch.float64) + 0.5) / factor - 0.5).clamp(0, n - 1)
        lo = pos.floor().long().clamp(max=n - 1)
        hi = (lo + 1).clamp(max=n - 1)
        w = pos - lo.to(torch.float64)
        device = self.knots.device
        lo, hi = lo.to(device), hi.to(device)
        with torch.no_grad():
            for name in self.names:
                # A parametrized θ (neuralpde.stability.constrain) prolongates its raw values;
                # the parametrization applies to the new ones as it did to the old.
                owner = (
                    self.parametrizations[name] if parametrize.is_parametrized(self, name) else self
                )
                key = "original" if owner is not self else name
                old = getattr(owner, key)
                a, b = old.index_select(0, lo), old.index_select(0, hi)
                wp = w.to(device=device, dtype=old.dtype).reshape(-1, *([1] * (old.dim() - 1)))
                # a + w·(b − a): exact where b == a, so a constant θ stays bit for bit.
                value = a + wp * (b - a)
                setattr(owner, key, nn.Parameter(value, requires_grad=old.requires_grad))
        self.n = new_n
        if self.interpolation == "constant":
            knots = torch.arange(new_n, dtype=torch.float64) * (self.T / new_n)
        else:
            knots = torch.linspace(0.0, self.T, new_n, dtype=torch.float64)
        self.knots = knots.to(device)
        self.cells = torch.arange(new_n, device=device).reshape(1, new_n)
        return self

    def extra_repr(self) -> str:
        return f"n={self.n}, T={self.T}, interpolation={self.interpolation!r}"
