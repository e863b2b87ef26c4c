"""
Reconstruct a CT scan with error bars
=====================================

A deep image prior (DIP) reconstruction of a simulated 20-angle scan of a real CT slice, and
its pixelwise uncertainty from the linearised DIP: the trained U-Net linearised into a
Gaussian process whose prior hyperparameters and noise level are fitted by type-II maximum
likelihood with the TV-PredCP hyperprior (TV-MAP).

The sizes and iteration counts are small for the docs (a 32² image, 600 DIP iterations,
100 evidence steps: under a minute on one thread); use the CLI defaults for real work
(``bayes-dip reconstruct``: 128², DIP until its loss plateaus, 1,500 evidence steps).
"""

# %%
# The problem
# -----------
# The real 128² CT slice that ships with pydicom, downsampled to 32², projected along 20
# parallel-beam angles with 5 % Gaussian noise. ``problem.ray_trafo`` is the forward operator
# ``A``; ``problem.fbp`` the filtered back-projection, the DIP's network input.
import torch

from bayes_dip.data import load_dicom_slice
from bayes_dip.dip import dip_config_from_data, reconstruct_dip
from bayes_dip.linearized import LinearizedDIP
from bayes_dip.metrics import psnr
from bayes_dip.problem import simulated_problem
from bayes_dip.metrics import Prediction
from bayes_dip.viz import plot_error_vs_std, plot_uncertainty_panels

torch.manual_seed(0)
x = load_dicom_slice(size=32)
problem = simulated_problem(x, num_angles=20, noise_level=0.05, seed=0)
print(problem.sinogram.shape, f"noise std {problem.noise_std:.3g}")

# %%
# The DIP reconstruction
# ----------------------
# :func:`~bayes_dip.dip.dip_config_from_data` reads the settings from the measurement: the TV
# weight ``γ`` by the balancing principle at the noise level and the U-Net for this size.
# Only the number of iterations is cut for the docs.
A = problem.ray_trafo
config, _ = dip_config_from_data(A, problem.sinogram, problem.fbp, problem.noise_std,
                                 iterations=600)
dip = reconstruct_dip(A, problem.sinogram, net_input=problem.fbp, config=config, progress=False)
print(f"γ = {config.gamma:.2e}; PSNR: FBP {psnr(problem.fbp, x):.1f} dB, "
      f"DIP {psnr(dip.recon, x):.1f} dB")

# %%
# Error bars from the linearised DIP
# ----------------------------------
# At 32² the exact evidence applies: ``K_yy`` is assembled from precomputed Gram matrices
# and each hyperparameter step is one Cholesky factorisation. ``predcp_scale=1.0`` adds the
# TV-PredCP hyperprior (TV-MAP) at the command line's scale; like the command line, σ_y² is
# held at the DIP's mean squared residual. 100 steps do not converge (a warning says so); the
# CLI runs up to 1,500.
sigma2 = float((A(dip.recon) - problem.sinogram).square().mean())
lin = LinearizedDIP(dip.net, dip.net_input, A, problem.sinogram, gamma=config.gamma,
                    noise_variance=sigma2)
lin.optimize_hyperparameters("auto", predcp_scale=1.0, steps=100, progress=False,
                             learn_noise_variance=False)
result = lin.estimate_uncertainty()
pred = Prediction.from_uncertainty(result)  # the predictive type every method returns
print(f"evidence mode {result.mode}; test log-likelihood "
      f"{pred.log_likelihood(x.double()).per_pixel:.2f} per pixel; "
      f"{pred.coverage(x)['0.95']:.0%} of the pixels inside the 95 % band")

# %%
# A check without the ground truth: each projection is predicted from all the others; its
# ``chi2`` is 1 when the model of the measurements is calibrated (above 1: too narrow).
check = lin.heldout("angle")
print(f"held-out projections: coverage {check.coverage}, chi2 {check.chi2:.2f}")

# %%
# The reconstruction, its posterior std and the absolute error
# ------------------------------------------------------------
# The second figure compares the error of each pixel with its predicted std (on the red
# line they are equal).
panels = plot_uncertainty_panels({"linearised DIP": (result.mean, result.std)},
                                 ground_truth=x, fbp=problem.fbp)
errors = plot_error_vs_std({"linearised DIP": (result.mean, result.std)}, x)
