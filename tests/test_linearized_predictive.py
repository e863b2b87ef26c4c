"""Predictive: exact = conjugate Gaussian posterior of the linear model; Matheron samples."""
from __future__ import annotations

import math

import pytest
import torch

from linearized_problem import noisy_measurement, tiny_jacobian_and_ray_trafo

from bayes_dip.linearized import (LinearizedModel, StructuredCovariance, WeightPrior,
                                  SubspaceCovariance, conditional_mean, exact_predictive,
                                  sample_predictive, subspace_predictive)
from bayes_dip.metrics import image_patches, log_likelihood_patchwise

F64 = torch.float64


@pytest.fixture(scope="module")
def parts():
    jac, rt = tiny_jacobian_and_ray_trafo()
    y = noisy_measurement(jac, rt)
    model = LinearizedModel(jac, WeightPrior(jac.layout), rt, y, noise_variance=0.05)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.prior.log_variance.copy_(torch.randn(5, generator=gen, dtype=F64) * 0.3)
        model.prior.log_lengthscale.copy_(torch.randn(3, generator=gen, dtype=F64) * 0.3)
    sc = StructuredCovariance.build(jac, rt, model.prior)
    return model, sc, jac.dense(), rt.matrix().to_dense()


def _conjugate_posterior(model, j, a):
    """Image covariance of the weight posterior of y = A J θ + ε: J (Σ⁻¹ + (AJ)ᵀAJ/σ²)⁻¹ Jᵀ."""
    with torch.no_grad():
        sigma = model.prior.matmul(torch.eye(j.shape[1], dtype=F64))
        aj = a @ j
        post = torch.linalg.inv(torch.linalg.inv(sigma) + aj.T @ aj / float(model.noise_variance))
        return j @ post @ j.T


