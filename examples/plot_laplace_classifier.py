"""
The Laplace core on a classifier
================================

The linearised DIP is one use of the package's generic Laplace / GGN core,
:mod:`bayes_dip.laplace`. The same :class:`~bayes_dip.laplace.Laplace` object gives a
classifier a weight posterior: fit a network to its MAP weights, then a Gaussian around
them with the generalised Gauss–Newton curvature, a prior precision by the Laplace evidence,
and the linearised (GLM) predictive with the probit link.

Here: three classes of 2-D points and a small MLP. Away from the data the MAP network stays
almost as confident as at the data; the Laplace predictive is clearly less confident there. The data
and the network are small for the docs (a few seconds); the held-out digits protocol,
``experiments/classification_posthoc_digits.py``, compares the curvature structures on
real images.
"""

# %%
# Data and the MAP network
# ------------------------
# Three Gaussian blobs, 60 points each; an MLP with two hidden layers of 32 units trained
# with Adam. The weight decay is a Gaussian prior on the weights, so this is a MAP estimate.
import matplotlib.pyplot as plt
import torch
from torch import nn

from bayes_dip.laplace import Laplace

torch.manual_seed(0)
centres = torch.tensor([[-2.0, -1.0], [2.0, -1.0], [0.0, 2.0]])
labels = torch.arange(3).repeat_interleave(60)
points = centres[labels] + 0.7 * torch.randn(len(labels), 2)

model = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                      nn.Linear(32, 3))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-2)
for _ in range(500):
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(points), labels).backward()
    optimizer.step()
accuracy = (model(points).argmax(1) == labels).double().mean()
print(f"training accuracy of the MAP network: {accuracy:.1%}")

# %%
# The Laplace approximation
# -------------------------
# All weights with the full GGN (1,251 weights: small enough for a dense posterior; ``"kfac"``,
# ``"diag"``, ``"lowrank"`` or ``"matrix_free"`` scale further, ``subset="last_layer"`` is
# cheaper still). The prior precision ``δ`` maximises the Laplace evidence.
la = Laplace(model, "classification", subset="all", structure="full")
la.fit((points, labels))
la.optimize_prior_precision("marglik")
print(f"{la.n_params} weights; prior precision δ = {la.prior_precision.item():.3g}; "
      f"log evidence {la.log_marginal_likelihood().item():.1f}")

# %%
# Confidence away from the data
# -----------------------------
# The largest class probability on a grid around the data: MAP softmax against the
# Laplace predictive (the GLM predictive of the logits, probit-approximated softmax).
side = torch.linspace(-7, 7, 71)
grid = torch.cartesian_prod(side, side).flip(1)
with torch.no_grad():
    confidence = {"MAP": torch.softmax(model(grid), 1).amax(1),
                  "Laplace (GLM, probit)": la.predict(grid, link="probit").amax(1)}

fig, axes = plt.subplots(1, 2, figsize=(8, 3.6), constrained_layout=True)
for ax, (name, conf) in zip(axes, confidence.items()):
    image = ax.imshow(conf.reshape(len(side), len(side)), origin="lower", extent=(-7, 7, -7, 7),
                      vmin=1 / 3, vmax=1, cmap="viridis")
    ax.scatter(*points.T, c=labels, cmap="Set1", s=6, edgecolors="none")
    ax.set_title(name)
fig.colorbar(image, ax=axes, label="largest class probability")

# %%
# The weight uncertainty also lowers the confidence at the training points a little (the
# accuracy is the MAP's); ``optimize_prior_precision(val_data=...)`` tunes ``δ`` on
# validation data instead of the evidence.
far = grid.norm(dim=1) > 6
with torch.no_grad():
    at_data = {"MAP": torch.softmax(model(points), 1).amax(1),
               "Laplace (GLM, probit)": la.predict(points, link="probit").amax(1)}
for name, conf in confidence.items():
    print(f"{name}: mean confidence {at_data[name].mean():.2f} at the training points, "
          f"{conf[far].mean():.2f} far from them (chance: 0.33)")
