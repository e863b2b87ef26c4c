#!/usr/bin/env python
"""Convert a DICOM CT slice or series (a folder of single-slice files) to ``.npy``.

Values are linear attenuation in 1/mm (``bayes_dip.data.dicom``: ``MU_WATER * (1 + HU/1000)``,
clipped at 0). A series is sorted by slice position along the patient axis
(``ImagePositionPatient[2]``, else ``InstanceNumber``) and saved as ``(n_slices, H, W)``;
``--slice k`` saves one 2D slice ``(H, W)``, which ``bayes_dip.data.load_image`` and
``bayes-dip reconstruct`` read (they divide by the maximum). ``--size`` resizes square slices.

    python data_scripts/dicom_to_npy.py path/to/series_folder volume.npy
    python data_scripts/dicom_to_npy.py path/to/series_folder slice.npy --slice 40 --size 256
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from bayes_dip.data.dicom import read_dicom_attenuation
from bayes_dip.data.transforms import resize_square


def _position(path: Path) -> tuple[float, float]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    pos = ds.get("ImagePositionPatient")
    z = float(pos[2]) if pos is not None and len(pos) == 3 else float("nan")
    return (z, float(ds.get("InstanceNumber", 0) or 0))


def series_files(folder: Path) -> list[Path]:
    """DICOM files in ``folder`` (non-DICOM files skipped), sorted along the patient axis."""
    files = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            files.append((_position(path), path))
        except InvalidDicomError:
            continue
    if not files:
        raise ValueError(f"no DICOM files in {folder}")
    use_z = all(np.isfinite(key[0]) for key, _ in files)
    files.sort(key=lambda item: item[0][0] if use_z else item[0][1])
    return [path for _, path in files]


def convert(src: Path, slice_index: int | None = None, size: int | None = None) -> np.ndarray:
    """Attenuation (1/mm) of a file ``(H, W)`` or a folder ``(n, H, W)`` / one slice ``(H, W)``."""
    paths = series_files(src) if src.is_dir() else [src]
    if slice_index is not None:
        if not -len(paths) <= slice_index < len(paths):
            raise ValueError(f"--slice {slice_index} out of range for {len(paths)} slices")
        paths = [paths[slice_index]]
    slices = [read_dicom_attenuation(p) for p in paths]
    if size is not None:
        slices = [resize_square(s, size, name=str(p)) for s, p in zip(slices, paths)]
    if len({s.shape for s in slices}) != 1:
        raise ValueError(f"slices of {src} differ in shape: {sorted({s.shape for s in slices})}")
    vol = np.stack(slices).astype(np.float32)
    return vol[0] if (len(slices) == 1 and (slice_index is not None or not src.is_dir())) else vol


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="a DICOM file or a folder holding one series")
    parser.add_argument("out", type=Path, help="output .npy")
    parser.add_argument("--slice", dest="slice_index", type=int, default=None,
                        help="save only this slice (index after sorting) as a 2D array")
    parser.add_argument("--size", type=int, default=None, help="resize (square) slices to size x size")
    args = parser.parse_args(argv)
    arr = convert(args.src, args.slice_index, args.size)
    np.save(args.out, arr)
    print(f"wrote {args.out}: shape {arr.shape}, attenuation {arr.min():.4g}..{arr.max():.4g} /mm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
