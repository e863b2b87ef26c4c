"""Preconditioners against their dense matrices; pivoted Cholesky exactness and error bounds."""
from __future__ import annotations

import pytest
import torch

from bayes_dip.linalg import (JacobiPreconditioner, LowRankPreconditioner, NystromPreconditioner,
                              PivotedCholeskyPreconditioner, RandomizedEighPreconditioner, pcg,
                              pivoted_cholesky)

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _orth(n, r, seed):
    return torch.linalg.qr(torch.randn(n, r, generator=_gen(seed), dtype=F64)).Q


def _sym_fn(m, fn):
    evals, evecs = torch.linalg.eigh(m)
    return (evecs * fn(evals)) @ evecs.T


def _check_against_dense(prec, dense):
    n = dense.shape[0]
    v = torch.randn(n, 3, generator=_gen(0), dtype=F64)
    torch.testing.assert_close(prec.matmul(v), dense @ v)
    torch.testing.assert_close(prec.solve(v), torch.linalg.solve(dense, v))
    torch.testing.assert_close(prec(v), prec.solve(v))
    torch.testing.assert_close(prec.sqrt_apply(v), _sym_fn(dense, torch.sqrt) @ v)
    torch.testing.assert_close(prec.inv_sqrt_apply(v), _sym_fn(dense, torch.rsqrt) @ v)
    torch.testing.assert_close(prec.logdet(), torch.logdet(dense))


def test_jacobi_and_low_rank_match_dense():
    n = 30
    d = torch.rand(n, generator=_gen(1), dtype=F64) + 0.1
    _check_against_dense(JacobiPreconditioner(d), torch.diag(d))
    u, lam, mu = _orth(n, 4, 2), torch.tensor([100.0, 10.0, 1.0, 0.0], dtype=F64), 0.05
    _check_against_dense(LowRankPreconditioner(u, lam, mu),
                         (u * lam) @ u.T + mu * torch.eye(n, dtype=F64))


def test_sample_probes_have_covariance_p():
    n, num = 4, 40000
    u = _orth(n, 2, 3)
    prec = LowRankPreconditioner(u, torch.tensor([3.0, 1.0], dtype=F64), 0.5)
    dense = prec.matmul(torch.eye(n, dtype=F64))
    z = prec.sample_probes(num, _gen(4))
    cov = z @ z.T / num
    # entrywise std of the sample covariance: sqrt((P_ij² + P_ii P_jj) / num)
    std = ((dense ** 2 + dense.diagonal()[:, None] * dense.diagonal()[None, :]) / num).sqrt()
    assert ((cov - dense).abs() / std).max() < 4.5


def test_low_rank_preconditioners_are_exact_for_low_rank_plus_shift():
    n, r, noise = 60, 6, 0.1
    u = _orth(n, r, 5)
    k0 = (u * torch.logspace(3, 0, r, dtype=F64)) @ u.T
    dense = k0 + noise * torch.eye(n, dtype=F64)
    for prec in (NystromPreconditioner(k0, n, r, noise, _gen(6)),
                 RandomizedEighPreconditioner(k0, n, r, noise, _gen(7)),
                 PivotedCholeskyPreconditioner(k0.diagonal(), lambda i: k0[i], r, noise)):
        torch.testing.assert_close(prec.matmul(torch.eye(n, dtype=F64)), dense, rtol=0, atol=1e-8)
        torch.testing.assert_close(prec.logdet(), torch.logdet(dense))
        # P = K: PCG converges in one iteration
        _, info = pcg(dense, torch.randn(n, 2, generator=_gen(8), dtype=F64), precond=prec, tol=1e-8)
        assert info.converged and info.iterations == 1


def test_pivoted_cholesky_exact_for_low_rank():
    n, r = 50, 7
    w = torch.randn(n, r, generator=_gen(9), dtype=F64)
    k = w @ w.T
    res = pivoted_cholesky(k.diagonal(), lambda i: k[i], rank=r + 3, tol=1e-12)
    assert res.L.shape[1] == r  # stops once the residual trace vanishes
    assert len(set(res.pivots.tolist())) == r
    torch.testing.assert_close(res.L @ res.L.T, k, rtol=0, atol=1e-10)


