"""PCG against dense solves: accuracy, honest residuals, iteration counts, preconditioning."""
from __future__ import annotations

import pytest
import torch
from linear_operator.operators import DenseLinearOperator

from bayes_dip.linalg import (JacobiPreconditioner, NystromPreconditioner, inv_quad,
                              pcg)

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _spd(eigvals, seed=0):
    """``Q diag(eigvals) Qᵀ`` with a random orthogonal ``Q``."""
    n = eigvals.shape[0]
    q = torch.linalg.qr(torch.randn(n, n, generator=_gen(seed), dtype=F64)).Q
    return (q * eigvals) @ q.T


def _true_rel(k, x, b):
    return torch.linalg.vector_norm(b - k @ x, dim=0) / torch.linalg.vector_norm(b, dim=0)


def test_pcg_matches_dense_solve_and_reports_true_residual():
    n = 80
    k = _spd(torch.logspace(0, 2, n, dtype=F64), seed=1)
    b = torch.randn(n, 4, generator=_gen(2), dtype=F64)
    tol = 1e-10
    x, info = pcg(k, b, tol=tol)
    exact = torch.linalg.solve(k, b)
    # forward error <= cond(K) · relative residual
    assert ((x - exact).norm(dim=0) / exact.norm(dim=0)).max() <= 1e2 * tol
    assert info.converged and info.residual_norms.shape == (4,)
    assert (info.residual_norms <= tol).all()
    torch.testing.assert_close(info.residual_norms, _true_rel(k, x, b), rtol=1e-6, atol=0)
    # classical rate: ‖r_k‖/‖b‖ <= 2 √κ ((√κ − 1)/(√κ + 1))^k with κ = 100
    bound = torch.log(torch.tensor(2 * 10 / tol)) / torch.log(torch.tensor(11 / 9))
    assert 1 <= info.iterations <= bound


def test_iterations_bounded_by_number_of_distinct_eigenvalues():
    # in exact arithmetic CG terminates after (#distinct eigenvalues) steps
    eig = torch.tensor([1.0, 3.0, 10.0, 30.0, 100.0], dtype=F64).repeat(12)
    k = _spd(eig, seed=3)
    b = torch.randn(60, 3, generator=_gen(4), dtype=F64)
    x, info = pcg(k, b, tol=1e-10)
    assert info.converged and info.iterations <= 5 + 1  # +1: one step of rounding slack
    torch.testing.assert_close(x, torch.linalg.solve(k, b))


def test_jacobi_reduces_iterations_on_badly_scaled_matrix():
    n = 100
    k0 = _spd(torch.linspace(1, 4, n, dtype=F64), seed=5)
    d = torch.logspace(0, 1.5, n, dtype=F64)[torch.randperm(n, generator=_gen(6))]
    k = d[:, None] * k0 * d[None, :]
    b = torch.randn(n, 2, generator=_gen(7), dtype=F64)
    _, plain = pcg(k, b, tol=1e-8)
    x, jac = pcg(k, b, precond=JacobiPreconditioner(k.diagonal()), tol=1e-8)
    assert plain.converged and jac.converged
    assert jac.iterations < plain.iterations / 3
    torch.testing.assert_close(x, torch.linalg.solve(k, b), rtol=1e-5, atol=0)


def test_nystrom_reduces_iterations_on_decaying_spectrum():
    n = 300
    eig = 1e4 * torch.arange(1, n + 1, dtype=F64) ** -2.0
    k0 = _spd(eig, seed=8)
    noise = 1e-2
    k = k0 + noise * torch.eye(n, dtype=F64)
    b = torch.randn(n, 3, generator=_gen(9), dtype=F64)
    _, plain = pcg(k, b, tol=1e-8)
    prec = NystromPreconditioner(lambda v: k0 @ v, n, 60, noise, _gen(10), dtype=F64)
    x, nys = pcg(k, b, precond=prec, tol=1e-8)
    assert plain.converged and nys.converged
    assert nys.iterations < plain.iterations / 3
    torch.testing.assert_close(nys.residual_norms, _true_rel(k, x, b), rtol=1e-6, atol=0)


def test_max_iter_reports_non_convergence_honestly():
    n = 100
    k = _spd(torch.logspace(0, 4, n, dtype=F64), seed=11)
    b = torch.randn(n, 2, generator=_gen(12), dtype=F64)
    x, info = pcg(k, b, tol=1e-10, max_iter=3)
    assert info.iterations == 3 and not info.converged
    assert (info.residual_norms > 1e-10).all()
    torch.testing.assert_close(info.residual_norms, _true_rel(k, x, b))


