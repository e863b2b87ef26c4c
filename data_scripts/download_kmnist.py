#!/usr/bin/env python
"""Download the Kuzushiji-MNIST (KMNIST) IDX files from the official source and check their MD5.

Source: codh.rois.ac.jp/kmnist (Clanuwat et al. 2018, "Deep Learning for Classical Japanese
Literature"), licence CC BY-SA 4.0. Files land in ``<root>/kmnist/``, the layout that
``bayes_dip.data.load_kmnist(root)`` reads (or set ``BAYES_DIP_DATA=<root>``).

    python data_scripts/download_kmnist.py --root ~/bayes_dip_data            # test split
    python data_scripts/download_kmnist.py --root ~/bayes_dip_data --train     # + train split
    python data_scripts/download_kmnist.py --root ~/bayes_dip_data --verify    # offline check
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _download import download, verify  # noqa: E402

BASE_URL = "https://codh.rois.ac.jp/kmnist/dataset/kmnist/"
TEST_FILES = {
    "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
    "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
}
TRAIN_FILES = {
    "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
    "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.environ.get("BAYES_DIP_DATA"),
                        help="data root (default: $BAYES_DIP_DATA); files go to <root>/kmnist/")
    parser.add_argument("--train", action="store_true", help="also fetch the 60,000-image train split")
    parser.add_argument("--verify", action="store_true", help="only check the MD5 of existing files")
    args = parser.parse_args(argv)
    if not args.root:
        parser.error("give --root or set BAYES_DIP_DATA")
    folder = Path(args.root).expanduser() / "kmnist"
    files = {**TEST_FILES, **(TRAIN_FILES if args.train else {})}
    if args.verify:
        return 0 if verify(files, folder) else 1
    for name, md5 in files.items():
        download(BASE_URL + name, folder / name, md5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
