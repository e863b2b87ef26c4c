"""experiments/bench_scale.py: every stage timed at tiny sizes, the scaling fit against a known
power law, the Walnut geometry and network sizes, and one clear error per bad argument."""
from __future__ import annotations

import math

import pytest
import torch

from repo_scripts import load_script
from bayes_dip.dip import unet_preset


bench = load_script("experiments/bench_scale.py")


def test_quick_path_times_every_stage_at_tiny_sizes():
    lines: list[str] = []
    settings = bench.BenchSettings(reps=1, columns=2, rank=2, clock="cpu")
    table = bench.run_benchmark([24, 16], settings, torch.device("cpu"), log=lines.append)
    assert table.names == ["default 16²", "default 24²"]  # ascending
    differences = {"dip_iteration", "evidence_step"}  # timed as long run − short run
    for row in table.rows:
        assert set(row) == set(bench.STAGES)
        assert all(math.isfinite(r.seconds) and r.gib > 0 for r in row.values())
        assert all(r.seconds > 0 for stage, r in row.items() if stage not in differences)
    assert set(table.exponents) == set(bench.STAGES)
    for stage, p in table.exponents.items():  # NaN only where a difference came out <= 0
        assert math.isfinite(p) == all(row[stage].seconds > 0 for row in table.rows)
    text = table.markdown()
    assert all(stage in text for stage in bench.STAGES) and "exponent" in text
    for name in table.names:  # a progress line per stage
        assert all(any(f"{name} {stage}:" in line for line in lines) for stage in bench.STAGES)


def test_scaling_exponent_recovers_a_power_law():
    pixels = [64 ** 2, 128 ** 2, 256 ** 2]
    rows = [{s: bench.StageResult(3e-6 * n ** (0.5 + i / 4), 1.0)
             for i, s in enumerate(bench.STAGES)} for n in pixels]
    exponents = bench.scaling_exponents(pixels, rows)
    for i, stage in enumerate(bench.STAGES):
        assert exponents[stage] == pytest.approx(0.5 + i / 4, abs=1e-9)


def test_walnut_geometry_and_network_are_the_papers():
    geometry = bench.walnut_geometry()
    assert geometry.im_shape == (501, 501) and geometry.obs_shape == (60, 128)
    assert geometry.num_angles * geometry.num_detectors == 7680
    assert geometry.pixel_size * 501 == pytest.approx(50.1)  # mm
    net = unet_preset("walnut")
    modules = dict(net.named_modules())
    under_prior = sum(modules[m].weight.numel() for b in net.prior_blocks() for m in b.modules)
    # 6 scales of 128 channels: inc 1·128·9, 5 down blocks 2·(128·128·9), 5 up blocks
    # (128 + skip)·128·9 + 128·128·9 with skip 4 in the two coarsest, 1×1 skips 2·128·4, outc 128
    assert under_prior == (1152 + 5 * 2 * 147456 + 5 * (147456 + 147456) + 2 * 4 * 128 * 9
                           + 2 * 128 * 4 + 128) == 2_960_640
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(2.97e6, rel=1e-3)


@pytest.mark.parametrize("argv,name", [(["--sizes", "8,64"], "--sizes"),
                                       (["--sizes", "64,x"], "--sizes"),
                                       (["--reps", "0"], "--reps"),
                                       (["--columns", "1"], "--columns"),
                                       (["--device", "tpu"], "--device"),
                                       (["--clock", "gpu"], "--clock"),
                                       (["--clock", "cpu", "--threads", "2"], "--clock"),
                                       (["--quick", "--sizes", "64"], "--quick")])
def test_bad_arguments_name_the_argument(argv, name, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert name in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--device", "cuda"])
    err = capsys.readouterr().err
    assert "--device" in err and "no CUDA GPU" in err
