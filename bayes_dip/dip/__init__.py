"""Deep image prior: U-Net, TV, and the DIP reconstructor with checkpoint/resume."""
from .checkpoint import load_checkpoint, save_checkpoint
from .config import DIPConfig, dip_preset
from .trainer import DIPHistory, DIPResult, dip_loss, reconstruct_dip
from .settings import (balanced_tv_weight, dip_config_from_data, estimate_noise_std,
                       iteration_cap)
from .tv import tv_loss
from .unet import PriorBlock, UNet, unet_preset

__all__ = [
    "UNet", "unet_preset", "PriorBlock", "tv_loss", "DIPConfig", "dip_preset",
    "DIPHistory", "DIPResult", "reconstruct_dip", "dip_loss",
    "save_checkpoint", "load_checkpoint",
    "dip_config_from_data", "balanced_tv_weight", "estimate_noise_std", "iteration_cap",
]
