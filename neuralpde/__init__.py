"""neuralpde: PDE-motivated convolutional networks whose depth is integration time.

Ruthotto & Haber, *Deep Neural Networks Motivated by Partial Differential Equations*,
J. Math. Imaging Vis. 62 (2020). Integration is done by the sibling package ``solvers``.
"""

from . import stability as stability  # a public submodule: neuralpde.stability.report(...)
from ._convergence import ConvergenceVerdict as ConvergenceVerdict
from ._convergence import convergence_check as convergence_check
from ._filters import HeatRHS as HeatRHS
from ._filters import PeronaMalikRHS as PeronaMalikRHS
from ._filters import TVFlowRHS as TVFlowRHS
from ._layers import ResNetLayer as ResNetLayer
from ._layers import SymmetricLayer as SymmetricLayer
from ._lipschitz import LipschitzBound as LipschitzBound
from ._lipschitz import certify as certify
from ._lipschitz import lipschitz_bound as lipschitz_bound
from ._network import PDECNN as PDECNN
from ._network import count_parameters as count_parameters
from ._regularizers import time_smoothness as time_smoothness
from ._rhs import RHS as RHS
from ._rhs import HamiltonianRHS as HamiltonianRHS
from ._rhs import ParabolicRHS as ParabolicRHS
from ._rhs import ResNetRHS as ResNetRHS
from ._rhs import SecondOrderRHS as SecondOrderRHS
from ._rhs import archs as archs
from ._rhs import register_arch as register_arch
from ._stage import Stage as Stage
from ._weights import TimeWeights as TimeWeights

__all__ = [
    "PDECNN",
    "RHS",
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
    "ConvergenceVerdict",
    "LipschitzBound",
    "archs",
    "certify",
    "convergence_check",
    "count_parameters",
    "lipschitz_bound",
    "register_arch",
    "stability",
    "time_smoothness",
]
