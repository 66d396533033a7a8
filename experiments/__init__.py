"""Data, training, evaluation and figures for neuralpde (public API of neuralpde only).

Command-line entry points: ``python -m experiments.train`` (the main job),
``python -m experiments.solver_swap`` and ``python -m experiments.data_size``.
"""

from ._checkpoint import CheckpointError as CheckpointError
from ._checkpoint import load_checkpoint as load_checkpoint
from ._checkpoint import save_checkpoint as save_checkpoint
from ._config import ConfigError as ConfigError
from ._config import TrainConfig as TrainConfig
from ._config import resolve_config as resolve_config
from ._data import DatasetNotFoundError as DatasetNotFoundError
from ._data import DataSplits as DataSplits
from ._data import load_data as load_data
from ._swap import solver_swap as solver_swap
from ._swap import swap_plan as swap_plan
from ._swap import swap_verdict as swap_verdict
from ._trainer import NonFiniteLossError as NonFiniteLossError
from ._trainer import build_model as build_model
from ._trainer import evaluate as evaluate
from ._trainer import train as train

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataSplits",
    "DatasetNotFoundError",
    "NonFiniteLossError",
    "TrainConfig",
    "build_model",
    "evaluate",
    "load_checkpoint",
    "load_data",
    "resolve_config",
    "save_checkpoint",
    "solver_swap",
    "swap_plan",
    "swap_verdict",
    "train",
]
