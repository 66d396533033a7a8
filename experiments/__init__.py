"""Data, training, evaluation and figures for neuralpde (public API of neuralpde only).

Functions: :func:`fit` trains one configuration (what ``python -m experiments.train``
runs), :func:`swap_table` evaluates a trained network under many solvers (what
``python -m experiments.solver_swap`` runs). Commands, ``python -m experiments.NAME``:
``train`` (the main job), ``solver_swap``, ``certify`` (:func:`certify_table`), ``ode_study``, ``data_size``, ``table1`` and
``stability``.

A command's module and a public function never share a name: importing the module
``experiments.NAME`` sets the package attribute ``NAME`` to the module, which would hide a
function of that name (``tests/test_public_names.py``).
"""

from ._certify import certify_table as certify_table
from ._checkpoint import CheckpointError as CheckpointError
from ._checkpoint import load_checkpoint as load_checkpoint
from ._checkpoint import save_checkpoint as save_checkpoint
from ._config import ConfigError as ConfigError
from ._config import TrainConfig as TrainConfig
from ._config import resolve_config as resolve_config
from ._data import DatasetNotFoundError as DatasetNotFoundError
from ._data import DataSplits as DataSplits
from ._data import load_data as load_data
from ._swap import load_trained as load_trained
from ._swap import swap_plan as swap_plan
from ._swap import swap_table as swap_table
from ._swap import swap_verdict as swap_verdict
from ._trainer import NonFiniteLossError as NonFiniteLossError
from ._trainer import build_model as build_model
from ._trainer import evaluate as evaluate
from ._trainer import fit as fit

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataSplits",
    "DatasetNotFoundError",
    "NonFiniteLossError",
    "TrainConfig",
    "build_model",
    "certify_table",
    "evaluate",
    "fit",
    "load_checkpoint",
    "load_data",
    "load_trained",
    "resolve_config",
    "save_checkpoint",
    "swap_plan",
    "swap_table",
    "swap_verdict",
]
