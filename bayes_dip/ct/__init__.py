"""CT forward operators: geometries, ray transforms (A, Aᵀ as torch ops), FBP, noise simulation."""
from bayes_dip.ct.geometry import FanBeamGeometry, Geometry, ParallelBeamGeometry

__all__ = ["ParallelBeamGeometry", "FanBeamGeometry", "Geometry"]