def test_columns_are_independent_and_frozen_when_converged():
    n = 50
    k = _spd(torch.logspace(0, 2, n, dtype=F64), seed=13)
    eigvec = torch.linalg.eigh(k).eigenvectors[:, 0]
    b = torch.randn(n, 4, generator=_gen(14), dtype=F64)
    b[:, 1] = 0.0  # zero column: solution 0, no work
    b[:, 2] = eigvec  # eigenvector: one iteration
    x, info = pcg(k, b, tol=1e-11)
    assert info.converged
    assert (x[:, 1] == 0).all() and info.residual_norms[1] == 0
    for j in (0, 2, 3):
        xj, info_j = pcg(k, b[:, j], tol=1e-11)
        assert xj.shape == (n,) and info_j.residual_norms.shape == (1,)
        torch.testing.assert_close(x[:, j], xj, rtol=1e-9, atol=1e-12)
    _, info_eig = pcg(k, b[:, 2:3], tol=1e-11)
    assert info_eig.iterations == 1


def test_x0_history_and_callback():
    n = 40
    k = _spd(torch.logspace(0, 2, n, dtype=F64), seed=15)
    b = torch.randn(n, 2, generator=_gen(16), dtype=F64)
    _, info = pcg(k, b, x0=torch.linalg.solve(k, b), tol=1e-8)
    assert info.iterations == 0 and info.converged
    calls = []
    x, info = pcg(k, b, tol=1e-9, record_history=True,
                  callback=lambda it, xx, rel: calls.append((it, rel.clone())))
    assert info.residual_history.shape == (info.iterations + 1, 2)
    torch.testing.assert_close(info.residual_history[0], torch.ones(2, dtype=F64))
    assert [c[0] for c in calls] == list(range(1, info.iterations + 1))
    torch.testing.assert_close(calls[-1][1], info.residual_history[-1])


def test_accepts_linear_operator_and_float32():
    n = 30
    k = _spd(torch.logspace(0, 1, n, dtype=F64), seed=17)
    b = torch.randn(n, 2, generator=_gen(18), dtype=F64)
    x, info = pcg(DenseLinearOperator(k), b, tol=1e-10)
    torch.testing.assert_close(x, torch.linalg.solve(k, b))
    x32, info32 = pcg(k.float(), b.float(), tol=1e-5)
    assert x32.dtype == torch.float32 and info32.converged
    # reported float32 residuals agree with a float64 recomputation
    torch.testing.assert_close(info32.residual_norms.double(), _true_rel(k, x32.double(), b),
                               rtol=0, atol=1e-6)


def test_not_spd_stops_without_convergence():
    k = -torch.eye(5, dtype=F64)
    x, info = pcg(k, torch.ones(5, 1, dtype=F64), tol=1e-8)
    assert not info.converged and info.iterations == 1 and (x == 0).all()


def test_inv_quad_value_and_gradients():
    n = 25
    w = torch.randn(n, 6, generator=_gen(19), dtype=F64)
    h = torch.tensor([0.3, -1.0], dtype=F64, requires_grad=True)
    b = torch.randn(n, 3, generator=_gen(20), dtype=F64, requires_grad=True)

    def kmat(hh):
        return hh[0].exp() * (w @ w.T) + hh[1].exp() * torch.eye(n, dtype=F64)

    value, info = inv_quad(lambda v: kmat(h) @ v, b, tol=1e-12)
    exact = (b * torch.linalg.solve(kmat(h), b)).sum(0)
    torch.testing.assert_close(value, exact)
    g_h, g_b = torch.autograd.grad(value.sum(), (h, b))
    e_h, e_b = torch.autograd.grad(exact.sum(), (h, b))
    torch.testing.assert_close(g_h, e_h)
    torch.testing.assert_close(g_b, e_b)


def test_bad_inputs():
    k = torch.eye(4, dtype=F64)
    b = torch.ones(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="square"):
        pcg(torch.ones(4, 3, dtype=F64), b)
    with pytest.raises(ValueError, match="rows"):
        pcg(k, torch.ones(5, 2, dtype=F64))
    with pytest.raises(ValueError, match="square"):
        pcg(DenseLinearOperator(torch.ones(4, 3, dtype=F64)), b)
    with pytest.raises(ValueError, match="tol"):
        pcg(k, b, tol=0.0)
    with pytest.raises(ValueError, match="tol"):
        pcg(k, b, tol=-1e-3)
    with pytest.raises(ValueError, match="max_iter"):
        pcg(k, b, max_iter=-1)
    with pytest.raises(ValueError, match="rhs"):
        pcg(k, torch.ones(4, 2, 2, dtype=F64))
    with pytest.raises(ValueError, match="x0"):
        pcg(k, b, x0=torch.ones(4, 3, dtype=F64))
    with pytest.raises(TypeError, match="rhs"):
        pcg(k, [1.0, 2.0])
    with pytest.raises(TypeError, match="precond"):
        pcg(k, b, precond=3)
