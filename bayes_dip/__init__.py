"""bayes_dip: Bayesian inverse problems in computed tomography.

Subpackages follow the data flow ``data -> ct -> dip -> linearized -> metrics/viz``;
``linearized`` builds on the generic ``laplace`` and ``linalg`` cores.
"""

__version__ = "0.1.0"
