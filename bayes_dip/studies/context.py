"""Per-image state shared by the methods of a study: the problem on its device and the
DIP reconstruction, trained once and reused by every method built on it."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from bayes_dip.dip import DIPResult, reconstruct_dip, unet_preset
from bayes_dip.problem import CTProblem
from bayes_dip.studies.config import Setting, StudyConfig

__all__ = ["MethodContext"]


class MethodContext:
    """One (setting, image) of a study.

    Attributes: ``problem``, ``config``, ``setting``, ``image_id``, ``device``,
    ``ray_trafo``, ``y`` (sinogram), ``fbp``, ``ground_truth`` (or ``None``) on ``device``,
    ``cache_dir`` (checkpoints of this image), ``progress``, ``shared`` (a dict kept across
    the images of a study, e.g. for quantities of one geometry), ``image_cache`` (a dict
    for objects the methods of this image share).
    """

    def __init__(self, problem: CTProblem, config: StudyConfig, setting: Setting, image_id: str,
                 cache_dir: Path, progress: bool, shared: dict | None = None):
        try:
            self.device = torch.device(config.device)
        except RuntimeError as exc:
            raise ValueError(f"device: {config.device!r} is not a torch device ({exc})") from exc
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: {config.device!r} requested but torch sees no CUDA GPU")
        self.problem, self.config, self.setting, self.image_id = problem, config, setting, image_id
        self.cache_dir, self.progress = Path(cache_dir), progress
        self.ray_trafo = problem.ray_trafo.to(self.device)
        self.y = problem.sinogram.to(self.device)
        self.fbp = problem.fbp.to(self.device)
        gt = problem.ground_truth
        self.ground_truth = None if gt is None else gt.to(self.device)
        self.shared = {} if shared is None else shared
        self.image_cache: dict = {}
        self._dip: DIPResult | None = None

    def unet(self, dropout_p: float = 0.0) -> nn.Module | None:
        """The study's U-Net (``config.unet``: ``preset`` + overrides), initialised from the
        DIP seed; ``None`` when the config names none and ``dropout_p`` is 0 (the DIP
        trainer then picks its preset by image size)."""
        options = dict(self.config.unet)
        if not options and dropout_p == 0:
            return None
        size = max(self.problem.fbp.shape[-2:])
        preset = options.pop("preset", self.config.dip.unet or ("kmnist" if size <= 64 else "128"))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self.config.dip.seed)
            try:
                return unet_preset(preset, dropout_p=dropout_p, **options)
            except TypeError as exc:
                raise ValueError(f"unet: {exc}") from exc

    def dip(self) -> DIPResult:
        """The DIP reconstruction of this image (``config.dip``), trained on first use and
        checkpointed under ``cache_dir/dip``, so an interrupted study resumes it and a
        finished one reloads it instead of training again."""
        if self._dip is None:
            self._dip = reconstruct_dip(
                self.ray_trafo, self.y, net=self.unet(), net_input=self.fbp, config=self.config.dip,
                ground_truth=self.ground_truth, checkpoint_dir=self.cache_dir / "dip",
                progress=self.progress)
        return self._dip

    def generator(self, salt: int) -> torch.Generator:
        """A generator on ``device`` seeded from the study seed and ``salt``."""
        return torch.Generator(device=self.device).manual_seed(self.config.seed * 7919 + salt)

    def seed(self, salt: int) -> int:
        return self.config.seed * 7919 + salt

    @property
    def dtype(self) -> torch.dtype:
        return self.y.dtype

    def as_image(self, x: Tensor) -> Tensor:
        """``x`` reshaped to ``(1, 1, H, W)`` on the study device."""
        return x.reshape(1, 1, *self.problem.fbp.shape[-2:]).to(self.device)
