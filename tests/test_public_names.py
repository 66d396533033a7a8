"""One name, one thing: no public attribute of a package is hidden by one of its submodules.

Importing ``pkg.name`` sets the attribute ``pkg.name`` to the submodule, whatever it held
before; ``experiments.train`` was both the training function and the command module, and
which one a test got depended on the order tests were collected in.
"""

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import experiments
import neuralpde
import solvers

PACKAGES = (experiments, neuralpde, solvers)


def _submodules(pkg) -> list[str]:
    return [m.name for m in pkgutil.iter_modules(pkg.__path__)]


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: p.__name__)
def test_no_public_name_is_also_a_submodule(pkg):
    submodules = set(_submodules(pkg))
    assert submodules, f"{pkg.__name__} has no submodules: the check would prove nothing"
    for name in pkg.__all__:
        # A public submodule re-exported under its own name (neuralpde.stability) is the
        # same thing under one name; anything else under a submodule's name is shadowed.
        if name in submodules:
            assert inspect.ismodule(getattr(pkg, name)), (
                f"{pkg.__name__}.{name} is public and also the submodule "
                f"{pkg.__name__}.{name}: importing the submodule rebinds the attribute"
            )


def test_every_command_module_leaves_the_public_api_alone():
    # In a fresh interpreter (this process may have imported the commands already): the
    # public API before and after importing every submodule of experiments is the same.
    code = (
        "import importlib, pkgutil, experiments\n"
        "before = {n: getattr(experiments, n) for n in experiments.__all__}\n"
        "for m in pkgutil.iter_modules(experiments.__path__):\n"
        "    importlib.import_module('experiments.' + m.name)\n"
        "changed = [n for n in before if getattr(experiments, n) is not before[n]]\n"
        "print(sorted(m.name for m in pkgutil.iter_modules(experiments.__path__)))\n"
        "assert not changed, changed\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    # The commands of the README are among those imported.
    for command in ("train", "solver_swap", "ode_study", "data_size", "table1", "stability"):
        assert f"'{command}'" in res.stdout


def test_training_and_the_swap_are_functions_and_their_commands_modules():
    assert inspect.isfunction(experiments.fit) and inspect.isfunction(experiments.swap_table)
    for command in ("train", "solver_swap"):
        module = importlib.import_module(f"experiments.{command}")
        assert inspect.ismodule(getattr(experiments, command)) and callable(module.main)
    assert "train" not in experiments.__all__ and "solver_swap" not in experiments.__all__
