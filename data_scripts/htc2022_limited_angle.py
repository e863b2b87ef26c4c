#!/usr/bin/env python
"""Cut a limited-angle HTC2022 input (struct ``CtDataLimited``) out of a full-angle scan.

Does what the organisers' ``subsample_sinogram`` does: keeps the projections whose angle lies
in ``[start, start + opening]`` degrees (the challenge used 0.5° steps and openings of
30-90°), copies all parameters and updates ``angles`` and ``numberImages``. The result is read
by ``bayes_dip.data.load_htc2022``; its default name ``htc2022_<id>_limited.mat`` keeps the
ground-truth PNG beside it discoverable.

    python data_scripts/htc2022_limited_angle.py ~/bayes_dip_data/htc2022/htc2022_ta_full.mat \
        --start 0 --opening 60
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import scipy.io

from bayes_dip.data import read_htc2022_mat


def limited_angle(full_path: Path, out_path: Path, start: float, opening: float) -> int:
    """Write the limited-angle struct; returns the number of projections kept."""
    if not (0 < opening <= 360):
        raise ValueError(f"opening must be in (0, 360] degrees, got {opening}")
    sinogram, params = read_htc2022_mat(full_path)
    angles = params["angles"]
    keep = (angles >= start - 1e-9) & (angles <= start + opening + 1e-9)
    if not keep.any():
        raise ValueError(f"no projection of {full_path} lies in [{start}, {start + opening}] degrees")
    params = dict(params, angles=angles[keep], numberImages=int(keep.sum()))
    scipy.io.savemat(out_path, {"CtDataLimited": {"type": "2d", "sinogram": sinogram[keep],
                                                  "parameters": params}}, do_compression=True)
    return int(keep.sum())


def default_output(full_path: Path) -> Path:
    stem = re.sub(r"_full$", "", full_path.stem)
    return full_path.with_name(f"{stem}_limited.mat")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("full", type=Path, help="htc2022_<id>_full.mat (struct CtDataFull)")
    parser.add_argument("--start", type=float, default=0.0, help="first angle in degrees (default 0)")
    parser.add_argument("--opening", type=float, default=60.0, help="angular range in degrees (default 60)")
    parser.add_argument("--out", type=Path, default=None, help="output .mat (default htc2022_<id>_limited.mat)")
    args = parser.parse_args(argv)
    out = args.out or default_output(args.full)
    n = limited_angle(args.full, out, args.start, args.opening)
    print(f"wrote {out}: {n} projections, {args.start}° to {args.start + args.opening}°")
    return 0


if __name__ == "__main__":
    sys.exit(main())