def test_pivoted_cholesky_error_bounds_on_low_rank_plus_noise():
    # K = B + νI, rank(B) = r, pivots S, T = the rest. The residual is the Schur complement
    # νI + B_TS [B_SS⁻¹ − (B_SS + νI)⁻¹] B_ST on T (zero on S), so
    #   (n − r)ν <= tr(K − LLᵀ) <= (n − r)ν + ν ‖B_TS B_SS⁻¹‖_F²
    # (lower: Eckart–Young in trace norm, the residual being PSD).
    n, r, nu = 80, 6, 1e-3
    w = torch.randn(n, r, generator=_gen(10), dtype=F64) * torch.logspace(1, 0, r, dtype=F64)
    b = w @ w.T
    k = b + nu * torch.eye(n, dtype=F64)
    res = pivoted_cholesky(k.diagonal(), lambda i: k[i], rank=r)
    resid = k - res.L @ res.L.T
    torch.testing.assert_close(res.residual_trace, resid.trace())
    assert torch.linalg.eigvalsh(resid).min() >= -1e-12
    s = res.pivots
    torch.testing.assert_close(resid[s], torch.zeros(r, n, dtype=F64), rtol=0, atol=1e-12)
    t = torch.tensor([i for i in range(n) if i not in set(s.tolist())])
    interp = b[t][:, s] @ torch.linalg.inv(b[s][:, s])
    upper = (n - r) * nu + nu * (interp ** 2).sum()
    assert (n - r) * nu * (1 - 1e-9) <= resid.trace() <= upper * (1 + 1e-9)
    # the residual trace decreases with the rank
    traces = [pivoted_cholesky(k.diagonal(), lambda i: k[i], rank=m).residual_trace for m in (1, 3, 6)]
    assert traces[0] > traces[1] > traces[2]


def test_pivoted_cholesky_preconditioner_reduces_iterations():
    n, noise = 200, 1e-3
    x = torch.linspace(0, 1, n, dtype=F64)
    k0 = torch.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * 0.1 ** 2))  # RBF kernel
    k = k0 + noise * torch.eye(n, dtype=F64)
    b = torch.randn(n, 2, generator=_gen(11), dtype=F64)
    _, plain = pcg(k, b, tol=1e-8)
    prec = PivotedCholeskyPreconditioner(k0.diagonal(), lambda i: k0[i], 30, noise)
    xs, info = pcg(k, b, precond=prec, tol=1e-8)
    assert plain.converged and info.converged
    assert info.iterations < plain.iterations / 3
    torch.testing.assert_close(xs, torch.linalg.solve(k, b), rtol=1e-4, atol=0)


def test_bad_inputs():
    n = 10
    k = torch.eye(n, dtype=F64)
    with pytest.raises(ValueError, match="positive"):
        JacobiPreconditioner(torch.zeros(n))
    with pytest.raises(ValueError, match="rank"):
        NystromPreconditioner(k, n, -2, 0.1)
    with pytest.raises(ValueError, match="shift"):
        NystromPreconditioner(k, n, 2, 0.0)
    with pytest.raises(ValueError, match="shift"):
        RandomizedEighPreconditioner(k, n, 2, -1.0)
    with pytest.raises(ValueError, match="rank"):
        PivotedCholeskyPreconditioner(k.diagonal(), lambda i: k[i], 0, 0.1)
    with pytest.raises(ValueError, match="rank"):
        pivoted_cholesky(k.diagonal(), lambda i: k[i], n + 1)
    with pytest.raises(ValueError, match=r"row\(0\)"):
        pivoted_cholesky(k.diagonal(), lambda i: k[i, :3], 2)
    with pytest.raises(ValueError, match="eigvals"):
        LowRankPreconditioner(_orth(n, 2, 0), torch.tensor([1.0, -1.0], dtype=F64), 0.1)
    with pytest.raises(ValueError, match="eigvals"):
        LowRankPreconditioner(_orth(n, 2, 0), torch.ones(3, dtype=F64), 0.1)
    with pytest.raises(ValueError, match="rows"):
        JacobiPreconditioner(torch.ones(n)).solve(torch.ones(n + 1, 1))
