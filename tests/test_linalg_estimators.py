"""Stochastic estimators against exact traces, diagonals, log-dets and autograd of torch.logdet.

Unbiasedness is checked as |estimate − exact| <= 4 σ with σ the estimator's theoretical
standard deviation (or its reported standard error where no closed form is simple).
Deterministic oracles: probes √n · I (or √n · P^{1/2}) make each estimator exact.
"""
from __future__ import annotations

import pytest
import torch

from bayes_dip.linalg import (LowRankPreconditioner, NystromPreconditioner,
                              hutchinson_diagonal, hutchinson_trace, hutchpp_trace, lanczos_tridiag,
                              logdet_grad_probes, logdet_surrogate, sample_probes, slq_logdet)

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _spd(n, seed, lo=-1.0, hi=1.0):
    q = torch.linalg.qr(torch.randn(n, n, generator=_gen(seed), dtype=F64)).Q
    return (q * torch.logspace(lo, hi, n, dtype=F64)) @ q.T


def _probes(n, s, seed, distribution="rademacher"):
    return sample_probes(n, s, distribution, _gen(seed), dtype=F64)


def _rademacher_sigma(m, s):
    """Std of the s-probe Rademacher Hutchinson mean for symmetric m: 2(‖m‖_F² − Σ m_ii²)/s."""
    return (2 * ((m ** 2).sum() - (m.diagonal() ** 2).sum()) / s).sqrt()


