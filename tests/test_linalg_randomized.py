"""Randomized SVD / eigh / Nyström: exact recovery of low-rank matrices and error bounds."""
from __future__ import annotations

import pytest
import torch

from bayes_dip.linalg import nystrom, randomized_eigh, randomized_svd

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _orth(n, r, seed):
    return torch.linalg.qr(torch.randn(n, r, generator=_gen(seed), dtype=F64)).Q


def test_randomized_svd_recovers_exact_low_rank():
    m, n, r = 70, 50, 6
    s = torch.tensor([50.0, 20.0, 9.0, 4.0, 1.0, 0.3], dtype=F64)
    a = (_orth(m, r, 1) * s) @ _orth(n, r, 2).T
    res = randomized_svd(lambda v: a @ v, lambda u: a.T @ u, (m, n), rank=r, oversample=4,
                         power_iters=1, generator=_gen(3), dtype=F64)
    assert res.U.shape == (m, r) and res.S.shape == (r,) and res.V.shape == (n, r)
    torch.testing.assert_close(res.S, s)
    torch.testing.assert_close((res.U * res.S) @ res.V.T, a)
    torch.testing.assert_close(res.U.T @ res.U, torch.eye(r, dtype=F64))
    torch.testing.assert_close(res.V.T @ res.V, torch.eye(r, dtype=F64))


def test_randomized_svd_error_between_eckart_young_and_hmt_bound():
    m, n, k, p, q = 90, 60, 10, 10, 2
    s = 0.7 ** torch.arange(n, dtype=F64)
    a = (_orth(m, n, 4) * s) @ _orth(n, n, 5).T
    res = randomized_svd(a.__matmul__, a.T.__matmul__, (m, n), rank=k, oversample=p, power_iters=q,
                         generator=_gen(6), dtype=F64)
    err = torch.linalg.matrix_norm(a - (res.U * res.S) @ res.V.T, ord=2)
    # Halko et al. (2011) Cor. 10.10 for ‖A − QQᵀA‖, plus σ_{k+1} for truncating to rank k
    hmt = (1 + (k / (p - 1)) ** 0.5 + torch.e * (k + p) ** 0.5 / p * (n - k) ** 0.5) ** (1 / (2 * q + 1))
    assert s[k] * (1 - 1e-9) <= err <= s[k] * (1 + hmt)


def test_randomized_eigh_recovers_symmetric_indefinite_low_rank():
    n, r = 60, 5
    lam = torch.tensor([-30.0, 12.0, -4.0, 2.0, 0.5], dtype=F64)
    u = _orth(n, r, 7)
    k = (u * lam) @ u.T
    eig = randomized_eigh(k, n, rank=r, oversample=5, generator=_gen(8))
    torch.testing.assert_close(eig.eigvals, lam)  # ordered by decreasing |λ|
    torch.testing.assert_close((eig.eigvecs * eig.eigvals) @ eig.eigvecs.T, k)


def test_nystrom_recovers_exact_low_rank_psd():
    n, r = 80, 8
    u = _orth(n, r, 9)
    k = (u * torch.logspace(2, -1, r, dtype=F64)) @ u.T
    eig = nystrom(k, n, rank=r, oversample=3, generator=_gen(10))
    torch.testing.assert_close((eig.eigvecs * eig.eigvals) @ eig.eigvecs.T, k, rtol=0, atol=1e-10)
    assert (eig.eigvals[:-1] >= eig.eigvals[1:]).all()


def test_nystrom_trace_error_bounds_on_low_rank_plus_noise():
    # K = B + νI, B of rank r. Nyström never overshoots (K − K̂ is PSD), so the trace norm of the
    # error is its trace. Eckart–Young: tr(K − K̂) >= Σ_{i>r} λ_i = (n − r)ν for every draw;
    # Tropp et al. (2017, Thm 4.1): E tr(K − [[K̂]]_r) <= (1 + r/(ℓ − r − 1)) (n − r)ν,
    # checked on the mean over draws (per-draw spread ≈ 4 % here, bound − mean ≈ 6 %).
    n, r, ell, nu = 120, 10, 30, 1e-2
    tail = (n - r) * nu
    ratios = []
    for seed in range(11, 17):
        u = _orth(n, r, seed)
        k = (u * torch.logspace(2, 0, r, dtype=F64)) @ u.T + nu * torch.eye(n, dtype=F64)
        eig = nystrom(k, n, rank=r, oversample=ell - r, generator=_gen(seed + 100))
        err = k - (eig.eigvecs * eig.eigvals) @ eig.eigvecs.T
        assert torch.linalg.eigvalsh(err).min() >= -1e-10
        assert err.trace() >= tail * (1 - 1e-9)
        ratios.append(err.trace() / tail)
    assert torch.stack(ratios).mean() <= 1 + r / (ell - r - 1)


def test_float32_and_bad_inputs():
    n = 30
    u = _orth(n, 3, 14).float()
    k = (u * torch.tensor([5.0, 2.0, 1.0])) @ u.T
    eig = nystrom(k, n, rank=3, generator=_gen(15))
    assert eig.eigvals.dtype == torch.float32
    torch.testing.assert_close((eig.eigvecs * eig.eigvals) @ eig.eigvecs.T, k, rtol=0, atol=1e-5)

    with pytest.raises(ValueError, match="rank"):
        nystrom(k, n, rank=-1)
    with pytest.raises(ValueError, match="rank"):
        randomized_eigh(k, n, rank=n + 1)
    with pytest.raises(ValueError, match="power_iters"):
        randomized_eigh(k, n, rank=2, power_iters=-1)
    with pytest.raises(ValueError, match="oversample"):
        nystrom(k, n, rank=2, oversample=-3)
    with pytest.raises(ValueError, match="square"):
        nystrom(torch.ones(30, 20), n, rank=2)
    with pytest.raises(ValueError, match="rows"):
        nystrom(k, n + 1, rank=2)
    with pytest.raises(ValueError, match="shape"):
        randomized_svd(k.__matmul__, k.T.__matmul__, (30,), rank=2)
    with pytest.raises(ValueError, match="dtype"):
        nystrom(k.__matmul__, n, rank=2)
    with pytest.raises(ValueError, match="positive semi-definite"):
        nystrom(-torch.eye(n, dtype=F64), n, rank=3, generator=_gen(16))
