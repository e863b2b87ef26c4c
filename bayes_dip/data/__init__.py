"""Data loaders: KMNIST, DICOM/PNG/NPY images, HTC2022 real fan-beam scans, phantoms.

Loaders read local files only (an explicit path or ``$BAYES_DIP_DATA``); ``data_scripts/``
downloads them. Images come back as float32 ``(B, 1, H, W)`` tensors in [0, 1].
"""
from bayes_dip.data.dicom import MU_WATER, default_dicom_path, hu_to_attenuation, load_dicom_slice
from bayes_dip.data.htc2022 import (HTC2022Scan, bin_detectors, load_htc2022, plastic_attenuation,
                                    read_htc2022_mat, read_segmentation)
from bayes_dip.data.images import SUPPORTED_SUFFIXES, load_image, read_image_array
from bayes_dip.data.kmnist import load_kmnist, load_kmnist_labels, read_idx
from bayes_dip.data.paths import DATA_ENV_VAR, data_root
from bayes_dip.data.phantoms import random_ellipses, rectangles, shepp_logan
from bayes_dip.data.transforms import is_square, resize_square

__all__ = [
    "DATA_ENV_VAR", "data_root",
    "load_kmnist", "load_kmnist_labels", "read_idx",
    "MU_WATER", "default_dicom_path", "hu_to_attenuation", "load_dicom_slice",
    "SUPPORTED_SUFFIXES", "load_image", "read_image_array", "is_square", "resize_square",
    "HTC2022Scan", "load_htc2022", "read_htc2022_mat", "read_segmentation", "bin_detectors",
    "plastic_attenuation",
    "shepp_logan", "random_ellipses", "rectangles",
]
