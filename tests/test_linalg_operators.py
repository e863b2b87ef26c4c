"""Composable operators equal the dense matrices they describe; adapters to/from linear_operator."""
from __future__ import annotations

import linear_operator
import pytest
import torch
from linear_operator.operators import DenseLinearOperator

from bayes_dip.linalg import (DenseOperator, DiagonalOperator, LinearOperatorAdapter, MatmulOperator,
                              as_operator)

F64 = torch.float64


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_algebra_matches_dense():
    a, b, c = _randn(7, 5, seed=1), _randn(5, 4, seed=2), _randn(7, 5, seed=3)
    d = _randn(7, seed=4)
    A, B, C = DenseOperator(a), as_operator(b), DenseOperator(c)
    fn = MatmulOperator(lambda v: a @ v, (7, 5), rmatmul=lambda u: a.T @ u, dtype=F64)
    cases = {
        "product": (A @ B, a @ b),
        "sum": (A + C, a + c),
        "difference": (A - fn, a - a),
        "scaled": (2.5 * A, 2.5 * a),
        "rscaled": (A * -0.5, -0.5 * a),
        "neg": (-C, -c),
        "transpose": ((A @ B).T, (a @ b).T),
        "gram_shift": ((A.T @ A).shift(0.3), a.T @ a + 0.3 * torch.eye(5, dtype=F64)),
        "diag_left": (DiagonalOperator(d) @ fn, torch.diag(d) @ a),
        "double_T": (fn.T.T, a),
    }
    for name, (op, dense) in cases.items():
        torch.testing.assert_close(op.to_dense(batch_size=2), dense, msg=name)
        v = _randn(dense.shape[1], 3, seed=6)
        u = _randn(dense.shape[0], 2, seed=7)
        torch.testing.assert_close(op @ v, dense @ v, msg=name)
        torch.testing.assert_close(op(v[:, 0]), dense @ v[:, 0], msg=name)
        torch.testing.assert_close(op.rmatmul(u), dense.T @ u, msg=name)


def test_diagonal_exact_and_estimate():
    a = _randn(12, 12, seed=1)
    op = (DenseOperator(a) @ DenseOperator(a).T).shift(1.0)
    dense = a @ a.T + torch.eye(12, dtype=F64)
    torch.testing.assert_close(op.diagonal(batch_size=5), dense.diagonal())
    torch.testing.assert_close(MatmulOperator(lambda v: dense @ v, (12, 12), dtype=F64).diagonal(),
                               dense.diagonal())
    # Rademacher probes see a diagonal operator without error
    d = _randn(12, seed=2)
    est = DiagonalOperator(d).diagonal_estimate(3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(est.value, d)
    # general case: unbiased, error of entry j has variance Σ_{l≠j} K_jl² / s
    s = 4000
    est = op.diagonal_estimate(s, torch.Generator().manual_seed(1))
    sigma = ((dense ** 2).sum(1) - dense.diagonal() ** 2).sqrt() / s ** 0.5
    assert ((est.value - dense.diagonal()).abs() / sigma).max() < 4.5
    torch.testing.assert_close(est.std_error, sigma, rtol=0.15, atol=0)


def test_differentiable_scale_and_shift():
    a = _randn(6, 6, seed=1)
    s = torch.tensor(0.7, dtype=F64, requires_grad=True)
    t = torch.tensor(0.2, dtype=F64, requires_grad=True)
    op = (s * DenseOperator(a @ a.T)).shift(t)
    v = _randn(6, 2, seed=2)
    (v * op(v)).sum().backward()
    torch.testing.assert_close(s.grad, (v * (a @ a.T @ v)).sum())
    torch.testing.assert_close(t.grad, (v * v).sum())


def test_linear_operator_adapter_round_trip():
    a = _randn(8, 5, seed=1)
    op = DenseOperator(a)
    lo = op.to_linear_operator()
    assert isinstance(lo, LinearOperatorAdapter) and lo.shape == (8, 5) and lo.dtype == F64
    v = _randn(5, 3, seed=2)
    torch.testing.assert_close(lo.matmul(v), a @ v)
    batched = _randn(4, 5, 3, seed=3)
    torch.testing.assert_close(lo.matmul(batched), a @ batched)
    torch.testing.assert_close(lo.mT.matmul(_randn(8, 2, seed=4)), a.T @ _randn(8, 2, seed=4))
    torch.testing.assert_close(lo.to_dense(), a)
    sq = (op.T @ op).to_linear_operator()
    torch.testing.assert_close(sq.diagonal(), (a.T @ a).diagonal())
    assert as_operator(lo) is op

    # iterative solves use our PCG with the adapter's tolerance, not linear_cg's defaults
    k = a.T @ a + 0.1 * torch.eye(5, dtype=F64)
    lo_k = DenseOperator(k).to_linear_operator(cg_tol=1e-11)
    with linear_operator.settings.max_cholesky_size(0):
        torch.testing.assert_close(lo_k.solve(v), torch.linalg.solve(k, v))
        torch.testing.assert_close(lo_k.solve(batched), torch.linalg.solve(k, batched))
        with pytest.warns(RuntimeWarning, match="did not converge"):
            DenseOperator(k).to_linear_operator(cg_tol=1e-11, cg_max_iter=1).solve(v)

    # linear_operator objects become operators, differentiable through their representation
    m = _randn(5, 5, seed=5).requires_grad_(True)
    wrapped = as_operator(DenseLinearOperator(m))
    torch.testing.assert_close(wrapped.rmatmul(v), m.T @ v)
    wrapped(v).sum().backward()
    torch.testing.assert_close(m.grad, torch.ones(5, 3, dtype=F64) @ v.T)


def test_bad_inputs():
    a = DenseOperator(_randn(4, 3))
    with pytest.raises(ValueError, match="compose"):
        a @ a
    with pytest.raises(ValueError, match="add"):
        a + a.T
    with pytest.raises(ValueError, match="rows"):
        a(_randn(4, 2))
    with pytest.raises(ValueError, match="shape"):
        a(_randn(3, 2, 2))
    with pytest.raises(ValueError, match="square"):
        a.shift(1.0)
    with pytest.raises(ValueError, match="square"):
        a.diagonal()
    with pytest.raises(TypeError, match="transpose"):
        MatmulOperator(lambda v: v, (3, 3)).T(torch.ones(3, 1))
    with pytest.raises(ValueError, match="shape"):
        as_operator(lambda v: v)
    with pytest.raises(ValueError, match="dtype"):
        a + DenseOperator(torch.ones(4, 3, dtype=torch.float32))
    with pytest.raises(ValueError, match="scalar"):
        a * torch.ones(2)
    with pytest.raises(ValueError, match="symmetric"):
        MatmulOperator(lambda v: v, (3, 4), symmetric=True)