def test_exact_predictive_is_conjugate_posterior(parts):
    model, sc, j, a = parts
    pred = exact_predictive(model, sc, image_noise=1e-3, jitter=0.0)
    expected = _conjugate_posterior(model, j, a) + 1e-3 * torch.eye(64, dtype=F64)
    torch.testing.assert_close(pred.covariance, expected, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(pred.mean, model.jac.output)
    torch.testing.assert_close(pred.std(), expected.diagonal().sqrt().reshape(1, 1, 8, 8))
    assert pred.jitter == 0.0


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_conditional_mean_is_conjugate_posterior_mean(parts, solver):
    """θ ~ N(θ̂, Σ), y = A(x̂ + J(θ − θ̂)) + ε: E[x | y] = x̂ + J Σ_post (AJ)ᵀ (y − A x̂) / σ²."""
    model, sc, j, a = parts
    with torch.no_grad():
        sigma = model.prior.matmul(torch.eye(j.shape[1], dtype=F64))
        aj, nv = a @ j, float(model.noise_variance)
        post = torch.linalg.inv(torch.linalg.inv(sigma) + aj.T @ aj / nv)
        x_hat = model.jac.output.reshape(-1)
        expected = x_hat + j @ post @ aj.T @ (model.y_flat - a @ x_hat) / nv
    kwargs = dict(structured=sc) if solver == "cholesky" else dict(cg_tol=1e-10)
    mean, info = conditional_mean(model, **kwargs)
    assert (info is None) == (solver == "cholesky")
    torch.testing.assert_close(mean.reshape(-1), expected, rtol=1e-6, atol=1e-8)
    # the correction is not negligible on this problem
    assert float((expected - x_hat).abs().max()) > 1e-3


def test_subspace_predictive_full_rank_is_exact_posterior(parts):
    """U spanning all measurements: the posterior mean is the conjugate one and the sample
    variances converge to the exact diagonal at the √(2/S) Monte-Carlo rate."""
    model, sc, _, _ = parts
    spectrum = sc.spectrum(model.prior, float(model.noise_variance))
    num = 4000
    pred = subspace_predictive(model, spectrum, num, image_noise=0.0,
                               generator=torch.Generator().manual_seed(0))
    exact = exact_predictive(model, sc, image_noise=0.0, jitter=0.0)
    torch.testing.assert_close(pred.mean, conditional_mean(model, structured=sc)[0])
    var, ref = pred.std().square().reshape(-1), exact.covariance.diagonal()
    rel = (var - ref).abs() / ref
    assert float(rel.median()) < 0.674 * math.sqrt(2 / num) * 1.5
    assert float(rel.max()) < 5 * math.sqrt(2 / num)


def test_subspace_predictive_low_rank_is_projected_data_posterior(parts):
    """Rank-10 subspace: the covariance is Gaussian conditioning on Uᵀy (dense formula) and
    never below the full-data posterior."""
    model, sc, j, a = parts
    sub = SubspaceCovariance.build(model.jac, model.ray_trafo, model.prior, 10,
                                   generator=torch.Generator().manual_seed(2))
    spectrum = sub.spectrum(model.prior, float(model.noise_variance))
    u = spectrum.basis
    c = sc.image_covariance(model.prior)
    g = c @ a.T @ u
    k_u = u.T @ (a @ c @ a.T) @ u + float(model.noise_variance) * torch.eye(10, dtype=F64)
    projected = c - g @ torch.linalg.solve(k_u, g.T)
    torch.testing.assert_close(u.T @ a @ c @ a.T @ u, torch.diag(spectrum.eigenvalues),
                               rtol=1e-8, atol=1e-10)
    full = exact_predictive(model, sc, image_noise=0.0, jitter=0.0).covariance
    assert bool((projected.diagonal() >= full.diagonal() - 1e-12).all())
    num = 4000
    pred = subspace_predictive(model, spectrum, num, image_noise=0.0, mean="dip",
                               generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(pred.mean, model.jac.output)
    rel = (pred.std().square().reshape(-1) - projected.diagonal()).abs() / projected.diagonal()
    assert float(rel.median()) < 0.674 * math.sqrt(2 / num) * 1.5


def test_jitter_is_chosen_and_reported(parts):
    model, sc, _, _ = parts
    # without image noise the 64-pixel covariance has rank <= min(64, P) and tiny eigenvalues
    pred = exact_predictive(model, sc, image_noise=0.0)
    eig = torch.linalg.eigvalsh(pred.covariance)
    assert float(eig[0]) >= 1e-10 * float(pred.covariance.diagonal().mean()) * (1 - 1e-6)
    assert pred.jitter >= 0.0 and pred.image_noise == 0.0
    auto = exact_predictive(model, sc)
    assert auto.image_noise == pytest.approx(0.05 * model.ray_trafo.variance_factor(100))
    with pytest.raises(ValueError, match="jitter"):
        exact_predictive(model, sc, jitter=-1.0)
    with pytest.raises(ValueError, match="image_noise"):
        exact_predictive(model, sc, image_noise="none")


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_matheron_sample_covariance_converges(parts, solver):
    model, sc, j, a = parts
    exact = _conjugate_posterior(model, j, a)
    n = 6000 if solver == "cholesky" else 2000
    pred = sample_predictive(model, n, structured=sc if solver == "cholesky" else None,
                             image_noise=2e-3, batch_size=2000, cg_tol=1e-8, precond_rank=30,
                             generator=torch.Generator().manual_seed(0))
    err = (pred.samples - pred.mean).reshape(n, 64)
    emp = err.T @ err / n
    rel = float((emp - exact).norm() / exact.norm())
    assert rel < 3 * math.sqrt(2 / n)  # Monte-Carlo error ~ √(2/n)
    if solver == "cg":
        assert all(info.converged for info in pred.cg)
    std = pred.std()
    torch.testing.assert_close(std, (exact.diagonal() + 2e-3).sqrt().reshape(1, 1, 8, 8),
                               rtol=0.15, atol=0)
    # the patchwise log-likelihood from the samples (+ η²) is the exact covariance's
    gt = model.jac.output + 0.05 * torch.randn(1, 1, 8, 8, dtype=F64)
    ll2 = log_likelihood_patchwise(pred.mean, gt, 2, samples=pred.samples,
                                   added_variance=pred.image_noise).per_pixel
    full = exact + 2e-3 * torch.eye(64, dtype=F64)
    blocks = [full[p][:, p] for p in image_patches((8, 8), 2)]
    ll_exact = log_likelihood_patchwise(pred.mean, gt, 2, covariances=blocks).per_pixel
    assert ll2 == pytest.approx(ll_exact, abs=0.15)


def test_bad_inputs(parts):
    model, sc, _, _ = parts
    with pytest.raises(TypeError, match="structured"):
        exact_predictive(model, "sc")
    with pytest.raises(ValueError, match="num_samples"):
        sample_predictive(model, 1)
    with pytest.raises(ValueError, match="mean"):
        exact_predictive(model, sc, mean=torch.zeros(1, 1, 4, 4, dtype=F64))
    with pytest.raises(ValueError, match="batch_size"):
        sample_predictive(model, 4, batch_size=0)


class _FailAfter:
    """Wraps ``obj.name``: the ``n``-th call onwards raises (a run that dies mid-stage)."""

    def __init__(self, obj, name, n):
        self.obj, self.name, self.n, self.calls = obj, name, n, 0
        self.original = getattr(obj, name)

    def __enter__(self):
        def wrapped(*args, **kwargs):
            self.calls += 1
            if self.calls >= self.n:
                raise RuntimeError("killed")
            return self.original(*args, **kwargs)
        setattr(self.obj, self.name, wrapped)
        return self

    def __exit__(self, *exc):
        setattr(self.obj, self.name, self.original)


@pytest.mark.parametrize("kind", ["subspace", "matheron"])
def test_interrupted_sampling_resumes_to_the_uninterrupted_result(parts, tmp_path, kind):
    model, sc, _, _ = parts
    spectrum = sc.spectrum(model.prior, float(model.noise_variance.detach()))

    def run(path, seed=3):
        gen = torch.Generator().manual_seed(seed)
        if kind == "subspace":
            return subspace_predictive(model, spectrum, 40, batch_size=4, generator=gen,
                                       checkpoint_path=path, checkpoint_every=2)
        return sample_predictive(model, 40, batch_size=4, generator=gen, precond_rank=0,
                                 checkpoint_path=path, checkpoint_every=2)

    reference = run(None)
    path = tmp_path / "draws.pt"
    owner = model.image_cov if kind == "subspace" else model.prior  # one .sample per batch
    with _FailAfter(owner, "sample", 6):
        with pytest.raises(RuntimeError, match="killed"):
            run(path)
    saved = sum(e.shape[0] for e in torch.load(path, weights_only=False)["errors"])
    assert 0 < saved < 40
    resumed = run(path)
    torch.testing.assert_close(resumed.samples, reference.samples, rtol=0, atol=0)
    if kind == "matheron":
        assert len(resumed.cg) == len(reference.cg) == 10
    with _FailAfter(owner, "sample", 1), _FailAfter(model.image_cov, "matmul", 1):
        finished = run(path)  # a finished file needs no more draws (nor, subspace: no G)
    torch.testing.assert_close(finished.samples, reference.samples, rtol=0, atol=0)
    with pytest.raises(ValueError, match="checkpoint_path.*another run.*generator"):
        run(path, seed=4)
    with pytest.raises(ValueError, match="needs a generator"):
        subspace_predictive(model, spectrum, 8, checkpoint_path=path)


def test_sampling_reports_its_cg_solves_and_warns_when_they_stop_short(parts):
    model, _, _, _ = parts
    good = sample_predictive(model, 8, batch_size=4, precond_rank=0,
                             generator=torch.Generator().manual_seed(0))
    report = good.cg_report()
    assert report["solves"] == 2 and report["converged"] and report["max_iterations"] > 1
    assert report["max_residual"] <= 1e-4
    with pytest.warns(RuntimeWarning, match="2 of 2 CG solves stopped at 1 iterations"):
        short = sample_predictive(model, 8, batch_size=4, precond_rank=0, cg_max_iter=1,
                                  cg_tol=1e-12, generator=torch.Generator().manual_seed(0))
    assert not short.cg_report()["converged"]
    exact = sample_predictive(model, 8, structured=parts[1],
                              generator=torch.Generator().manual_seed(0))
    assert exact.cg_report() is None  # Cholesky: no CG
