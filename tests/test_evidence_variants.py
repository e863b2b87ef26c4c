"""The PredCP rate's rules on a scan given in two units of length (the TV-MAP posterior must
not depend on them), and the variants of ``experiments/evidence_variants.py``."""
from __future__ import annotations

import pytest
import torch

from repo_scripts import REPO, load_script

from bayes_dip.ct import ParallelBeamGeometry, RayTransform
from bayes_dip.dip import UNet
from bayes_dip.linearized import LinearizedDIP

F64 = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore:evidence optimisation:RuntimeWarning")


def _tv_map(pixel_size: float, rule: str) -> dict:
    """TV-MAP hyperparameters of one tiny scan whose geometry is in units of ``pixel_size``:
    ``A``, ``y`` and the noise scale with it, and ``γ`` with its square (the DIP loss of the
    same problem in other units); σ_y² is returned in the units of ``pixel_size = 1``."""
    torch.manual_seed(0)
    net = UNet(channels=(3, 4), skip_channels=(0, 2)).double()
    x = torch.rand(1, 1, 8, 8, dtype=F64)
    rt = RayTransform(ParallelBeamGeometry((8, 8), num_angles=5, pixel_size=pixel_size))
    with torch.no_grad():
        truth = net(x)
    noise_std = 0.05 * pixel_size
    y = rt.A(truth) + noise_std * torch.randn(1, 1, *rt.obs_shape, dtype=F64)
    lin = LinearizedDIP(net, x, rt, y, gamma=1e-3 * pixel_size ** 2,
                        noise_variance=noise_std ** 2)
    lin.optimize_hyperparameters("exact", 1.0, predcp_rule=rule, steps=60, progress=False)
    return dict(lin.model.prior.hyperparameters(),
                noise=float(lin.model.noise_variance.detach()) / pixel_size ** 2)


def test_default_rate_is_invariant_to_the_unit_of_length():
    residual = [_tv_map(p, "residual") for p in (1.0, 0.1)]
    for block, value in residual[0].items():
        assert residual[1][block] == pytest.approx(value, rel=1e-6), block
    # the paper's rate γ · numel(y) scales with the unit squared, so its posterior changes
    paper = [_tv_map(p, "paper") for p in (1.0, 0.1)]
    assert any(paper[1][b] != pytest.approx(v, rel=1e-2) for b, v in paper[0].items())


@pytest.fixture
def variants(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "experiments"))  # it imports calibration_benchmark
    return load_script("experiments/evidence_variants.py")


def test_variants_of_the_experiment(variants):
    assert variants._predcp("mll") == (None, "residual")
    assert variants._predcp("tvmap") == (1.0, "residual")
    assert variants._predcp("tvmap0.3-fixed") == (0.3, "residual")
    assert variants._predcp("tvmap-paper") == (1.0, "paper")
    for bad in ("tvmapx", "tvmap-2", "map"):
        with pytest.raises(ValueError, match="unknown"):
            variants._predcp(bad)
