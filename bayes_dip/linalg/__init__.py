"""Matrix-free linear algebra: PCG, preconditioners, stochastic estimators, sketches.

Shared by the generic Laplace core and the linearised DIP. Everything works on column
blocks ``V (n, k)``, in float32 or float64, on the device of its inputs.
"""
from .cg import CGInfo, inv_quad, pcg
from .estimators import (Estimate, hutchinson_diagonal, hutchinson_trace, hutchpp_trace,
                         lanczos_tridiag, logdet_grad_probes, logdet_surrogate, sample_probes,
                         slq_logdet)
from .preconditioners import (JacobiPreconditioner, LowRankPreconditioner, NystromPreconditioner,
                              PivotedCholesky, PivotedCholeskyPreconditioner, Preconditioner,
                              RandomizedEighPreconditioner, pivoted_cholesky)
from .randomized import LowRankEigh, SVDResult, nystrom, randomized_eigh, randomized_svd

__all__ = [
    "CGInfo", "pcg", "inv_quad",
    "Estimate", "sample_probes", "hutchinson_trace", "hutchpp_trace", "hutchinson_diagonal",
    "lanczos_tridiag", "slq_logdet", "logdet_grad_probes", "logdet_surrogate",
    "Preconditioner", "JacobiPreconditioner", "LowRankPreconditioner", "NystromPreconditioner",
    "RandomizedEighPreconditioner", "PivotedCholeskyPreconditioner", "PivotedCholesky",
    "pivoted_cholesky",
    "LowRankEigh", "SVDResult", "randomized_svd", "randomized_eigh", "nystrom",
]
