"""The tensors a forward pass used, for a backward pass that recomputes it.

Reversible and adjoint memory call the right-hand side again in the backward pass. The
module then holds whatever parameters it holds at backward time: under
``torch.func.functional_call`` (MAML's adapted weights) the forward ran on other tensors
than the module's own, and after ``refine()`` the module holds new parameters of another
shape. :class:`Pinned` records the tensors of the forward and puts them back for the
recomputation; a module whose tensors changed shape cannot be recomputed and is a named
error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from torch import Tensor, nn
from torch.nn.utils.stateless import _reparametrize_module


def owners(funcs: Sequence) -> list[nn.Module]:
    """The modules ``funcs`` are or are bound methods of (each once, outermost first)."""
    out: list[nn.Module] = []
    for f in funcs:
        m = f if isinstance(f, nn.Module) else getattr(f, "__self__", None)
        if isinstance(m, nn.Module) and all(m is not o for o in out):
            out.append(m)
    # A module inside another is pinned with it.
    return [m for m in out if not any(o is not m and _contains(o, m) for o in out)]


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(sub is inner for sub in outer.modules())


def _tensors(module: nn.Module) -> dict[str, Tensor]:
    out = dict(module.named_parameters(remove_duplicate=False))
    out.update(module.named_buffers(remove_duplicate=False))
    return out


class Pinned:
    """The parameters and buffers of ``modules`` as they are now (at the forward pass)."""

    def __init__(self, modules: Sequence[nn.Module], memory: str):
        self.memory = memory
        self.entries = [(m, _tensors(m)) for m in modules]

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        """The forward's tensors back in their modules for the duration (nothing to do when
        they are still there).

        Raises:
            RuntimeError: a module's tensors changed name or shape since the forward pass.
        """
        with contextlib.ExitStack() as stack:
            for module, saved in self.entries:
                now = _tensors(module)
                changed = {k: v for k, v in saved.items() if now.get(k) is not v}
                if not changed and len(now) == len(saved):
                    continue
                if now.keys() != saved.keys() or any(
                    now[k].shape != v.shape for k, v in changed.items()
                ):
                    raise RuntimeError(
                        f"memory={self.memory!r}: the parameters of {type(module).__name__} "
                        "changed shape between the forward and the backward pass (refine(), "
                        "or new parameters assigned); the backward recomputes the forward "
                        "and cannot. Call backward before refine(), or use "
                        "memory='autograd'"
                    )
                stack.enter_context(_reparametrize_module(module, changed))
            yield
