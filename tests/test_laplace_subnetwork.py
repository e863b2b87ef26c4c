"""Subnetwork inference: Wasserstein selection without zero-curvature weights, and subnetwork
curvature / predictive built from the chosen entries only (float64).

Oracles: with orthogonal input columns the GGN of linear regression is diagonal,
``h_j = Σ_n x_nj²``, so the marginal variances ``1/(h_j + δ)`` and the selection are known in
closed form; a subnetwork's GGN is the ``S × S`` block of the dense GGN and its GLM variance
``J_S Σ_S J_Sᵀ`` with the dense Jacobian.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bayes_dip.laplace import Laplace, largest_variance

DT = torch.float64


def test_wasserstein_selection_skips_zero_curvature_weights():
    # columns: always 0 (zero curvature), small, medium, large: h = N s²
    n, scales = 16, torch.tensor([0.0, 0.1, 1.0, 3.0], dtype=DT)
    signs = torch.linalg.qr(torch.randn(n, 4, generator=torch.Generator().manual_seed(0), dtype=DT))[0]
    x = signs * n**0.5 * scales  # orthogonal columns with Σ_n x_nj² = N s_j²
    y = torch.randn(n, 1, generator=torch.Generator().manual_seed(1), dtype=DT)
    model = nn.Linear(4, 1, bias=False).to(DT)
    la = Laplace(model, "regression", structure="diag", prior_precision=2.0).fit((x, y))
    h = n * scales**2
    torch.testing.assert_close(la.posterior_variance, 1 / (h + 2.0))
    assert int(la.posterior_variance.argmax()) == 0  # the naive rule would pick the zero-curvature weight
    sub = largest_variance(la, 2)
    assert sub.names == ("weight",) and sub.indices[0].tolist() == [1, 2]
    assert largest_variance(la, 3).indices[0].tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="non-zero curvature"):
        largest_variance(la, 4)


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_subnetwork_curvature_and_predictive_match_the_dense_blocks(net):
    torch.manual_seed(0)
    if net == "mlp":
        model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(DT)
        x = torch.randn(12, 5, dtype=DT)
    else:
        model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(48, 3)).to(DT)
        x = torch.randn(12, 1, 4, 4, dtype=DT)
    y = torch.randint(0, 3, (12,))
    full = Laplace(model, "classification", structure="full", prior_precision=0.5).fit((x, y))
    diag = Laplace(model, "classification", structure="diag", prior_precision=0.5).fit((x, y))
    sub = largest_variance(diag, 20)
    assert sub.is_partial
    la = Laplace(model, "classification", subset=sub, structure="full", prior_precision=0.5).fit((x, y))
    offsets = dict(zip(full.subset.names, full.subset.offsets))
    chosen = torch.cat([offsets[n] + (torch.arange(s.numel()) if idx is None else idx)
                        for n, s, idx in zip(sub.names, sub.shapes, sub.indices)])
    ggn = full.structure.ggn
    torch.testing.assert_close(la.structure.ggn, ggn[chosen][:, chosen], rtol=1e-10, atol=1e-12)
    jac = full._fn.jacobian(full.theta_hat, x)[:, :, chosen]  # (B, C, |S|)
    cov = jac @ la.posterior_covariance @ jac.mT
    torch.testing.assert_close(la.glm_predictive(x)[1], cov, rtol=1e-8, atol=1e-12)
