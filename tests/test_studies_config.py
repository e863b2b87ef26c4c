"""Study config schema: expansion of settings, merging of image lists, clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bayes_dip.studies import StudyConfig, load_study_config
from bayes_dip.studies.script import study_config, study_parser


def _base(**overrides):
    cfg = dict(name="t", methods=["dip", "mcdo"],
               settings=[{"angles": [5, 10], "noise": [0.05, 0.1], "kmnist": 3},
                         {"angles": 10, "noise": 0.05, "kmnist": 5}])
    cfg.update(overrides)
    return cfg


def test_grid_expands_to_product_and_merges_image_lists():
    cfg = StudyConfig.from_dict(_base())
    keys = [s.key for s in cfg.settings]
    assert keys == ["a5_n5pct", "a5_n10pct", "a10_n5pct", "a10_n10pct"]
    by_key = {s.key: s for s in cfg.settings}
    assert by_key["a10_n5pct"].images == tuple(f"kmnist:{k}" for k in range(5))
    assert by_key["a5_n10pct"].images == ("kmnist:0", "kmnist:1", "kmnist:2")
    assert by_key["a10_n10pct"].label == "10 angles, 10 % noise"


def test_yaml_round_trip(tmp_path):
    cfg = StudyConfig.from_dict(_base(dip={"iterations": 7}, metrics={"patch_size": 4}))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    again = load_study_config(path)
    assert again == cfg
    assert again.dip.iterations == 7 and again.metrics.patch_size == 4


def test_real_scan_and_named_images():
    cfg = StudyConfig.from_dict(_base(settings=[
        {"htc2022": "htc2022/htc2022_ta_sparse_example.mat", "size": 64},
        {"angles": 30, "noise": 0.02, "images": ["dicom", "shepp_logan", "kmnist:04"], "size": 28}]))
    real, sim = cfg.settings
    assert real.kind == "htc2022" and real.images == ("htc2022:htc2022_ta_sparse_example",)
    assert real.key == "htc2022_htc2022_ta_sparse_example_s64"
    assert sim.images == ("dicom", "shepp_logan", "kmnist:4") and sim.key == "a30_n2pct_s28"


@pytest.mark.parametrize("change, match", [
    (dict(colour="red"), "unknown key"),
    (dict(methods=["dip", "ensemble"]), "unknown method"),
    (dict(methods=["dip", "dip"]), "repeat"),
    (dict(settings=[]), "settings"),
    (dict(settings=[{"angles": 5, "noise": 1.5, "kmnist": 2}]), "noise"),
    (dict(settings=[{"angles": 0, "noise": 0.05, "kmnist": 2}]), "angles"),
    (dict(settings=[{"noise": 0.05, "kmnist": 2}]), "missing 'angles'"),
    (dict(settings=[{"angles": 5, "noise": 0.05, "kmnist": 2, "images": ["dicom"]}]), "exactly one"),
    (dict(settings=[{"angles": 5, "noise": 0.05, "kmnist": 2, "size": 64}]), "28x28"),
    (dict(settings=[{"angles": 5, "noise": 0.05, "images": ["mnist:3"]}]), "unknown image id"),
    (dict(settings=[{"htc2022": "a.mat", "angles": 5}]), "real htc2022 scan"),
    (dict(dip={"iterations": 0}), "dip: iterations"),
    (dict(dip={"momentum": 0.9}), "dip: unknown DIPConfig"),
    (dict(mcdo={"gamma": 1e-4}), "without TV"),
    (dict(mcdo={"dropout_p": 1.0}), "dropout_p"),
    (dict(metrics={"patch": 2}), "metrics: unknown"),
    (dict(unet={"preset": "huge"}), "unet: name must be one of"),
    (dict(unet={"channels": [8, 8], "skip_channels": [0]}), "unet: skip_channels"),
    (dict(methods=["dip-evidence"], dip_evidence={"noise_variance": "paper"}),
     "dip_evidence.noise_variance"),
    (dict(figures={"formats": ["gif"]}), "figures.formats"),
])
def test_bad_config_raises_naming_the_key(change, match):
    with pytest.raises(ValueError, match=match):
        StudyConfig.from_dict(_base(**change))


def test_linearized_sections_are_checked():
    base = _base(methods=["lin-dip-mll", "lin-dip-tvmap"])
    with pytest.raises(ValueError, match="evidence: unknown"):
        StudyConfig.from_dict({**base, "evidence": {"stepz": 3}})
    with pytest.raises(ValueError, match="evidence.mode"):
        StudyConfig.from_dict({**base, "evidence": {"mode": "approximate"}})
    with pytest.raises(ValueError, match="predictive.num_samples"):
        StudyConfig.from_dict({**base, "predictive": {"num_samples": 1}})
    with pytest.raises(ValueError, match="tvmap.predcp_scale"):
        StudyConfig.from_dict({**base, "tvmap": {"predcp_scale": -1}})
    with pytest.raises(ValueError, match="dip.gamma"):
        StudyConfig.from_dict({**base, "dip": {"gamma": 0.0}})
    with pytest.raises(ValueError, match="evidence.noise_variance"):
        StudyConfig.from_dict({**base, "evidence": {"noise_variance": "resid"}})
    with pytest.raises(ValueError, match="learn_noise_variance"):
        StudyConfig.from_dict({**base, "evidence": {"noise_variance": "residual",
                                                    "learn_noise_variance": True}})
    StudyConfig.from_dict({**base, "evidence": {"noise_variance": "residual"}})


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_study_config(tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(TypeError, match="mapping"):
        load_study_config(path)
    with pytest.raises(TypeError, match="config must be"):
        load_study_config(3)


EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


@pytest.mark.parametrize("name", ["kmnist_grid.yaml", "htc2022.yaml", "anatomy.yaml"])
def test_experiment_configs_are_valid(name):
    cfg = load_study_config(EXPERIMENTS / name)
    assert cfg.settings and cfg.methods


def test_kmnist_grid_is_the_notes_default_run():
    cfg = load_study_config(EXPERIMENTS / "kmnist_grid.yaml")
    counts = {(s.angles, s.noise): len(s.images) for s in cfg.settings}
    assert len(counts) == 8
    assert counts.pop((20, 0.05)) == 10 and set(counts.values()) == {3}


def test_script_overrides(tmp_path):
    parser = study_parser("t", EXPERIMENTS / "kmnist_grid.yaml", "out", images_option=True)
    args = parser.parse_args(["--images", "4", "--data-root", str(tmp_path), "--smoke"])
    cfg = StudyConfig.from_dict(study_config(args, {"dip": {"iterations": 5}}))
    assert cfg.name == "kmnist-grid-smoke" and cfg.dip.iterations == 5
    assert cfg.data_root == str(tmp_path)
    assert all(len(s.images) == 4 for s in cfg.settings)
