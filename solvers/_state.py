"""Checks of states and of what a right-hand side returns: each rule in one place."""

from __future__ import annotations

import contextvars
import dis
import functools
import weakref
from collections.abc import Iterator
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
        if y.is_complex():
            # The step-size controllers, error norms and steppers are written for real
            # states; a complex one is two real ones.
            raise TypeError(
                f"{name} is complex ({y.dtype}); integrate its real and imaginary parts as "
                "a real state: torch.view_as_real(y0), with func converting back and forth "
                "(torch.view_as_complex)"
            )
        if not y.is_floating_point():
            raise TypeError(f"{name} must be floating point, got dtype {y.dtype}")
        # Under a torch.func transform the state cannot be read back (no sync): unchecked.
        if check_finite and not torch.compiler.is_compiling() and not in_transform():
            if all_finite(y):
                continue
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
        if f.shape != s.shape or (f.dtype != s.dtype and not autocast_dtype(f, s)):
            raise ValueError(
                f"{method}: {where} returned shape {tuple(f.shape)} and dtype {f.dtype} for a "
                f"state of shape {tuple(s.shape)} and dtype {s.dtype}; the derivative must "
                "have the state's shape and dtype (under torch.autocast, autocast's dtype "
                "is also accepted)"
            )


def autocast_dtype(f: Tensor, s: Tensor) -> bool:
    """Whether a derivative ``f`` of another dtype than its state ``s`` is autocast's doing.

    Under ``torch.autocast`` a right-hand side returns the dtype its last operation ran in
    (bfloat16, float16, or float32 for the operations autocast keeps wide) while the state
    keeps its own: the solver's update ``y + h f`` promotes back to the state's dtype, as
    torchdiffeq does.
    """
    device = s.device.type
    return (
        f.is_floating_point()
        and torch.amp.is_autocast_available(device)
        and torch.is_autocast_enabled(device)
    )


def autocast_state(device: torch.device) -> tuple[str, torch.dtype] | None:
    """``(device_type, dtype)`` of the autocast region active for ``device``, else None.

    A hand-written backward records it in the forward and runs its recomputation under
    it, so that the recomputed operations take the forward's dtypes (the backward is
    called outside the region, as in PyTorch's AMP recipe).
    """
    device_type = device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return device_type, torch.get_autocast_dtype(device_type)
    return None


def in_transform() -> bool:
    """Whether a ``torch.func`` transform (``vmap``, ``grad``, ``jvp``, ...) is active.

    Inside one a tensor cannot be read back to the host (no ``.item()``/``bool``), and a
    custom autograd Function without ``setup_context`` is refused by PyTorch.
    """
    if torch.compiler.is_compiling():
        return False
    return torch._C._are_functorch_transforms_active()


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


def reachable(funcs: Any) -> Iterator[tuple[str, str, Any]]:
    """What each of ``funcs`` visibly holds, as ``(name, where, value)`` for a message
    (``where`` is ``""`` for the module a function is or is a method of): that module,
    the values in its closure, a ``functools.partial``'s arguments, and the globals its
    code names (``lambda t, y: net(y)``).

    What a function computes inside a call, or reaches through another function, cannot
    be seen. One walk for every check of what a right-hand side depends on.
    """
    for f in funcs:
        for m in _modules_of(f):
            yield type(m).__name__, "", m
        qualname = getattr(f, "__qualname__", "func")
        code = getattr(f, "__code__", None)
        for name, cell in zip(
            getattr(code, "co_freevars", ()), getattr(f, "__closure__", None) or ()
        ):
            try:
                v = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            yield name, f"in the closure of {qualname}", v
        if isinstance(f, functools.partial):
            for i, v in enumerate(f.args):
                yield f"argument {i}", "of the partial", v
            for k, v in f.keywords.items():
                yield f"argument {k}", "of the partial", v
        scope = getattr(f, "__globals__", {})
        for name in _globals_read(code) if code is not None else ():
            if name in scope:
                yield name, f"read by {qualname} as a global", scope[name]


@functools.lru_cache(maxsize=256)
def _globals_read(code: Any) -> tuple[str, ...]:
    # Not co_names, which holds attribute names too: `self.k` would find a global `k`.
    return tuple(
        i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")
    )


