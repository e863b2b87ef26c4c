"""The default prior-precision recipe (``optimize_prior_precision("auto")``), float64.

Checks: without validation data it is the evidence optimisation; with it, the chosen δ is
the evidence's δ times the multiplier of least validation NLL, each NLL equals the NLL of
``predict`` at that δ, and for a huge multiplier the predictive is the MAP network's.
"""
from __future__ import annotations

import torch
from torch import nn

from bayes_dip.laplace import Laplace

DT = torch.float64


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(DT)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 4, generator=g, dtype=DT)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return model, x, y


def nll(probs, y):
    return float(-probs.gather(1, y[:, None]).log().mean())


def test_auto_without_validation_is_the_evidence_optimisation():
    model, x, y = problem()
    a = Laplace(model, "classification", structure="kfac", prior_precision=torch.ones(4, dtype=DT)).fit((x, y))
    b = Laplace(model, "classification", structure="kfac", prior_precision=torch.ones(4, dtype=DT)).fit((x, y))
    torch.testing.assert_close(a.optimize_prior_precision(n_steps=30), b.optimize_prior_precision("marglik", n_steps=30))
    torch.testing.assert_close(a.prior_precision, b.prior_precision)


def test_auto_scales_the_evidence_precision_by_validation_nll():
    model, x, y = problem()
    train, val = (x[:40], y[:40]), (x[40:], y[40:])
    la = Laplace(model, "classification", structure="kfac", prior_precision=torch.ones(4, dtype=DT)).fit(train)
    la.optimize_prior_precision("marglik", n_steps=30)
    base = la.prior_precision.clone()
    la = Laplace(model, "classification", structure="kfac", prior_precision=torch.ones(4, dtype=DT)).fit(train)
    scores = la.optimize_prior_precision(n_steps=30, val_data=val)
    multipliers = torch.logspace(0, 6, 25, dtype=DT)
    best = int(scores.argmin())
    torch.testing.assert_close(la.prior_precision, multipliers[best] * base)
    for i in (0, 12, 24):
        la.prior_precision = multipliers[i] * base
        assert abs(nll(la.predict(val[0]), val[1]) - float(scores[i])) < 1e-12
    with torch.no_grad():
        map_nll = nll(torch.softmax(model(val[0]), 1), val[1])
    assert abs(float(scores[-1]) - map_nll) < 1e-3 * map_nll
    assert abs(float(scores[0]) - map_nll) > 1e-3  # the evidence's δ is far from the MAP limit here
