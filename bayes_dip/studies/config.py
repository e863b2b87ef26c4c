"""Study configuration: the YAML schema, its validation and the expansion of settings.

A study is a list of *settings* (one CT problem family: angles × noise of a simulated
scan, or one real scan), each with its images, times a list of *methods*. Schema::

    name: kmnist-grid              # required, used in titles and file names
    methods: [dip, dip-evidence, mcdo, lin-dip-mll, lin-dip-tvmap]   # required
    settings:                      # required; list values expand to their product
      - {angles: [5, 10, 20, 30], noise: [0.05, 0.10], kmnist: 3}    # first 3 test images
      - {angles: 20, noise: 0.05, kmnist: 10}   # same setting again: image lists merge
      - {angles: 30, noise: 0.05, images: [dicom, shepp_logan], size: 64}
      - {htc2022: htc2022/htc2022_ta_sparse_example.mat, size: 128}  # real scan
    seed: 0                        # noise, network initialisation, sampling
    data_root: null                # default $BAYES_DIP_DATA (KMNIST, HTC2022 paths)
    size: null                     # default image side for `images` (resize)
    device: cpu
    unet: {preset: kmnist}         # unet_preset name + overrides (channels, ...)
    dip: {iterations: 3000, lr: 1e-3, gamma: 1e-4}     # DIPConfig fields
    dip_evidence: {noise_variance: own}   # or mll: σ_y² of the linearised DIP's MLL
    mcdo: {}                       # bayes_dip.baselines MC-dropout settings
    evidence: {}                   # bayes_dip.linearized evidence settings (MLL and TV-MAP);
                                   # noise_variance: residual holds σ_y² at the DIP's misfit
    tvmap: {}                      # predcp_scale (1), predcp_samples, predcp_rule (residual | paper)
    predictive: {}                 # bayes_dip.linearized predictive settings
    metrics: {patch_size: 2, full_covariance_max_pixels: 4096}
    figures: {enabled: true, formats: [png, pdf], images: 1, gallery_samples: 8}

Image ids: ``kmnist:<index>``, ``dicom`` (pydicom's embedded CT slice), ``dicom:<path>``,
``shepp_logan``, ``file:<path>`` (.dcm/.png/.npy). ``kmnist: N`` is short for the first
``N`` test images. Real scans (``htc2022``, relative to ``data_root`` unless absolute)
take no ``angles``/``noise`` and have one image, the scan itself.
"""
from __future__ import annotations

import itertools
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bayes_dip.checks import check_int
from bayes_dip.dip import DIPConfig, unet_preset

__all__ = ["Setting", "MetricsOptions", "FigureOptions", "StudyConfig", "load_study_config"]

_TOP_KEYS = {"name", "methods", "settings", "seed", "data_root", "size", "device", "unet", "dip",
             "dip_evidence", "mcdo", "evidence", "tvmap", "predictive", "metrics", "figures"}
_SETTING_KEYS = {"angles", "noise", "images", "kmnist", "size", "htc2022", "detector_binning"}
_NAMED_IMAGES = ("dicom", "shepp_logan")


@dataclass(frozen=True)
class Setting:
    """One problem family of a study.

    ``kind`` is ``"simulated"`` (parallel beam, ``angles``, relative ``noise``) or
    ``"htc2022"`` (the real scan at ``htc2022``); ``images`` are image ids; ``size`` the
    image side (``None``: native). ``key`` names its folder in the study output.
    """

    kind: str
    images: tuple[str, ...]
    angles: int | None = None
    noise: float | None = None
    size: int | None = None
    htc2022: str | None = None
    detector_binning: int = 4

    @property
    def key(self) -> str:
        if self.kind == "htc2022":
            return f"htc2022_{Path(self.htc2022).stem}_s{self.size}"
        key = f"a{self.angles}_n{self.noise * 100:g}pct"
        return key if self.size is None else f"{key}_s{self.size}"

    @property
    def label(self) -> str:
        """Human-readable description for tables and figure titles."""
        if self.kind == "htc2022":
            return f"HTC2022 {Path(self.htc2022).stem} ({self.size}²)"
        text = f"{self.angles} angles, {self.noise * 100:g} % noise"
        return text if self.size is None else f"{text}, {self.size}²"

    def params(self) -> dict[str, Any]:
        """Plain values that identify the problem (without the image list)."""
        out = asdict(self)
        out.pop("images")
        return out


