"""
A real limited-angle scan: HTC2022
==================================

Real measured data, no simulation: sample "ta" of the Helsinki Tomography Challenge 2022, a
plastic disc with holes scanned over only 60° (121 fan-beam projections). Limited angle
leaves edges invisible to the scan: those whose normal points in a direction that was not
measured. A calibrated posterior should be unsure exactly there.

The scan is read from ``$BAYES_DIP_DATA/htc2022/htc2022_ta_sparse_example.mat`` (with the
ground-truth segmentation and the calibration disc beside it; ``data_scripts/`` fetches
them). Without it this example stops with a ``FileNotFoundError`` that names what is
missing, and the docs show that message instead of the results.

The grid and the iteration counts are small for the docs (32², 16× binned detectors, 600
DIP iterations, 100 evidence steps: half a minute on one thread); use the CLI defaults for
real work (``bayes-dip reconstruct --htc2022 FILE``: 128², or
``python experiments/htc2022_study.py``).
"""

# %%
# The measured problem
# --------------------
# :func:`~bayes_dip.problem.htc2022_problem` reads the sinogram and the scanner's fan-beam
# geometry; the image unit is the plastic fraction (the sinogram divided by the plastic's
# attenuation, measured on the calibration disc), so the segmentation is the ground truth.
import numpy as np
import torch

from bayes_dip.data.paths import data_root, require_file
from bayes_dip.dip import dip_config_from_data, reconstruct_dip
from bayes_dip.linearized import LinearizedDIP
from bayes_dip.problem import htc2022_problem
from bayes_dip.studies.directional import (edge_std_by_visibility, measured_directions,
                                           sensitivity_spectrum)
from bayes_dip.viz import plot_uncertainty_panels

torch.manual_seed(0)
scan = require_file(data_root() / "htc2022" / "htc2022_ta_sparse_example.mat", "HTC2022 scan")
problem = htc2022_problem(scan, size=32, detector_binning=16)
print({k: problem.info[k] for k in ("angles", "angle_range_deg", "detectors", "image_unit")})

# %%
# DIP reconstruction and error bars
# ---------------------------------
# The noise level is not known for a measured scan: :func:`~bayes_dip.dip.dip_config_from_data`
# estimates it from the sinogram and sets the TV weight from it. The real scan is the hard
# case: the DIP fits it far worse than simulated data and the intervals come out too narrow,
# here as in the full study (``experiments/README.md``).
A = problem.ray_trafo
config, how = dip_config_from_data(A, problem.sinogram, problem.fbp, iterations=600)
dip = reconstruct_dip(A, problem.sinogram, net_input=problem.fbp, config=config, progress=False)
lin = LinearizedDIP(dip.net, dip.net_input, A, problem.sinogram, gamma=config.gamma,
                    noise_variance=how["noise_std"] ** 2)
lin.optimize_hyperparameters("auto", steps=100, progress=False)
result = lin.estimate_uncertainty()
truth = problem.ground_truth
inside = ((result.mean - truth).abs() <= 1.96 * result.std).double().mean()
print(f"estimated noise std {how['noise_std']:.3g}; evidence mode {result.mode}; "
      f"{inside:.0%} of the pixels inside the 95 % band")

panels = plot_uncertainty_panels({"linearised DIP": (result.mean, result.std)},
                                 ground_truth=truth, fbp=problem.fbp,
                                 value_label="material", units="plastic fraction")

# %%
# Where the error bars are large
# ------------------------------
# The data sensitivity per Fourier direction (back-projected white noise) splits the
# directions into measured and unmeasured ones. At ground-truth edges whose normal is
# unmeasured, the posterior std is larger than at edges the scan saw, and so is the error.
measured = measured_directions(sensitivity_spectrum(A))
std = result.std[0, 0].numpy()
error = np.abs((result.mean - truth)[0, 0].numpy())
for name, values in (("std", std), ("|error|", error)):
    edges = edge_std_by_visibility(values, truth[0, 0].numpy(), measured)
    print(f"mean {name} at edges: unmeasured normal {edges.unmeasured_mean:.3f}, "
          f"measured normal {edges.measured_mean:.3f}")
