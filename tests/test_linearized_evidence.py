"""Evidence of the linearised model: closed forms, stochastic gradients, optimisation, resume."""
from __future__ import annotations

import math

import pytest
import torch

from linearized_problem import noisy_measurement, tiny_jacobian_and_ray_trafo

from bayes_dip.laplace import gaussian_log_evidence
from bayes_dip.linearized import (EvidenceConfig, ExactTVPredCP, LinearizedModel,
                                  StructuredCovariance, WeightPrior, negative_log_evidence,
                                  optimize_evidence)
from bayes_dip.linearized.modes import EVIDENCE_MODES

F64 = torch.float64


@pytest.fixture(scope="module")
def parts():
    jac, rt = tiny_jacobian_and_ray_trafo()
    y = noisy_measurement(jac, rt)
    sc = StructuredCovariance.build(jac, rt, WeightPrior(jac.layout))
    return jac, rt, y, sc, jac.dense(), rt.matrix().to_dense()


def _model(parts, seed=None):
    jac, rt, y, *_ = parts
    model = LinearizedModel(jac, WeightPrior(jac.layout), rt, y, noise_variance=0.05)
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            model.prior.log_variance.copy_(torch.randn(5, generator=gen, dtype=F64) * 0.3)
            model.prior.log_lengthscale.copy_(torch.randn(3, generator=gen, dtype=F64) * 0.3)
    return model


def test_negative_log_evidence_closed_forms(parts):
    jac, rt, y, sc, j, a = parts
    model = _model(parts, seed=1)
    with torch.no_grad():
        sigma = model.prior.matmul(torch.eye(jac.num_params, dtype=F64))
        nv = float(model.noise_variance)
        aj = a @ j
        k = aj @ sigma @ aj.T + nv * torch.eye(a.shape[0], dtype=F64)
        yv = y.reshape(-1)
        theta = jac.theta
        # Laplace evidence at θ̂ via the weight-space Hessian (matrix determinant lemma not used)
        hess = torch.linalg.inv(sigma) + aj.T @ aj / nv
        r = yv - a @ jac.output.reshape(-1)
        laplace = (0.5 * r @ r / nv + 0.5 * theta @ torch.linalg.solve(sigma, theta)
                   + 0.5 * a.shape[0] * math.log(2 * math.pi * nv)
                   + 0.5 * torch.logdet(sigma) + 0.5 * torch.logdet(hess))
        torch.testing.assert_close(negative_log_evidence(model, sc, "map"), laplace,
                                   rtol=1e-9, atol=0)
        # linearised mode: the Gaussian marginal likelihood y ~ N(A(x̂ − Jθ̂), K_yy)
        mean = a @ (jac.output.reshape(-1) - j @ theta)
        gauss = -torch.distributions.MultivariateNormal(mean, k).log_prob(yv)
        torch.testing.assert_close(negative_log_evidence(model, sc, "linearized_mode"), gauss,
                                   rtol=1e-9, atol=0)
        # ... which is the Laplace core's function-space evidence of the matrix-free K_yy
        core = -gaussian_log_evidence(model.obs_cov.to_dense(), model.prior_mean_residual)
        torch.testing.assert_close(core, gauss, rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match="weights"):
        negative_log_evidence(model, sc, "mode")


def _exact_grads(model, sc, weights):
    model.zero_grad()
    negative_log_evidence(model, sc, weights).backward()
    return torch.cat([p.grad.reshape(-1).clone() for p in model.parameters()])


@pytest.mark.parametrize("weights,preconditioned", [("map", True), ("map", False),
                                                    ("linearized_mode", True)])
def test_stochastic_gradient_matches_exact(parts, weights, preconditioned):
    sc = parts[3]
    model = _model(parts, seed=2)
    exact = _exact_grads(model, sc, weights)
    config = EvidenceConfig(mode="stochastic", weights=weights, num_probes=300, cg_tol=1e-8,
                            cg_max_iter=200, precond_rank=30 if preconditioned else 0)
    objective = EVIDENCE_MODES["stochastic"].objective(model, config, None,
                                                       torch.Generator().manual_seed(0))
    objective.before_step(0)  # builds the preconditioner
    model.zero_grad()
    loss, nle, stats = objective()
    assert math.isnan(nle)  # the stochastic objective leaves log|K_yy| out
    loss.backward()
    approx = torch.cat([p.grad.reshape(-1).clone() for p in model.parameters()])
    assert stats["cg_residual"] <= 1e-8
    # Monte-Carlo error with 300 probes: typically 0.3–2.5 % of the gradient's norm
    assert float((approx - exact).norm()) < 0.06 * float(exact.norm())


