"""Test-wide settings.

One intra-op thread: the tensors here are small, where a second OpenMP thread buys nothing,
and tests that start subprocesses (tutorials, the CLI, two gloo ranks) would otherwise
oversubscribe the cores; busy-waiting OpenMP threads on an oversubscribed machine make small
convolutions tens of times slower. Set before torch is imported by any test module, and in
the environment so that subprocesses inherit it. The cores are used by pytest-xdist's
worker processes instead (pyproject.toml's addopts: one per core, at most four).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402

import neuralpde  # noqa: E402


@pytest.fixture
def float64():
    """Run a test with float64 as the default dtype, restoring the previous one after.

    Test modules opt in with ``pytestmark = pytest.mark.usefixtures("float64")``; setting
    the default at import time instead would leak into every module collected later.
    """
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def graph_ops():
    """``graph_ops(x)``: the names of every autograd node behind tensor ``x``."""

    def walk(x):
        seen, todo, names = set(), [x.grad_fn], set()
        while todo:
            fn = todo.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            names.add(type(fn).__name__)
            todo.extend(f for f, _ in fn.next_functions)
        return names

    return walk


@pytest.fixture
def registered():
    """Register archs for one test and remove them after (the registry is global)."""
    names = []

    def register(name, cls):
        names.append(name)
        return neuralpde.register_arch(name, cls)

    yield register
    for name in names:
        neuralpde._rhs._ARCHS.pop(name, None)
