"""`bayes-dip reconstruct`: end-to-end smoke run and one clear error per kind of bad input."""
from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from bayes_dip.cli import main


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["reconstruct", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _fails_cleanly(capsys, tmp_path, *args: str, expect: tuple[str, ...],
                   out=None, within: float = 60.0) -> None:
    out = tmp_path / "out" if out is None else out
    start = time.perf_counter()
    code, _, err = _run(capsys, *args, "--out", str(out), "--quiet")
    assert time.perf_counter() - start < within, "checked only after work started"
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for word in expect:
        assert word in err, err
    if out.parent == tmp_path:
        assert not out.exists() or out.is_file()
        assert [p for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
        assert not out.with_name(out.name + ".partial").exists()


def test_kmnist_end_to_end(capsys, tmp_path, data_root):
    out = tmp_path / "run"
    code, stdout, _ = _run(capsys, "--kmnist", "0", "--data-root", str(data_root), "--angles", "10",
                           "--iterations", "30", "--out", str(out), "--quiet", "--no-uncertainty")
    assert code == 0, stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["problem"]["angles"] == 10 and metrics["dip"]["iterations"] == 30
    assert np.isfinite(metrics["dip_quality"]["psnr"])
    recon = np.load(out / "reconstruction.npy")
    assert recon.shape == (28, 28) and np.isfinite(recon).all()
    assert (out / "reconstruction.png").stat().st_size > 0
    assert "PSNR" in stdout


def test_yaml_config_and_flag_precedence(capsys, tmp_path, data_root):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"kmnist: 1\ndata-root: {data_root}\nangles: 7\niterations: 5\nuncertainty: false\n")
    out = tmp_path / "run"
    code, _, err = _run(capsys, "--config", str(cfg), "--angles", "8", "--out", str(out), "--quiet")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["problem"]["angles"] == 8 and metrics["problem"]["source"] == "kmnist:1"


def test_unknown_config_key(capsys, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("angels: 7\n")
    _fails_cleanly(capsys, tmp_path, "--config", str(cfg), expect=("--config", "angels"))


def test_non_square_image(capsys, tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((20, 30), dtype=np.uint8)).save(path)
    _fails_cleanly(capsys, tmp_path, "--image", str(path), expect=("--image", "square"))


def test_unreadable_image(capsys, tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not a png")
    _fails_cleanly(capsys, tmp_path, "--image", str(path), expect=("--image",))


def test_wrong_array_shape_and_dtype(capsys, tmp_path):
    path = tmp_path / "volume.npy"
    np.save(path, np.zeros((4, 8, 8)))
    _fails_cleanly(capsys, tmp_path, "--image", str(path), expect=("--image",))
    path = tmp_path / "complex.npy"
    np.save(path, np.zeros((8, 8), dtype=np.complex64))
    _fails_cleanly(capsys, tmp_path, "--image", str(path), expect=("--image",))


def test_missing_data_folder(capsys, tmp_path):
    _fails_cleanly(capsys, tmp_path, "--kmnist", "0", "--data-root", str(tmp_path / "nowhere"),
                   expect=("--kmnist", "nowhere"))


def _htc_mat(path, sinogram, angles_deg):
    params = dict(angles=angles_deg, distanceSourceOrigin=410.66, distanceSourceDetector=553.74,
                  effectivePixelSizePost=0.1483, geometricMagnification=553.74 / 410.66,
                  numDetectorsPost=sinogram.shape[1])
    scipy.io.savemat(path, {"CtDataLimited": {"sinogram": sinogram, "parameters": params}})


def test_nan_in_sinogram(capsys, tmp_path):
    sino = np.ones((5, 560))
    sino[2, 7] = np.nan
    _htc_mat(tmp_path / "scan.mat", sino, np.arange(5.0))
    _fails_cleanly(capsys, tmp_path, "--htc2022", str(tmp_path / "scan.mat"), expect=("--htc2022", "NaN"))


def test_angles_not_matching_sinogram_rows(capsys, tmp_path):
    _htc_mat(tmp_path / "scan.mat", np.ones((5, 560)), np.arange(6.0))
    _fails_cleanly(capsys, tmp_path, "--htc2022", str(tmp_path / "scan.mat"), expect=("--htc2022", "angles"))


@pytest.mark.parametrize("args, expect", [
    (("--angles", "0"), ("angles",)),
    (("--noise", "-0.1"), ("noise",)),
    (("--iterations", "-5"), ("iterations",)),
    (("--device", "cuda:7"), ("device",)),
])
def test_bad_numbers(capsys, tmp_path, args, expect):
    _fails_cleanly(capsys, tmp_path, *args, expect=expect)


@pytest.mark.parametrize("method", ["lin-dip-tvmap", "lin-dip-mll", "mcdo", "dip-evidence", "dip"])
def test_uncertainty_methods(capsys, tmp_path, data_root, method):
    out = tmp_path / method
    code, stdout, err = _run(capsys, "--kmnist", "0", "--data-root", str(data_root), "--angles", "10",
                             "--iterations", "20", "--evidence-steps", "3", "--samples", "4",
                             "--mcdo-samples", "64",
                             "--method", method, "--out", str(out), "--quiet")
    assert code == 0, err
    unc = json.loads((out / "metrics.json").read_text())["uncertainty"]
    std = np.load(out / "std.npy")
    assert std.shape == (28, 28) and (std > 0).all()
    assert np.isfinite(unc["test_log_likelihood_per_pixel"])
    assert 0 <= unc["coverage"]["0.68"] <= unc["coverage"]["0.95"] <= 1
    assert (out / "error_vs_std.png").is_file()
    if method.startswith("lin-dip") or method == "mcdo":
        assert np.load(out / "samples.npy").shape[1:] == (28, 28)
    else:  # homoscedastic: no samples
        assert not (out / "samples.npy").exists()


def test_lowrank_evidence(capsys, tmp_path, data_root):
    out = tmp_path / "lowrank"
    code, _, err = _run(capsys, "--kmnist", "1", "--data-root", str(data_root), "--angles", "5",
                        "--iterations", "20", "--evidence", "lowrank", "--evidence-steps", "5",
                        "--samples", "4", "--out", str(out), "--quiet")
    assert code == 0, err
    unc = json.loads((out / "metrics.json").read_text())["uncertainty"]
    assert unc["mode"] == "lowrank" and unc["method"] == "Linearised DIP (TV-MAP)"
    assert np.isfinite(unc["test_log_likelihood_per_pixel"])
    assert (np.load(out / "std.npy") > 0).all()


def test_calibrate_runs_a_tiny_study(capsys, tmp_path):
    cfg = tmp_path / "study.yaml"
    cfg.write_text(
        "name: cli-tiny\nmethods: [dip, lin-dip-mll]\n"
        "settings: [{angles: 6, noise: 0.05, images: [shepp_logan], size: 16}]\n"
        "unet: {preset: kmnist, channels: [4, 4], skip_channels: [0, 2]}\n"
        "dip: {iterations: 20, lr: 0.01}\nevidence: {steps: 2}\nfigures: {enabled: false}\n")
    out = tmp_path / "study"
    assert main(["calibrate", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "Linearised DIP (MLL)" in table and (out / "table.md").is_file() and (out / "table.csv").is_file()


def test_calibrate_checks_out_and_threads_first(capsys, tmp_path):
    cfg = tmp_path / "study.yaml"
    cfg.write_text("name: x\n")
    for args, option in ((["--out", "/proc/nope"], "--out"), (["--threads", "0"], "--threads")):
        assert main(["calibrate", "--config", str(cfg), *args]) == 2
        err = capsys.readouterr().err
        assert option in err and "Traceback" not in err


def test_calibrate_missing_config(capsys, tmp_path):
    assert main(["calibrate", "--config", str(tmp_path / "none.yaml")]) == 2
    err = capsys.readouterr().err
    assert "--config" in err and "Traceback" not in err


def test_calibrate_report_only_computes_nothing(capsys, tmp_path, monkeypatch):
    study = ("name: cli-report\nmethods: [dip]\n"
             "settings: [{{angles: 6, noise: 0.05, images: {images}, size: 16}}]\n"
             "unet: {{preset: kmnist, channels: [4, 4], skip_channels: [0, 2]}}\n"
             "dip: {{iterations: 20, lr: 0.01}}\nfigures: {{enabled: false}}\n")
    cfg, out = tmp_path / "study.yaml", tmp_path / "study"
    cfg.write_text(study.format(images="[shepp_logan]"))
    assert main(["calibrate", "--config", str(cfg), "--out", str(out), "--quiet",
                 "--workers", "0"]) == 0
    capsys.readouterr()
    # one more image in the config: --report-only tabulates the finished one, runs nothing
    cfg.write_text(study.format(images="[shepp_logan, dicom]"))
    monkeypatch.setattr("bayes_dip.studies.runner.run_image_task",
                        lambda *args: pytest.fail("--report-only computed a result"))
    (out / "table.md").unlink()
    assert main(["calibrate", "--config", str(cfg), "--out", str(out), "--report-only"]) == 0
    assert "DIP (σ²=1)" in capsys.readouterr().out and (out / "table.md").is_file()
    assert not (out / "results" / "a6_n5pct_s16" / "dicom").exists()
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        if folder.name == "empty":
            folder.mkdir()
        assert main(["calibrate", "--config", str(cfg), "--out", str(folder),
                     "--report-only"]) == 2
        err = capsys.readouterr().err
        assert "no finished results" in err and str(folder) in err and "Traceback" not in err
    assert not (tmp_path / "missing").exists() and list((tmp_path / "empty").iterdir()) == []


def test_out_is_an_existing_file(capsys, tmp_path):
    path = tmp_path / "out"
    path.write_text("keep me")
    _fails_cleanly(capsys, tmp_path, out=path, expect=("--out", "file"), within=10)
    assert path.read_text() == "keep me"


@pytest.mark.parametrize("where", ["/proc/nope", "/proc/nope/deeper"])
def test_out_cannot_be_created(capsys, tmp_path, where):
    from pathlib import Path
    _fails_cleanly(capsys, tmp_path, out=Path(where), expect=("--out", where), within=10)


@pytest.mark.parametrize("angles", ["1000000", "100000"])
def test_absurd_angles_refused_with_a_memory_estimate(capsys, tmp_path, angles):
    _fails_cleanly(capsys, tmp_path, "--angles", angles,
                   expect=("--angles", angles, "GiB", "available", "--force"), within=10)


def test_absurd_size_refused_with_a_memory_estimate(capsys, tmp_path):
    _fails_cleanly(capsys, tmp_path, "--size", "20000", expect=("--size", "GiB"), within=10)


@pytest.mark.parametrize("args, expect", [
    (("--angles", "10", "--noise", "0.2"), ("--angles/--noise", "--htc2022")),
    (("--noise", "0.2"), ("--noise", "--htc2022")),
])
def test_simulation_options_refused_for_a_measured_scan(capsys, tmp_path, args, expect):
    _htc_mat(tmp_path / "scan.mat", np.ones((5, 560)), np.arange(5.0))
    _fails_cleanly(capsys, tmp_path, "--htc2022", str(tmp_path / "scan.mat"), *args,
                   expect=expect, within=10)


@pytest.mark.parametrize("threads", ["0", "-1"])
def test_bad_threads(capsys, tmp_path, threads):
    _fails_cleanly(capsys, tmp_path, "--threads", threads, expect=("--threads",), within=10)


@pytest.mark.parametrize("device", ["bogus", "cuda:99"])
def test_bad_device(capsys, tmp_path, device):
    _fails_cleanly(capsys, tmp_path, "--device", device, expect=("--device", device), within=10)


def test_run_time_estimate_is_printed_before_work(capsys, tmp_path, data_root):
    code, _, err = _run(capsys, "--kmnist", "0", "--data-root", str(data_root), "--angles", "5",
                        "--iterations", "5", "--no-uncertainty", "--out", str(tmp_path / "run"))
    assert code == 0, err
    first = err.splitlines()[0]  # the figures depend on this machine's speed and load
    assert re.fullmatch(r"bayes-dip reconstruct: 28x28 pixels; estimated run time about "
                        r"[\d.]+(–[\d.]+)? (min|h) \(DIP at most [\d.]+ (min|h); "
                        r"one DIP step here: [\d.e+-]+ s\)", first), first


def test_threads_and_inapplicable_options_warn(capsys, tmp_path, data_root):
    out = tmp_path / "run"
    torch.set_num_threads(2)
    code, _, err = _run(capsys, "--kmnist", "0", "--data-root", str(data_root), "--angles", "5",
                        "--iterations", "5", "--no-uncertainty", "--evidence-steps", "3",
                        "--threads", "1", "--out", str(out), "--quiet")
    assert code == 0, err
    assert torch.get_num_threads() == 1
    warning = [line for line in err.splitlines() if "warning" in line]
    assert warning == ["bayes-dip: warning: --evidence-steps applies to --method lin-dip-* only; "
                       "ignored"]
    assert not (tmp_path / "run.partial").exists()  # checkpoints go once the run is done
    code, _, err = _run(capsys, "--image", str(tmp_path / "x.png"), "--data-root", str(data_root),
                        "--out", str(out), "--quiet")
    assert code == 2 and "--data-root applies to --kmnist only" in err


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["reconstruct", "--help"])
    rec = capsys.readouterr().out
    for text in (top, rec):
        assert "``" not in text and ":func:" not in text
    for phrase in ("CT_small.dcm", "5 to 8 minutes", "balancing principle", "--no-uncertainty",
                   "--threads",
                   "<out>.partial", "--restart", "--htc2022 FILE is a measured"):
        assert phrase in rec, phrase


def test_run_reconstruct_without_checkpoint_dir_leaves_no_checkpoints(tmp_path, data_root):
    """The Python entry point (used by the benchmark scripts) checkpoints into a temporary
    folder that goes with the run."""
    from bayes_dip.cli import RECONSTRUCT_DEFAULTS
    from bayes_dip.reconstruct import run_reconstruct

    out = tmp_path / "run"
    settings = dict(RECONSTRUCT_DEFAULTS, kmnist=0, data_root=str(data_root), angles=5,
                    iterations=5, method="dip-evidence", out=str(out), quiet=True)
    metrics = run_reconstruct(settings)
    assert metrics["uncertainty"]["method"] == "DIP (evidence σ²)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