@dataclass(frozen=True)
class MetricsOptions:
    """``patch_size``: patches of the patchwise test log-likelihood, used where no full
    covariance is available; ``full_covariance_max_pixels``: images up to this many pixels
    use a full (sample) covariance when a method gives samples but no covariance."""

    patch_size: int = 2
    full_covariance_max_pixels: int = 4096


@dataclass(frozen=True)
class FigureOptions:
    """``images``: per setting, how many images get panel figures; ``gallery_samples``:
    predictive samples stored per result and shown in the sample gallery."""

    enabled: bool = True
    formats: tuple[str, ...] = ("png", "pdf")
    images: int = 1
    gallery_samples: int = 8


@dataclass(frozen=True)
class StudyConfig:
    """A validated study (see the module docstring for the YAML schema)."""

    name: str
    methods: tuple[str, ...]
    settings: tuple[Setting, ...]
    seed: int = 0
    data_root: str | None = None
    device: str = "cpu"
    unet: dict = field(default_factory=dict)
    dip: DIPConfig = field(default_factory=DIPConfig)
    dip_evidence: dict = field(default_factory=dict)
    mcdo: dict = field(default_factory=dict)
    evidence: dict = field(default_factory=dict)
    tvmap: dict = field(default_factory=dict)
    predictive: dict = field(default_factory=dict)
    metrics: MetricsOptions = field(default_factory=MetricsOptions)
    figures: FigureOptions = field(default_factory=FigureOptions)

    def section(self, name: str) -> Any:
        """A configuration section as plain values (for fingerprints and ``study.yaml``)."""
        value = getattr(self, name)
        if isinstance(value, DIPConfig):
            return value.to_dict()
        if isinstance(value, (MetricsOptions, FigureOptions)):
            out = asdict(value)
            return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
        return value

    def to_dict(self) -> dict[str, Any]:
        """The expanded configuration as plain values (round-trips through
        :meth:`from_dict`; settings appear one per problem family)."""
        settings = []
        for s in self.settings:
            entry: dict[str, Any] = {"size": s.size}
            if s.kind == "htc2022":
                entry.update(htc2022=s.htc2022, detector_binning=s.detector_binning)
            else:
                entry.update(angles=s.angles, noise=s.noise, images=list(s.images))
            settings.append(entry)
        out = {"name": self.name, "methods": list(self.methods), "settings": settings,
               "seed": self.seed, "data_root": self.data_root, "device": self.device}
        for name in ("unet", "dip", "dip_evidence", "mcdo", "evidence", "tvmap", "predictive",
                     "metrics", "figures"):
            out[name] = self.section(name)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "StudyConfig":
        """Validate a mapping (e.g. parsed YAML); errors name the offending key."""
        from bayes_dip.studies.methods import METHODS

        if not isinstance(values, dict):
            raise TypeError(f"config must be a mapping of option: value, got {type(values).__name__}")
        unknown = sorted(set(values) - _TOP_KEYS)
        if unknown:
            raise ValueError(f"config: unknown key(s) {unknown}; known: {sorted(_TOP_KEYS)}")
        for key in ("name", "methods", "settings"):
            if key not in values:
                raise ValueError(f"config: missing required key {key!r}")
        name = values["name"]
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        methods = values["methods"]
        if (not isinstance(methods, list) or not methods
                or not all(isinstance(m, str) for m in methods)):
            raise ValueError(f"methods must be a non-empty list of method names, got {methods!r}")
        bad = [m for m in methods if m not in METHODS]
        if bad:
            raise ValueError(f"methods: unknown method(s) {bad}; known: {sorted(METHODS)}")
        if len(set(methods)) != len(methods):
            raise ValueError(f"methods must not repeat a name, got {methods}")
        seed = values.get("seed", 0)
        check_int(seed, "seed", 0)
        data_root = values.get("data_root")
        if data_root is not None and not isinstance(data_root, (str, os.PathLike)):
            raise TypeError(f"data_root must be a path or null, got {data_root!r}")
        size = values.get("size")
        if size is not None:
            check_int(size, "size", 1)
        device = values.get("device", "cpu")
        if not isinstance(device, str):
            raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {device!r}")
        sections = {}
        for key in ("unet", "dip_evidence", "mcdo", "evidence", "tvmap", "predictive"):
            section = values.get(key) or {}
            if not isinstance(section, dict):
                raise TypeError(f"{key} must be a mapping, got {type(section).__name__}")
            sections[key] = dict(section)
        dip_values = values.get("dip") or {}
        if not isinstance(dip_values, dict):
            raise TypeError(f"dip must be a mapping of DIPConfig fields, got {type(dip_values).__name__}")
        try:
            dip = DIPConfig.from_dict(dip_values)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"dip: {exc}") from exc
        _check_unet(sections["unet"], dip)
        config = cls(name=name.strip(), methods=tuple(methods),
                   settings=_expand_settings(values["settings"], size),
                   seed=int(seed), data_root=None if data_root is None else str(data_root),
                   device=device, dip=dip,
                   metrics=_options(MetricsOptions, values.get("metrics"), "metrics"),
                   figures=_options(FigureOptions, values.get("figures"), "figures"),
                   **sections)
        for method in config.methods:
            METHODS[method].check(config)
        return config


