"""neuralpde: PDE-motivated convolutional networks whose depth is integration time.

Ruthotto & Haber, *Deep Neural Networks Motivated by Partial Differential Equations*,
J. Math. Imaging Vis. 62 (2020). Integration is done by the sibling package ``solvers``.
"""

from . import stability as stability  # a public submodule: neuralpde.stability.report(...)
from ._filters import HeatRHS as HeatRHS
from ._filters import PeronaMalikRHS as PeronaMalikRHS
from ._filters import TVFlowRHS as TVFlowRHS
from ._layers import ResNetLayer as ResNetLayer
from ._layers import SymmetricLayer as SymmetricLayer
from ._network import PDECNN as PDECNN
from ._network import count_parameters as count_parameters
from ._rhs import HamiltonianRHS as HamiltonianRHS
from ._rhs import ParabolicRHS as ParabolicRHS
from ._rhs import ResNetRHS as ResNetRHS
from ._rhs import SecondOrderRHS as SecondOrderRHS
from ._stage import Stage as Stage
from ._weights import TimeWeights as TimeWeights

__all__ = [
    "PDECNN",
    "HamiltonianRHS",
    "HeatRHS",
    "ParabolicRHS",
    "PeronaMalikRHS",
    "ResNetLayer",
    "ResNetRHS",
    "SecondOrderRHS",
    "Stage",
    "SymmetricLayer",
    "TVFlowRHS",
    "TimeWeights",
    "count_parameters",
    "stability",
]
