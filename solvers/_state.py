"""Checks of states and of what a right-hand side returns: each rule in one place."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._errors import NonFiniteError


def parts(y: Any) -> tuple[Tensor, ...]:
    return y if isinstance(y, tuple) else (y,)


def check_state(y0: Any, check_finite: bool, name: str = "y0") -> None:
    """A tensor or a tuple of floating-point tensors; finite when ``check_finite``."""
    if isinstance(y0, tuple) and not y0:
        raise ValueError(f"{name} is an empty tuple; give at least one tensor")
    for i, y in enumerate(parts(y0)):
        if not isinstance(y, Tensor):
            raise TypeError(
                f"{name} must be a tensor or a tuple of tensors, got {type(y).__name__}"
            )
        if not y.is_floating_point():
            raise TypeError(f"{name} must be floating point, got dtype {y.dtype}")
        if check_finite and not torch.compiler.is_compiling() and not all_finite(y):
            where = f"{name}[{i}]" if isinstance(y0, tuple) else name
            # A numerical fault upstream (the previous layer), not a malformed call: the
            # same error type as a NaN met during the steps, so callers catch one thing.
            raise NonFiniteError(f"{where} contains NaN or Inf before the first step", t=None)


def check_derivative(out: Any, y: Any, method: str, name: str = "func") -> None:
    """What a right-hand side returned on its first evaluation must match the state.

    Called once per solve by every evaluation wrapper (static shapes and dtypes only: a
    Python comparison, free and invisible to ``torch.compile``).
    """
    if isinstance(y, tuple) != isinstance(out, tuple) or (
        isinstance(y, tuple) and len(y) != len(out)
    ):
        want = f"a tuple of {len(y)} tensors" if isinstance(y, tuple) else "one tensor"
        got = f"a tuple of {len(out)}" if isinstance(out, tuple) else type(out).__name__
        raise TypeError(f"{method}: {name}(t, y) must return {want} like the state, got {got}")
    for i, (f, s) in enumerate(zip(parts(out), parts(y))):
        where = f"{name}(t, y)[{i}]" if isinstance(y, tuple) else f"{name}(t, y)"
        if not isinstance(f, Tensor):
            raise TypeError(f"{method}: {where} must return a tensor, got {type(f).__name__}")
        if f.shape != s.shape or f.dtype != s.dtype:
            raise ValueError(
                f"{method}: {where} returned shape {tuple(f.shape)} and dtype {f.dtype} for a "
                f"state of shape {tuple(s.shape)} and dtype {s.dtype}; the derivative must "
                "have the state's shape and dtype"
            )


def all_finite(x: Tensor) -> bool:
    """Whether every entry of ``x`` is finite (one sync).

    A sum is one cheap reduction, where ``isfinite(x).all()`` makes several passes and a
    bool tensor as large as ``x`` (on a network stage it cost a third of a training step).
    The sum is finite whenever every entry is; when it is not, an overflow of finite
    entries is told apart by the exact test.
    """
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def first_bad(sol: Any, final_only: bool = False) -> int | None:
    """Index of the first output time whose state is not finite (one sync), or None.

    With ``final_only`` ``sol`` is the last state alone, and a bad one gives index -1.
    """
    ps = parts(sol)
    if all(all_finite(s) for s in ps):
        return None
    if final_only:
        return -1
    ok = torch.stack([torch.isfinite(s.reshape(s.shape[0], -1)).all(1) for s in ps]).all(0)
    if bool(ok.all()):
        return None
    return int((~ok).nonzero()[0, 0])


def _modules_of(f: Any) -> list[Any]:
    from torch import nn

    out = []
    for m in (f, getattr(f, "__self__", None), getattr(f, "func", None)):
        if isinstance(m, nn.Module):
            out.append(m)
    return out


def uncovered_tensors(funcs: Any, params: Any) -> list[str]:
    """Names of tensors that require grad, are reachable from ``funcs`` and are not in
    ``params`` (nor parameters of their modules): their gradient would be lost silently.

    Reachable: tensor attributes and buffers of the modules ``funcs`` are or belong to
    (submodules included), and tensors in the closures of plain functions. A tensor a
    function computes inside a call, or reaches through a global, cannot be seen.
    """
    from torch import nn

    covered = {id(p) for p in params} if params is not None else set()
    found: list[str] = []
    seen: set[int] = set()

    def note(name: str, v: Any) -> None:
        if isinstance(v, Tensor) and v.requires_grad and id(v) not in covered:
            if id(v) not in seen and not isinstance(v, nn.Parameter):
                seen.add(id(v))
                found.append(name)

    for f in funcs:
        for m in _modules_of(f):
            for prefix, sub in m.named_modules():
                where = f"{type(m).__name__}{'.' + prefix if prefix else ''}"
                for k, v in vars(sub).items():
                    note(f"{where}.{k}", v)
                for k, v in sub._buffers.items():
                    note(f"{where}.{k}", v)
        code = getattr(f, "__code__", None)
        for name, cell in zip(
            getattr(code, "co_freevars", ()), getattr(f, "__closure__", None) or ()
        ):
            try:
                v = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            note(f"{getattr(f, '__qualname__', 'func')} closes over {name}", v)
            for m in _modules_of(v):
                for k, w in vars(m).items():
                    note(f"{name}.{k}", w)
        for i, v in enumerate(getattr(f, "args", ()) if hasattr(f, "func") else ()):
            note(f"partial argument {i}", v)
    return found