def load_study_config(config: "StudyConfig | dict | str | os.PathLike") -> StudyConfig:
    """A :class:`StudyConfig` from itself, a mapping, or a YAML file path."""
    if isinstance(config, StudyConfig):
        return config
    if isinstance(config, dict):
        return StudyConfig.from_dict(config)
    if not isinstance(config, (str, os.PathLike)):
        raise TypeError(f"config must be a StudyConfig, a dict or a YAML path, "
                        f"got {type(config).__name__}")
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"config: file {str(path)!r} not found")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"config: {path} is not valid YAML ({exc})") from exc
    return StudyConfig.from_dict(values if values is not None else {})


def _check_unet(options: dict, dip: DIPConfig) -> None:
    """Build the configured U-Net once, so a bad preset or override fails at load time."""
    if not options:
        return
    options = dict(options)
    preset = options.pop("preset", dip.unet or "kmnist")
    if not isinstance(preset, str):
        raise TypeError(f"unet.preset must be a preset name, got {preset!r}")
    try:
        unet_preset(preset, **options)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"unet: {exc}") from exc


def _options(cls, values: Any, name: str):
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise TypeError(f"{name} must be a mapping, got {type(values).__name__}")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{name}: unknown key(s) {unknown}; known: {sorted(known)}")
    out = cls(**values)
    if cls is MetricsOptions:
        check_int(out.patch_size, f"{name}.patch_size", 1)
        check_int(out.full_covariance_max_pixels, f"{name}.full_covariance_max_pixels", 0)
    else:
        if not isinstance(out.enabled, bool):
            raise TypeError(f"{name}.enabled must be true or false, got {out.enabled!r}")
        formats = out.formats
        if (not isinstance(formats, (list, tuple)) or not formats
                or any(f not in ("png", "pdf", "svg") for f in formats)):
            raise ValueError(f"{name}.formats must be a non-empty list of png/pdf/svg, got {formats!r}")
        check_int(out.images, f"{name}.images", 0)
        check_int(out.gallery_samples, f"{name}.gallery_samples", 0)
        out = cls(enabled=out.enabled, formats=tuple(formats), images=out.images,
                  gallery_samples=out.gallery_samples)
    return out


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check_image_id(image: Any, where: str) -> str:
    if not isinstance(image, str):
        raise TypeError(f"{where}: image ids must be strings, got {image!r}")
    kind, _, arg = image.partition(":")
    if image in _NAMED_IMAGES or (kind in ("dicom", "file") and arg):
        return image
    if kind == "kmnist" and arg.isdigit():
        return f"kmnist:{int(arg)}"
    raise ValueError(f"{where}: unknown image id {image!r}; expected kmnist:<index>, dicom, "
                     "dicom:<path>, shepp_logan or file:<path>")