def uncovered_tensors(funcs: Any, params: Any) -> list[str]:
    """Names of tensors that require grad, are reachable from ``funcs`` (:func:`reachable`;
    a module's submodules and buffers included) and are not in ``params``: their gradient
    would be lost silently. The parameters of the modules ``funcs`` are or are methods of
    are not looked at (giving a subset of them as ``params`` freezes the rest, as in
    torchdiffeq); those of a module a function holds in a closure or names as a global
    (``lambda t, q: -net(q)``) are, as is an ``nn.Parameter`` held anywhere."""
    from torch import nn

    covered = {id(p) for p in params} if params is not None else set()
    found: list[str] = []
    seen: set[int] = set()

    def note(name: str, where: str, v: Any) -> None:
        if isinstance(v, Tensor) and v.requires_grad and id(v) not in covered:
            if id(v) not in seen:
                seen.add(id(v))
                found.append(f"{name} ({where})" if where else name)

    own = {id(m) for f in funcs for m in _modules_of(f)}
    for name, where, v in reachable(funcs):
        if not isinstance(v, nn.Module):
            note(name, where, v)
            continue
        for prefix, sub in v.named_modules():
            inner = f"{name}{'.' + prefix if prefix else ''}"
            for k, w in vars(sub).items():
                note(f"{inner}.{k}", where, w)
            for k, w in sub._buffers.items():
                note(f"{inner}.{k}", where, w)
            if id(v) not in own:
                for k, w in sub._parameters.items():
                    note(f"{inner}.{k}", where, w)
    return found


class SharedOutput(Exception):
    """The right-hand side returned the storage of a result it returned before and that is
    still held: it writes each result into one buffer it reuses. A method keeps earlier
    evaluations (stage derivatives, the last stage of a step for the next one), which the
    next call would overwrite; the solve runs again with every evaluation copied."""


_SHARED_WITH_GRAD = (
    "func returned the storage of an earlier result (it writes each result into one "
    "buffer it reuses) while its results carry gradients: the evaluations the solver saved "
    "for the backward pass were overwritten in place. Return a new tensor from every call "
    "(no out= buffer, no copy_ into a kept tensor); without gradients a buffer is allowed"
)
# True while a solve copies every evaluation of its right-hand side (after SharedOutput).
FRESH_OUTPUTS: contextvars.ContextVar[bool] = contextvars.ContextVar("fresh", default=False)


class OutputGuard:
    """One solve's check that ``func`` returns new storage on every call.

    ``guard(f)`` returns ``f``; it raises :class:`SharedOutput` when ``f`` has the data
    pointer of one of the last 16 results that is still alive (held by the solver as a
    stage derivative, or by ``func`` as its buffer; a result nobody holds is never read
    again, and its memory may rightly be reused). 16 covers every stage of the methods
    (dopri8 has 13), so a ``func`` cycling through several buffers is found too. Under
    :data:`FRESH_OUTPUTS` it returns a copy instead. Unchecked under ``torch.compile`` and
    ``torch.func`` transforms, where a data pointer cannot be read. Tuple states need none:
    every path concatenates their parts into a new tensor.
    """

    __slots__ = ("fresh", "check", "recent")

    def __init__(self) -> None:
        # Under torch.compile nothing is read: a graph cannot hold a context variable.
        compiling = torch.compiler.is_compiling()
        self.fresh = not compiling and FRESH_OUTPUTS.get()
        self.check = not compiling and not in_transform()
        self.recent: list[tuple[weakref.ref, int]] = []

    def __call__(self, f: Any) -> Any:
        if not isinstance(f, Tensor):
            return f
        if self.fresh:
            return f.clone()
        if self.check and f.layout == torch.strided:
            ptr = f.data_ptr()
            if ptr:
                for ref, held in self.recent:
                    if held == ptr and ref() is not None:
                        if f.requires_grad:
                            # What the solver saved for backward was overwritten in place,
                            # and the buffer's history still reaches it: no solve again
                            # can give a gradient.
                            raise ValueError(_SHARED_WITH_GRAD)
                        raise SharedOutput
                self.recent.append((weakref.ref(f), ptr))
                if len(self.recent) > 16:
                    del self.recent[0]
        return f
