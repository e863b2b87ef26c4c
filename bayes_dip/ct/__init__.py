"""CT forward operators: geometries, ray transforms (A, Aᵀ as torch ops), FBP, noise simulation.

Units: see :mod:`bayes_dip.ct.geometry` (pixel sizes and distances in one length unit, e.g. mm;
``A x`` are line integrals in that unit; angles in radians).
"""
from bayes_dip.ct.fbp import FBP_FILTERS, fbp
from bayes_dip.ct.geometry import FanBeamGeometry, Geometry, ParallelBeamGeometry
from bayes_dip.ct.noise import NOISE_MODELS, simulate_measurement
from bayes_dip.ct.ray_transform import BACKENDS, RayTransform

__all__ = ["ParallelBeamGeometry", "FanBeamGeometry", "Geometry", "RayTransform", "BACKENDS",
           "fbp", "FBP_FILTERS", "simulate_measurement", "NOISE_MODELS"]
