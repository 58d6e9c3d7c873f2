"""Generator objectives (DI, DI++, DIDR, DMD, ReFL) and DRS estimators (DRP, Monte-Carlo, exact)."""

from didr.objectives.drs import DRPEstimator, DRSEstimate, DRSEstimator, ExactMixtureDRS, HybridDRS, MonteCarloDRS
from didr.objectives.methods import DI, DIDR, DMD, OMEGAS, DIPlusPlus, Objective, ReFL, ScoreDistillation

__all__ = [
    "DRPEstimator", "DRSEstimate", "DRSEstimator", "ExactMixtureDRS", "HybridDRS", "MonteCarloDRS",
    "DI", "DIDR", "DMD", "OMEGAS", "DIPlusPlus", "Objective", "ReFL", "ScoreDistillation",
]
