#!/usr/bin/env python
"""Download Helsinki Tomography Challenge 2022 (HTC2022) training data from Zenodo.

Source: Zenodo record 6984868, "Helsinki Tomography Challenge 2022 (HTC2022) open tomographic
dataset" (Meaney, Heikkilä et al., Finnish Inverse Problems Society / University of
Helsinki), licence CC BY 4.0. The file list and MD5 checksums come from Zenodo's record API;
every download is checked against them. Files land in ``<root>/htc2022/``.

By default the script fetches, for each chosen phantom (``ta tb tc td``, default ``ta``):
``htc2022_<id>_full.mat`` (CtDataFull, 721 angles over 360°) and
``htc2022_<id>_full_recon_fbp_seg.png`` (ground truth), plus the calibration reconstruction
``htc2022_solid_disc_full_recon_fbp.mat``. Zip archives in the record are searched for the same
names. Make a limited-angle input like the challenge's with
``python data_scripts/htc2022_limited_angle.py`` (e.g. 0-60°, the example file the tests use).

    python data_scripts/download_htc2022.py --root ~/bayes_dip_data
    python data_scripts/download_htc2022.py --root ~/bayes_dip_data --phantoms ta tb --list
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _download import USER_AGENT, download  # noqa: E402

RECORD = "6984868"
API_URL = f"https://zenodo.org/api/records/{RECORD}"


def wanted_names(phantoms: list[str]) -> list[str]:
    names = []
    for pid in phantoms:
        names += [f"htc2022_{pid}_full.mat", f"htc2022_{pid}_full_recon_fbp_seg.png"]
    return names + ["htc2022_solid_disc_full_recon_fbp.mat"]


def record_files() -> list[dict]:
    """``[{key, size, md5, url}]`` of the Zenodo record."""
    request = urllib.request.Request(API_URL, headers={"User-Agent": USER_AGENT,
                                                       "Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        meta = json.load(resp)
    files = []
    for entry in meta.get("files", []):
        checksum = entry.get("checksum", "")
        files.append({"key": entry["key"], "size": entry.get("size"),
                      "md5": checksum.split(":", 1)[1] if checksum.startswith("md5:") else None,
                      "url": entry["links"]["self"]})
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.environ.get("BAYES_DIP_DATA"),
                        help="data root (default: $BAYES_DIP_DATA); files go to <root>/htc2022/")
    parser.add_argument("--phantoms", nargs="+", default=["ta"], choices=["ta", "tb", "tc", "td"])
    parser.add_argument("--list", action="store_true", help="only list the record's files")
    args = parser.parse_args(argv)
    files = record_files()
    if args.list:
        for f in files:
            print(f"{f['key']:50s} {f['size']!s:>12} md5:{f['md5']}")
        return 0
    if not args.root:
        parser.error("give --root or set BAYES_DIP_DATA")
    folder = Path(args.root).expanduser() / "htc2022"
    names = wanted_names(args.phantoms)
    by_key = {f["key"]: f for f in files}
    missing = [n for n in names if n not in by_key]
    for name in names:
        if name in by_key:
            download(by_key[name]["url"], folder / name, by_key[name]["md5"])
    archives = [f for f in files if f["key"].endswith(".zip")]
    if missing and archives:
        for arc in archives:
            local = folder / arc["key"]
            download(arc["url"], local, arc["md5"])
            with zipfile.ZipFile(local) as zf:
                for member in zf.namelist():
                    base = Path(member).name
                    if base in missing:
                        (folder / base).write_bytes(zf.read(member))
                        print(f"unpacked {folder / base}")
                        missing.remove(base)
    if missing:
        print(f"not found in Zenodo record {RECORD}: {missing} (see --list)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