def test_sample_probes():
    z = _probes(50, 7, 0)
    assert z.shape == (50, 7) and z.dtype == F64 and set(z.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(_probes(50, 7, 0), z)  # reproducible from the generator
    g = _probes(50, 7, 0, "gaussian")
    assert g.dtype == F64 and not torch.equal(g.abs(), torch.ones_like(g))


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_trace_unbiased(distribution):
    n, s = 40, 4000
    k = _spd(n, 1)
    est = hutchinson_trace(k, _probes(n, s, 2, distribution), batch_size=1000)
    sigma = (_rademacher_sigma(k, s) if distribution == "rademacher"
             else (2 * (k ** 2).sum() / s).sqrt())
    assert (est.value - k.trace()).abs() <= 4 * sigma
    torch.testing.assert_close(est.std_error, sigma, rtol=0.1, atol=0)


def test_hutchpp_exact_for_low_rank_and_unbiased():
    n = 40
    u = torch.linalg.qr(torch.randn(n, 5, generator=_gen(3), dtype=F64)).Q
    low = (u * torch.tensor([9.0, 5.0, 3.0, 2.0, 1.0], dtype=F64)) @ u.T
    est = hutchpp_trace(low, _probes(n, 12, 4))  # 6 sketch columns >= rank 5
    torch.testing.assert_close(est.value, low.trace())
    # unbiased on a full-rank matrix: mean of 200 independent 6-probe estimates
    k = _spd(n, 5)
    values = torch.stack([hutchpp_trace(k, _probes(n, 6, 100 + i)).value for i in range(200)])
    assert (values.mean() - k.trace()).abs() <= 4 * values.std() / 200 ** 0.5
    # on a decaying spectrum it beats Hutchinson with the same number of products (9)
    q = torch.linalg.qr(torch.randn(n, n, generator=_gen(6), dtype=F64)).Q
    decay = (q * 100 * torch.arange(1, n + 1, dtype=F64) ** -2.0) @ q.T
    pp = torch.stack([hutchpp_trace(decay, _probes(n, 6, 900 + i)).value for i in range(60)])
    plain = torch.stack([hutchinson_trace(decay, _probes(n, 9, 500 + i)).value for i in range(60)])
    assert pp.std() < plain.std() / 2


def test_hutchinson_diagonal():
    n, s = 30, 4000
    k = _spd(n, 6)
    est = hutchinson_diagonal(k, _probes(n, s, 7))
    sigma = ((k ** 2).sum(1) - k.diagonal() ** 2).sqrt() / s ** 0.5
    assert ((est.value - k.diagonal()).abs() / sigma).max() < 4.5
    d = torch.rand(n, generator=_gen(8), dtype=F64)
    torch.testing.assert_close(hutchinson_diagonal(torch.diag(d), _probes(n, 2, 9)).value, d)


def test_lanczos_ritz_values_and_breakdown():
    n = 30
    k = _spd(n, 10)
    start = torch.randn(n, 2, generator=_gen(11), dtype=F64)
    t = lanczos_tridiag(k, start, n)
    assert t.shape == (2, n, n)
    for j in range(2):
        torch.testing.assert_close(torch.linalg.eigvalsh(t[j]), torch.linalg.eigvalsh(k))
    # four distinct eigenvalues: invariant subspace after 4 steps, then identity padding
    q = torch.linalg.qr(torch.randn(n, n, generator=_gen(12), dtype=F64)).Q
    k4 = (q * torch.tensor([1.0, 2.0, 5.0, 7.0], dtype=F64).repeat_interleave(n // 4 + 1)[:n]) @ q.T
    t4 = lanczos_tridiag(k4, start[:, :1], 10)[0]
    torch.testing.assert_close(t4[4:, 4:], torch.eye(6, dtype=F64))
    torch.testing.assert_close(t4[3, 4], torch.zeros((), dtype=F64))
    torch.testing.assert_close(torch.linalg.eigvalsh(t4[:4, :4]),
                               torch.tensor([1.0, 2.0, 5.0, 7.0], dtype=F64))


def test_slq_exact_with_basis_probes():
    n = 30
    basis = n ** 0.5 * torch.eye(n, dtype=F64)  # mean_i n e_iᵀ log(K) e_i = tr log K
    k = _spd(n, 13, -2.0, 2.0)  # κ = 1e4
    torch.testing.assert_close(slq_logdet(k, basis, num_steps=n).value, torch.logdet(k),
                               rtol=0, atol=1e-9)
    # κ = 100: Gauss quadrature converges fast, with or without re-orthogonalisation
    k = _spd(n, 13, -1.0, 1.0)
    for reorth in (True, False):
        est = slq_logdet(k, basis, num_steps=20, reorthogonalize=reorth)
        assert (est.value - torch.logdet(k)).abs() < 1e-4


def test_slq_unbiased_with_random_probes():
    n, s = 20, 1500
    k = _spd(n, 14)
    est = slq_logdet(k, _probes(n, s, 15), num_steps=n)
    evals, evecs = torch.linalg.eigh(k)
    log_k = (evecs * evals.log()) @ evecs.T
    sigma = _rademacher_sigma(log_k, s)
    assert (est.value - torch.logdet(k)).abs() <= 4 * sigma
    torch.testing.assert_close(est.std_error, sigma, rtol=0.1, atol=0)


def test_preconditioned_slq():
    # P = K exactly (low rank + shift): the preconditioned operator is I, one step is exact
    n, r, mu = 40, 5, 0.1
    u = torch.linalg.qr(torch.randn(n, r, generator=_gen(16), dtype=F64)).Q
    lam = torch.logspace(3, 0, r, dtype=F64)
    k = (u * lam) @ u.T + mu * torch.eye(n, dtype=F64)
    prec = LowRankPreconditioner(u, lam, mu)
    est = slq_logdet(k, _probes(n, 3, 17), num_steps=1, precond=prec)
    torch.testing.assert_close(est.value, torch.logdet(k))
    torch.testing.assert_close(est.std_error, torch.zeros((), dtype=F64), rtol=0, atol=1e-10)


def _parametrised_k(n, seed):
    """K(h) = e^{h0} W Wᵀ + e^{h1} I + e^{h2} diag(d) and the products with ∂K/∂h_j."""
    w = torch.randn(n, 8, generator=_gen(seed), dtype=F64)
    d = torch.rand(n, generator=_gen(seed + 1), dtype=F64)
    h = torch.tensor([0.5, -1.0, -0.3], dtype=F64, requires_grad=True)

    def kmat(hh):
        return hh[0].exp() * (w @ w.T) + hh[1].exp() * torch.eye(n, dtype=F64) + hh[2].exp() * torch.diag(d)

    with torch.no_grad():
        dmatmuls = [lambda v: h[0].exp() * (w @ (w.T @ v)), lambda v: h[1].exp() * v,
                    lambda v: h[2].exp() * d[:, None] * v]
    exact = torch.autograd.grad(torch.logdet(kmat(h)), h)[0]
    return h, kmat, [lambda v, f=f: f(v).detach() for f in dmatmuls], exact


def test_logdet_grad_exact_with_basis_probes():
    n = 25
    h, kmat, dmatmuls, exact = _parametrised_k(n, 18)
    k = kmat(h).detach()
    basis = n ** 0.5 * torch.eye(n, dtype=F64)
    est, info = logdet_grad_probes(k, dmatmuls, basis, tol=1e-12)
    assert info.converged
    torch.testing.assert_close(est.value, exact)
    # preconditioned probes z = √n P^{1/2} e_i (E zzᵀ = P) with the P⁻¹ correction
    prec = NystromPreconditioner(k - 0.3 * torch.eye(n, dtype=F64), n, 5, 0.3, _gen(19))
    z = n ** 0.5 * prec.sqrt_apply(torch.eye(n, dtype=F64))
    est_p, info_p = logdet_grad_probes(k, dmatmuls, z, precond=prec, probes_from_precond=True,
                                       tol=1e-12)
    torch.testing.assert_close(est_p.value, exact)
    # autograd surrogate: value 0, gradient = the estimate
    sur, _ = logdet_surrogate(lambda v: kmat(h) @ v, basis, tol=1e-12)
    assert sur.item() == 0.0
    torch.testing.assert_close(torch.autograd.grad(sur, h)[0], exact)


@pytest.mark.parametrize("preconditioned", [False, True])
def test_logdet_grad_unbiased_with_random_probes(preconditioned):
    n, s = 25, 2000
    h, kmat, dmatmuls, exact = _parametrised_k(n, 20)
    k = kmat(h).detach()
    if preconditioned:
        prec = NystromPreconditioner(k - 0.3 * torch.eye(n, dtype=F64), n, 5, 0.3, _gen(21))
        z, kwargs = prec.sample_probes(s, _gen(22)), dict(precond=prec, probes_from_precond=True)
    else:
        z, kwargs = _probes(n, s, 22, "gaussian"), {}
    est, info = logdet_grad_probes(k, dmatmuls, z, tol=1e-10, **kwargs)
    assert info.converged and est.value.shape == (3,)
    assert ((est.value - exact).abs() <= 4 * est.std_error).all()
    sur, _ = logdet_surrogate(lambda v: kmat(h) @ v, z, tol=1e-10, **kwargs)
    torch.testing.assert_close(torch.autograd.grad(sur, h)[0], est.value)


def test_bad_inputs():
    n = 6
    k = torch.eye(n, dtype=F64)
    z = _probes(n, 4, 0)
    with pytest.raises(ValueError, match="probes"):
        hutchinson_trace(k, torch.ones(n, dtype=F64))
    with pytest.raises(ValueError, match="rows"):
        hutchinson_trace(k, _probes(n + 1, 4, 0))
    with pytest.raises(ValueError, match="square"):
        hutchinson_diagonal(torch.ones(n, n + 1, dtype=F64), z)
    with pytest.raises(ValueError, match="distribution"):
        sample_probes(n, 3, "uniform")
    with pytest.raises(ValueError, match="num"):
        sample_probes(n, 0)
    with pytest.raises(ValueError, match="2 columns"):
        hutchpp_trace(k, z[:, :1])
    with pytest.raises(ValueError, match="num_steps"):
        slq_logdet(k, z, num_steps=0)
    with pytest.raises(ValueError, match="positive definite"):
        slq_logdet(-k, z, num_steps=3)
    with pytest.raises(ValueError, match="precond"):
        logdet_grad_probes(k, [lambda v: v], z, probes_from_precond=True)
    with pytest.raises(TypeError, match="dmatmuls"):
        logdet_grad_probes(k, [], z)
    with pytest.raises(ValueError, match="tol"):
        logdet_surrogate(k, z, tol=0.0)
    with pytest.raises(ValueError, match="non-zero"):
        lanczos_tridiag(k, torch.zeros(n, 1, dtype=F64), 3)