def test_exact_optimisation_increases_evidence(parts):
    sc = parts[3]
    model = _model(parts)
    result = optimize_evidence(model, EvidenceConfig(steps=60, progress=False), structured=sc)
    nle = result.history["neg_log_evidence"]
    assert len(nle) == 60 and nle[-1] < nle[0] - 0.1
    # Adam on a smooth objective: the evidence rises step by step once under way
    assert sum(b > a + 1e-9 for a, b in zip(nle[20:], nle[21:])) <= 3
    assert result.noise_variance == pytest.approx(float(model.noise_variance.detach()))
    assert set(result.hyperparameters) == {"inc", "down_0", "up_0", "skip_0", "outc"}


@pytest.mark.parametrize("mode", ["exact", "stochastic"])
def test_resume_reproduces_uninterrupted_run(parts, tmp_path, mode):
    sc = parts[3]
    # interrupted after step 3 of 6, between two preconditioner refreshes (every 2 steps)
    kwargs = dict(mode=mode, progress=False, checkpoint_every=2, num_probes=3, precond_rank=8,
                  precond_every=2, cg_max_iter=20)
    full = _model(parts)
    ref = optimize_evidence(full, EvidenceConfig(steps=6, **kwargs), structured=sc)
    part = _model(parts)
    path = tmp_path / "evidence.pt"
    optimize_evidence(part, EvidenceConfig(steps=3, **kwargs), structured=sc, checkpoint_path=path)
    resumed_model = _model(parts)  # fresh hyperparameters: everything comes from the checkpoint
    resumed = optimize_evidence(resumed_model, EvidenceConfig(steps=6, **kwargs), structured=sc,
                                checkpoint_path=path)
    for p, q in zip(full.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    assert resumed.history["objective"] == pytest.approx(ref.history["objective"], rel=1e-10)
    assert len(resumed.history["noise_variance"]) == 6
    with pytest.raises(ValueError, match="lr"):
        optimize_evidence(_model(parts), EvidenceConfig(steps=6, lr=0.1, **kwargs), structured=sc,
                          checkpoint_path=path)
    if mode == "exact":  # a PredCP term the checkpoint was not written with
        other = _model(parts)
        with pytest.raises(ValueError, match="predcp"):
            optimize_evidence(other, EvidenceConfig(steps=6, **kwargs), structured=sc,
                              predcp=ExactTVPredCP(sc, other.prior, rate=2.0),
                              checkpoint_path=path)
        state = torch.load(path, weights_only=False)
        del state["objective"]  # as written before checkpoints recorded their objective
        torch.save(state, path)
        with pytest.raises(ValueError, match="older version"):
            optimize_evidence(_model(parts), EvidenceConfig(steps=6, **kwargs), structured=sc,
                              checkpoint_path=path)


def test_stop_when_converged(parts, tmp_path):
    """The run ends at the first 50-step mark (from 300) where it has converged, with the
    same history as a run without the stop up to there; resuming it trains no further."""
    *_, sc, _, _ = parts
    cfg = dict(mode="exact", steps=3000, progress=False)
    full = optimize_evidence(_model(parts), EvidenceConfig(**cfg), structured=sc)
    path = tmp_path / "evidence.pt"
    early = optimize_evidence(_model(parts), EvidenceConfig(**cfg, stop_when_converged=True),
                              structured=sc, checkpoint_path=path)
    n = early.steps
    assert 300 <= n < 3000 and n % 50 == 0 and early.convergence["converged"]
    assert early.history["objective"] == full.history["objective"][:n]
    again = optimize_evidence(_model(parts), EvidenceConfig(**cfg, stop_when_converged=True),
                              structured=sc, checkpoint_path=path)
    assert again.steps == n and again.noise_variance == early.noise_variance


def test_adam_memory_is_the_modes_and_converges_sooner(parts, tmp_path):
    """The closed-form modes run Adam with β₂ = 0.9 (the stochastic one 0.999; a config value
    wins): on a deterministic objective the short memory converges in fewer steps, to the
    same optimum as the long one."""
    *_, sc, _, _ = parts
    assert EVIDENCE_MODES["exact"].adam_beta2 == EVIDENCE_MODES["lowrank"].adam_beta2 == 0.9
    assert EVIDENCE_MODES["stochastic"].adam_beta2 == 0.999
    for beta2, expected in ((None, 0.9), (0.999, 0.999)):
        path = tmp_path / f"evidence-{beta2}.pt"
        optimize_evidence(_model(parts), EvidenceConfig(steps=1, progress=False,
                                                        adam_beta2=beta2),
                          structured=sc, checkpoint_path=path)
        betas = torch.load(path, weights_only=False)["optimizer"]["param_groups"][0]["betas"]
        assert betas == (0.9, expected)
    cfg = dict(steps=3000, progress=False, stop_when_converged=True)
    short = optimize_evidence(_model(parts), EvidenceConfig(**cfg), structured=sc)
    long = optimize_evidence(_model(parts), EvidenceConfig(**cfg, adam_beta2=0.999),
                             structured=sc)
    assert short.convergence["converged"] and long.convergence["converged"]
    assert short.steps < long.steps
    assert short.history["objective"][-1] == pytest.approx(long.history["objective"][-1],
                                                           rel=1e-4)
    with pytest.raises(ValueError, match="adam_beta2"):
        EvidenceConfig(adam_beta2=1.0)


def test_known_noise_variance_stays_fixed(parts):
    """``learn_noise_variance=False`` optimises the prior only: σ_y² keeps its value and the
    prior hyperparameters reach a stationary point of the evidence at that σ_y² (gradient ~0),
    which is not the free optimum's."""
    *_, sc, _, _ = parts
    cfg = dict(mode="exact", steps=1500, lr=0.05, stop_when_converged=True, progress=False)
    fixed_model = _model(parts)
    fixed = optimize_evidence(fixed_model, EvidenceConfig(**cfg, learn_noise_variance=False),
                              structured=sc)
    free = optimize_evidence(_model(parts), EvidenceConfig(**cfg), structured=sc)
    assert fixed.noise_variance == pytest.approx(0.05, rel=1e-12)
    assert fixed.history["noise_variance"] == pytest.approx([0.05] * fixed.steps, rel=1e-12)
    assert abs(free.noise_variance - 0.05) > 1e-3
    params = dict(fixed_model.named_parameters())
    nle = negative_log_evidence(fixed_model, sc, "map")
    grads = torch.autograd.grad(nle, [params["prior.log_variance"],
                                      params["prior.log_lengthscale"]])
    assert max(float(g.abs().max()) for g in grads) < 1e-3


def test_stochastic_run_reports_cg(parts):
    model = _model(parts)
    result = optimize_evidence(model, EvidenceConfig(mode="stochastic", steps=3, num_probes=3,
                                                     precond_rank=10, progress=False))
    assert all(1 <= it <= 50 for it in result.history["cg_iterations"])
    assert all(r <= 1e-3 for r in result.history["cg_residual"])
    assert all(math.isnan(v) for v in result.history["neg_log_evidence"])


def test_bad_inputs(parts):
    model = _model(parts)
    with pytest.raises(ValueError, match="mode"):
        EvidenceConfig(mode="fast")
    with pytest.raises(ValueError, match="steps"):
        EvidenceConfig(steps=-1)
    with pytest.raises(ValueError, match="lr"):
        EvidenceConfig(lr=0)
    with pytest.raises(ValueError, match="structured"):
        optimize_evidence(model, EvidenceConfig(steps=1, progress=False))
    with pytest.raises(TypeError, match="model"):
        optimize_evidence("model", EvidenceConfig(steps=1, progress=False), structured=parts[3])
    with pytest.raises(TypeError, match="predcp"):
        optimize_evidence(model, EvidenceConfig(steps=1, progress=False), structured=parts[3],
                          predcp=3)
    jac, rt, y, *_ = parts
    with pytest.raises(ValueError, match="y must have shape"):
        LinearizedModel(jac, WeightPrior(jac.layout), rt, y[..., :-1])
    with pytest.raises(ValueError, match="noise_variance"):
        LinearizedModel(jac, WeightPrior(jac.layout), rt, y, noise_variance=0.0)