def _expand_settings(entries: Any, default_size: int | None) -> tuple[Setting, ...]:
    if not isinstance(entries, list) or not entries:
        raise ValueError("settings must be a non-empty list of mappings")
    merged: dict[str, Setting] = {}
    for i, entry in enumerate(entries):
        where = f"settings[{i}]"
        if not isinstance(entry, dict):
            raise TypeError(f"{where} must be a mapping, got {type(entry).__name__}")
        unknown = sorted(set(entry) - _SETTING_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(_SETTING_KEYS)}")
        sources = [k for k in ("images", "kmnist", "htc2022") if k in entry]
        if len(sources) != 1:
            raise ValueError(f"{where} must have exactly one of images, kmnist, htc2022; "
                             f"got {sources or 'none'}")
        size = entry.get("size", default_size)
        if size is not None:
            check_int(size, f"{where}.size", 1)
        for setting in _expand_entry(entry, sources[0], size, where):
            old = merged.get(setting.key)
            if old is not None:
                images = old.images + tuple(im for im in setting.images if im not in old.images)
                setting = Setting(**{**asdict(old), "images": images})
            merged[setting.key] = setting
    return tuple(merged.values())


def _expand_entry(entry: dict, source: str, size: int | None, where: str) -> list[Setting]:
    if source == "htc2022":
        extra = sorted({"angles", "noise"} & set(entry))
        if extra:
            raise ValueError(f"{where}: a real htc2022 scan takes no {extra} (they are measured)")
        path = entry["htc2022"]
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"{where}.htc2022 must be a path to a .mat file, got {path!r}")
        binning = entry.get("detector_binning", 4)
        check_int(binning, f"{where}.detector_binning", 1)
        return [Setting(kind="htc2022", images=(f"htc2022:{Path(path).stem}",), size=size or 128,
                        htc2022=str(path), detector_binning=binning)]
    if "detector_binning" in entry:
        raise ValueError(f"{where}: detector_binning applies to htc2022 settings only")
    for key in ("angles", "noise"):
        if key not in entry:
            raise ValueError(f"{where}: missing {key!r} (needed for a simulated scan)")
    angles, noises = _as_list(entry["angles"]), _as_list(entry["noise"])
    for a in angles:
        check_int(a, f"{where}.angles", 1)
    for n in noises:
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not 0 <= n < 1 \
                or not math.isfinite(n):
            raise ValueError(f"{where}.noise must be relative levels in [0, 1) (0.05 = 5 %), got {n!r}")
    if len(set(angles)) != len(angles) or len(set(noises)) != len(noises):
        raise ValueError(f"{where}: angles and noise must not repeat values")
    if source == "kmnist":
        count = entry["kmnist"]
        check_int(count, f"{where}.kmnist", 1)
        if size not in (None, 28):
            raise ValueError(f"{where}.size: KMNIST images are 28x28, got size={size}")
        images = tuple(f"kmnist:{k}" for k in range(count))
        size = None
    else:
        raw = _as_list(entry["images"])
        if not raw:
            raise ValueError(f"{where}.images must list at least one image id")
        images = tuple(dict.fromkeys(_check_image_id(im, f"{where}.images") for im in raw))
        if any(im.startswith("kmnist:") for im in images) and size not in (None, 28):
            raise ValueError(f"{where}.size: KMNIST images are 28x28, got size={size}")
    return [Setting(kind="simulated", images=images, angles=a, noise=float(n), size=size)
            for a, n in itertools.product(angles, noises)]
