"""Held-out predictive of the measurements against brute-force conditioning of a dense K."""

import pytest
import torch

from bayes_dip.linearized.heldout import ObservationSpectrum, heldout_groups, heldout_predictive


def _problem(n=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    f = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    acat = f @ f.mT + 0.3 * torch.eye(n, dtype=torch.float64)  # A C Aᵀ
    residual = torch.randn(n, generator=gen, dtype=torch.float64)
    return acat, residual


def _brute_force(k, residual, groups):
    """Condition N(0, K) on everything outside each group by deleting rows: errors, covs."""
    n = k.shape[0]
    errs, covs = [], []
    for g in groups:
        rest = torch.tensor([i for i in range(n) if i not in set(g.tolist())])
        k_gr, k_rr = k[g][:, rest], k[rest][:, rest]
        mean = k_gr @ torch.linalg.solve(k_rr, residual[rest])
        errs.append(residual[g] - mean)
        covs.append(k[g][:, g] - k_gr @ torch.linalg.solve(k_rr, k_gr.mT))
    return errs, covs


@pytest.mark.parametrize("kind", ["measurement", "angle"])
def test_heldout_matches_refit_exact_spectrum(kind):
    acat, residual = _problem()
    evals, evecs = torch.linalg.eigh(acat)
    spec = ObservationSpectrum(evecs, evals, 0.0, 0.2)
    scale = 1.7
    k = scale * acat + 0.2 * torch.eye(12, dtype=torch.float64)
    groups = heldout_groups((4, 3), kind)
    result = heldout_predictive(spec, residual, groups, kind, scale=scale)
    errs, covs = _brute_force(k, residual, groups)
    z = torch.cat([e / c.diagonal().sqrt() for e, c in zip(errs, covs)])
    torch.testing.assert_close(result.z, z, rtol=1e-9, atol=1e-10)
    ll = sum(torch.distributions.MultivariateNormal(torch.zeros_like(e), c).log_prob(e)
             for e, c in zip(errs, covs)) / 12
    assert result.log_likelihood == pytest.approx(float(ll), rel=1e-9)
    chi2 = sum(float(e @ torch.linalg.solve(c, e)) for e, c in zip(errs, covs)) / 12
    assert result.chi2 == pytest.approx(chi2, rel=1e-9)


def test_heldout_matches_refit_lowrank_spectrum():
    """A rank-4 basis plus an isotropic remainder: the same formulas on the dense K̃."""
    acat, residual = _problem()
    evals, evecs = torch.linalg.eigh(acat)
    u, lam, tail, nv = evecs[:, -4:], evals[-4:], 0.6, 0.1
    spec = ObservationSpectrum(u, lam, tail, nv)
    proj = u @ u.mT
    k = u @ torch.diag(lam + nv) @ u.mT + (tail + nv) * (torch.eye(12, dtype=torch.float64) - proj)
    torch.testing.assert_close(spec.solve(residual), torch.linalg.solve(k, residual))
    groups = heldout_groups((4, 3), "angle")
    result = heldout_predictive(spec, residual, groups)
    errs, covs = _brute_force(k, residual, groups)
    z = torch.cat([e / c.diagonal().sqrt() for e, c in zip(errs, covs)])
    torch.testing.assert_close(result.z, z, rtol=1e-9, atol=1e-10)


def test_calibrated_model_gives_standard_normal_z_and_chi2_recalibrates():
    """Residuals drawn from the model itself: z ~ N(0, 1) and coverage ≈ nominal. A model
    whose K is 4× too small has chi2 ≈ 4, and scaling its K by chi2 gives chi2 = 1 exactly."""
    n_angles, n_det = 40, 10
    n = n_angles * n_det
    gen = torch.Generator().manual_seed(3)
    f = torch.randn(n, 30, generator=gen, dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(f @ f.mT)
    evals = evals.clamp_min(0)
    k = evecs @ torch.diag(0.25 * evals + 1.0) @ evecs.mT
    residual = torch.linalg.cholesky(k) @ torch.randn(n, generator=gen, dtype=torch.float64)
    groups = heldout_groups((n_angles, n_det), "angle")
    right = heldout_predictive(ObservationSpectrum(evecs, 0.25 * evals, 0.0, 1.0), residual,
                               groups)
    assert abs(float(right.z.std()) - 1) < 0.1 and abs(right.chi2 - 1) < 0.15
    assert abs(right.coverage["0.95"] - 0.95) < 0.04
    small = heldout_predictive(ObservationSpectrum(evecs, 0.0625 * evals, 0.0, 0.25), residual,
                               groups)
    assert 3.4 < small.chi2 < 4.6
    c = small.chi2
    fixed = heldout_predictive(ObservationSpectrum(evecs, 0.0625 * c * evals, 0.0, 0.25 * c),
                               residual, groups)
    assert fixed.chi2 == pytest.approx(1.0, rel=1e-10)
    torch.testing.assert_close(fixed.z, small.z / c ** 0.5)


def test_bad_arguments():
    acat, residual = _problem()
    evals, evecs = torch.linalg.eigh(acat)
    spec = ObservationSpectrum(evecs, evals, 0.0, 0.2)
    with pytest.raises(ValueError, match="kind"):
        heldout_groups((4, 3), "row")
    with pytest.raises(ValueError, match="residual"):
        heldout_predictive(spec, residual[:5], heldout_groups((4, 3), "angle"))
