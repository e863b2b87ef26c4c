"""End-to-end study runs on tiny problems: tables, figures, resumption, config guards."""
from __future__ import annotations

import csv
import math

import pytest
import torch

from bayes_dip.dip import trainer
from bayes_dip.metrics import Prediction
from bayes_dip.studies import METHODS, MethodSpec, register_method, run_study

ALL_METHODS = ["dip", "dip-evidence", "mcdo", "lin-dip-mll", "lin-dip-tvmap"]


def _config(methods=ALL_METHODS, **overrides):
    cfg = dict(
        name="tiny", methods=list(methods),
        settings=[{"angles": 8, "noise": 0.05, "images": ["shepp_logan", "dicom"], "size": 16}],
        unet={"preset": "kmnist", "channels": [4, 4], "skip_channels": [0, 2]},
        dip={"iterations": 60, "lr": 1e-2, "gamma": 1e-4, "log_every": 10},
        mcdo={"num_samples": 64, "iterations": 20},
        evidence={"steps": 3}, tvmap={"predcp_samples": 2},
        figures={"formats": ["png"], "gallery_samples": 4})
    cfg.update(overrides)
    return cfg


@pytest.fixture(autouse=True)
def _one_thread():
    """Problems of 16² pixels: thread start-up costs more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_study(_config(), tmp_path_factory.mktemp("study"), progress=False)
    finally:
        torch.set_num_threads(threads)


def test_tiny_study_writes_table_and_figures(tiny_study):
    out = tiny_study.out_dir
    assert len(tiny_study.records) == 10 and len(tiny_study.computed) == 10
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["method"] for r in rows] == ALL_METHODS
    assert all(r["n"] == "2" for r in rows)
    assert len(list(csv.DictReader((out / "per_image.csv").open()))) == 10
    text = (out / "table.md").read_text()
    for label in ("DIP (σ²=1)", "DIP-MCDO", "Linearised DIP (TV-MAP)", "8 angles, 5 % noise, 16²"):
        assert label in text
    figures = out / "figures" / "a8_n5pct_s16"
    for name in ("panels_shepp_logan", "reliability", "sparsification", "error_vs_std",
                 "z_scores", "samples_lin-dip-mll_shepp_logan", "samples_mcdo_shepp_logan"):
        assert (figures / f"{name}.png").stat().st_size > 0, name
    assert (out / "study.yaml").is_file()


def test_tiny_study_records(tiny_study):
    by = {(r["image"], r["method"]): r for r in tiny_study.records}
    for r in tiny_study.records:
        assert math.isfinite(r["test_ll"]) and r["seconds"]["total"] > 0
    for image in ("shepp_logan", "dicom"):
        # exact predictive at 16²: full covariance; homoscedastic DIP: exact diagonal
        assert by[image, "lin-dip-mll"]["ll_kind"] == "full"
        assert by[image, "lin-dip-tvmap"]["info"]["mode"] == "exact"
        assert by[image, "dip"]["ll_kind"] == "full"
        assert by[image, "dip"]["info"]["noise_variance"] == 1.0
        # one DIP per image, shared (same training seconds); MCDO trains its own network
        shared = {by[image, m]["seconds"]["dip"] for m in ("dip", "dip-evidence", "lin-dip-mll",
                                                              "lin-dip-tvmap")}
        assert len(shared) == 1
        assert by[image, "mcdo"]["seconds"]["dip"] not in shared
        assert by[image, "dip"]["psnr"] == by[image, "lin-dip-mll"]["psnr"]
        # MC-dropout's image noise is σ̂_y² c_A with σ̂_y² its own residual's, in sinogram units
        mcdo = by[image, "mcdo"]["info"]
        assert mcdo["noise_variance"] > 0
        assert mcdo["added_variance"] == pytest.approx(
            mcdo["noise_variance"] * by[image, "dip"]["info"]["variance_factor"], rel=1e-9)


_FAIL_ON = set()


def _flaky(ctx) -> Prediction:
    if ctx.image_id in _FAIL_ON:
        raise RuntimeError(f"interrupted at {ctx.image_id}")
    recon = ctx.dip().recon
    return Prediction(mean=recon, std=torch.full_like(recon, 0.1), independent_pixels=True,
                      seconds={"dip": ctx.dip().seconds})


@pytest.fixture
def flaky_method():
    spec = register_method(MethodSpec("flaky", "flaky", ("dip", "unet"), _flaky))
    yield spec
    del METHODS["flaky"]
    _FAIL_ON.clear()


def test_resume_skips_finished_items(tmp_path, flaky_method, monkeypatch):
    cfg = _config(methods=["dip", "flaky"], figures={"enabled": False})
    _FAIL_ON.add("dicom")
    with pytest.raises(RuntimeError, match="interrupted at dicom"):
        run_study(cfg, tmp_path, progress=False)
    # everything before the interruption is on disk: both methods of the first image and
    # the dip method of the second
    done = sorted(p.relative_to(tmp_path / "results").as_posix()
                  for p in (tmp_path / "results").rglob("*.json") if p.name != "problem.json")
    assert done == ["a8_n5pct_s16/dicom/dip.json", "a8_n5pct_s16/shepp_logan/dip.json",
                    "a8_n5pct_s16/shepp_logan/flaky.json"]
    _FAIL_ON.clear()
    # the partial results can be reported without computing the missing one
    partial = run_study(cfg, tmp_path, progress=False, report_only=True)
    assert partial.computed == [] and len(partial.records) == 3
    assert "flaky" in (tmp_path / "table.md").read_text()
    steps = []
    loss = trainer.dip_loss
    monkeypatch.setattr(trainer, "dip_loss", lambda *args: steps.append(1) or loss(*args))
    second = run_study(cfg, tmp_path, progress=False)
    assert second.computed == [("a8_n5pct_s16", "dicom", "flaky")]
    assert len(second.reused) == 3
    # the DIP of "dicom" was reloaded from its checkpoint, not trained again
    assert steps == []
    by = {(r["image"], r["method"]): r for r in second.records}
    assert by["dicom", "flaky"]["psnr"] == by["dicom", "dip"]["psnr"]
    third = run_study(cfg, tmp_path, progress=False)
    assert third.computed == [] and len(third.reused) == 4


def test_changed_method_config_is_not_mixed_in(tmp_path):
    cfg = _config(methods=["dip"], figures={"enabled": False})
    run_study(cfg, tmp_path, progress=False)
    changed = _config(methods=["dip"], figures={"enabled": False},
                      dip={"iterations": 61, "lr": 1e-2, "gamma": 1e-4, "log_every": 10})
    with pytest.raises(ValueError, match="different configuration"):
        run_study(changed, tmp_path, progress=False)
    # a change that does not touch the method's sections keeps its results
    reused = run_study(_config(methods=["dip"], figures={"enabled": False},
                               mcdo={"num_samples": 8}), tmp_path, progress=False)
    assert reused.computed == []


def test_dip_evidence_can_take_the_linearised_mll_noise_variance(tmp_path):
    cfg = _config(methods=["dip-evidence", "lin-dip-mll"], dip_evidence={"noise_variance": "mll"},
                  settings=[{"angles": 8, "noise": 0.05, "images": ["shepp_logan"], "size": 16}],
                  figures={"enabled": False})
    by = {r["method"]: r for r in run_study(cfg, tmp_path, progress=False).records}
    sigma2 = by["lin-dip-mll"]["info"]["noise_variance"]
    assert by["dip-evidence"]["info"]["noise_variance"] == pytest.approx(sigma2, rel=1e-12)
    # the pixel variance is σ_y² times the pseudo-inverse factor c_A
    info = by["dip-evidence"]["info"]
    assert info["pixel_variance"] == pytest.approx(sigma2 * info["variance_factor"], rel=1e-12)


def test_evidence_can_hold_the_noise_at_the_dips_residual(tmp_path, monkeypatch):
    """``evidence.noise_variance: residual`` (the command line's choice): the evidence starts
    at the DIP's mean squared residual ``‖y − A x̂‖²/m`` and keeps it."""
    from bayes_dip.linearized import LinearizedDIP

    seen = {}
    optimize = LinearizedDIP.optimize_hyperparameters

    def spy(self, *args, **kwargs):
        seen.update(start=float(self.model.noise_variance.detach()),
                    residual=float(self.model.residual.square().mean()),
                    learn=kwargs.get("learn_noise_variance", True))
        return optimize(self, *args, **kwargs)

    monkeypatch.setattr(LinearizedDIP, "optimize_hyperparameters", spy)
    cfg = _config(methods=["lin-dip-tvmap"], evidence={"steps": 3, "noise_variance": "residual"},
                  settings=[{"angles": 8, "noise": 0.05, "images": ["shepp_logan"], "size": 16}],
                  figures={"enabled": False})
    record, = run_study(cfg, tmp_path, progress=False).records
    assert seen["start"] == pytest.approx(seen["residual"], rel=1e-6) and not seen["learn"]
    assert record["info"]["noise_variance"] == pytest.approx(seen["residual"], rel=1e-6)
