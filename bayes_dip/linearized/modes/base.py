"""What an evidence mode provides (:class:`EvidenceMode`) and the objective of the modes
that hold ``K_yy`` in closed form (:class:`GaussianObjective`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:  # the modes are used by these modules, which they do not import at run time
    from ..api import LinearizedDIP
    from ..evidence import EvidenceConfig
    from ..heldout import ObservationSpectrum
    from ..model import LinearizedModel

__all__ = ["EvidenceMode", "Objective", "GaussianObjective"]


class Objective:
    """One evidence run's loss: ``__call__() -> (objective, negative log evidence per
    measurement or nan, stats)``; ``before_step(step)`` runs ahead of each step; ``state()`` /
    ``load_state(state)`` carry what a checkpoint must keep besides the hyperparameters."""

    def before_step(self, step: int) -> None:
        """Nothing to prepare by default."""

    def __call__(self) -> tuple[Tensor, float, dict[str, float]]:
        raise NotImplementedError

    def state(self) -> Any:
        return None

    def load_state(self, state: Any) -> None:
        """Nothing to restore by default."""


class GaussianObjective(Objective):
    """The negative log evidence itself, from a structure that gives ``log|K_yy|`` and
    ``K_yy⁻¹`` in closed form (:func:`~bayes_dip.linearized.evidence.negative_log_evidence`)."""

    def __init__(self, model: LinearizedModel, structure: Any, weights: str):
        self.model, self.structure, self.weights = model, structure, weights

    def __call__(self) -> tuple[Tensor, float, dict[str, float]]:
        from ..evidence import negative_log_evidence

        nle = negative_log_evidence(self.model, self.structure, self.weights)
        nan = float("nan")
        return nle, float(nle.detach()) / self.model.num_obs, {"cg_iterations": nan,
                                                                "cg_residual": nan}


class EvidenceMode:
    """Base class of the modes. Attributes: ``name`` (the string users pass),
    ``default_steps`` (evidence steps when none are given), ``command_line_steps`` (steps of
    ``bayes-dip reconstruct`` when none are given; ``None``: ``default_steps`` with the
    convergence stop), ``command_line_sampler`` (the command line's predictive options),
    ``has_spectrum`` (``K_yy``'s eigen-structure is available: held-out checks and
    recalibration work), ``full_covariance`` (the predictive is a dense covariance),
    ``adam_beta2`` (Adam's second-moment decay in the evidence optimisation)."""

    name: str = ""
    default_steps: int = 1500
    command_line_steps: int | None = None
    command_line_sampler: dict[str, Any] = {}
    has_spectrum: bool = True
    full_covariance: bool = False
    #: short memory for a deterministic objective (:mod:`bayes_dip.linearized.evidence`)
    adam_beta2: float = 0.9
    #: predictive options this mode's sampler takes (others are dropped)
    sampler_options: tuple[str, ...] = ()

    def structure(self, lin: LinearizedDIP, seed: int) -> Any:
        """What the objective and predictive need of ``K_yy`` (``None``: nothing)."""
        return None

    def check_structure(self, structure: Any) -> None:
        """Raise ``ValueError`` when ``structure`` is not this mode's."""

    def objective(self, model: LinearizedModel, config: EvidenceConfig, structure: Any,
                  generator) -> Objective:
        """The evidence objective of one run (default: the closed-form negative log
        evidence of ``structure``)."""
        return GaussianObjective(model, structure, config.weights)

    def predcp(self, lin: LinearizedDIP, rate: float, num_samples: int | None, seed: int):
        """The TV-PredCP term ``prior -> Σ_d −log p(ℓ_d)`` at ``rate``."""
        raise NotImplementedError

    def spectrum(self, lin: LinearizedDIP, noise_variance: float) -> ObservationSpectrum:
        raise ValueError(f"held-out checks need the eigen-structure of K_yy, which the "
                         f"{self.name!r} mode does not hold")

    def predictive(self, lin: LinearizedDIP, *, num_samples: int, image_noise: float | str,
                   seed: int, mean: str, **options: Any):
        """The predictive structure (exact covariance or samples) of ``lin``."""
        raise NotImplementedError

    def draws(self, num_samples: int, variance_samples: int) -> int:
        """Predictive draws for a std map and ``num_samples`` kept samples."""
        return num_samples

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
