"""
A calibration study on a local Dask cluster
===========================================

A calibration study asks how often the truth falls inside each method's error bars, over
many images and scan settings. :func:`~bayes_dip.studies.run_study` runs one from a
config (the YAML schema of :mod:`bayes_dip.studies.config`): every (setting, image) is a
task on a Dask cluster, every finished result is saved at once, and a second call computes
only what is missing. ``bayes-dip calibrate --config study.yaml`` is the same call from the
command line; ``--scheduler`` runs it on an existing cluster (SLURM/PBS recipe in
``experiments/README.md``).

The study here is small for the docs (16² images, a small U-Net, 200 DIP iterations, 2
images × 2 settings × 2 methods); use the CLI defaults and the configs in
``experiments/configs/`` for real work.
"""

# %%
# The study
# ---------
# Two angle counts at 5 % noise, two images (the Shepp–Logan phantom and pydicom's CT
# slice), and two methods: the DIP with a unit-variance Gaussian (``dip``) and the
# linearised DIP with type-II ML hyperparameters (``lin-dip-mll``).
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from bayes_dip.studies import run_study

config = {
    "name": "gallery-tiny",
    "methods": ["dip", "lin-dip-mll"],
    "settings": [{"angles": [5, 10], "noise": 0.05, "images": ["shepp_logan", "dicom"],
                  "size": 16}],
    "unet": {"preset": "kmnist", "channels": [8, 8], "skip_channels": [0, 2]},
    "dip": {"iterations": 200, "lr": 1e-2, "gamma": 1e-4},
    "evidence": {"steps": 50},
    "figures": {"formats": ["png"], "gallery_samples": 4},
}
out = Path(tempfile.mkdtemp(prefix="bayes-dip-study-"))

# %%
# Run it on two workers
# ---------------------
# ``workers=2`` starts a ``LocalCluster`` of two single-threaded worker processes (the
# default, ``workers=None``, is one per CPU; ``workers=0`` runs in this process). Worker
# processes import this script again, so a script that starts a cluster keeps its work
# under ``if __name__ == "__main__":``.
if __name__ == "__main__":
    results = run_study(config, out, workers=2, progress=False)
    print(results.table_markdown)
    print(f"{len(results.computed)} results computed")

# %%
# Resume and report
# -----------------
# Calling it again reuses every saved result; ``report_only=True`` (``--report-only``)
# writes the tables and figures of what has finished so far and computes nothing.
if __name__ == "__main__":
    again = run_study(config, out, report_only=True, progress=False)
    print(f"{len(again.computed)} computed, {len(again.reused)} reused")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, name in zip(axes, ("test_ll_vs_angles", "a10_n5pct_s16/reliability")):
        ax.imshow(plt.imread(out / "figures" / f"{name}.png"))
        ax.set_title(f"figures/{name}.png", fontsize=9)
        ax.axis("off")
