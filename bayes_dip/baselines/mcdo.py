"""DIP-MCDO baseline: MC dropout in the deep image prior (Laves et al. 2020 style).

The U-Net gets channel dropout (``Dropout2d``, p = 0.05) after every 3×3 convolution
(``unet_preset(..., dropout_p=p)``), is trained by :func:`~bayes_dip.dip.reconstruct_dip`
*without* TV (``gamma = 0``) with dropout active, and keeps dropout active at test time.
The predictive (a :class:`~bayes_dip.metrics.Prediction`) is the Gaussian fitted to many
stochastic forward passes: sample mean, pixel variances and, streamed in float64 batches, the
full covariance (small images) or the covariances of image patches (large images; the patches
of :func:`bayes_dip.metrics.image_patches`); ``p.log_likelihood(gt, patch_size)`` scores it.

Image-noise term: the dropout spread alone is degenerate for the log-likelihood. Pixels
whose sigmoid pre-activation stays beyond the clamp under every mask have exactly zero
sample variance, and the spread is tiny next to the reconstruction error (KMNIST test
image 0, 20 angles, 5 % noise, 10k iterations: median std 0.0024, 132 of 784 pixels at
zero, RMSE ≈ 0.056). The original code's density script adds the image-noise term
``σ_y² · c_A`` with ``σ_y² = 1`` to the MCDO covariance, as for DIP (σ² = 1); to do the
same pass ``added_variance=ray_trafo.variance_factor()``; the studies' ``mcdo`` method adds
``σ̂_y² c_A`` with ``σ̂_y²`` from the network's residual instead (see ``bayes_dip.studies.methods``).
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from bayes_dip.checks import check_int, check_number
from bayes_dip.dip import DIPConfig, DIPResult, reconstruct_dip, unet_preset
from bayes_dip.output_folder import KeyedCheckpoint, parameter_digest
from bayes_dip.runtime import deferred_interrupts
from bayes_dip.metrics import Prediction

from ._moments import PatchGrouping, StreamingMoments

__all__ = ["DEFAULT_DROPOUT_P", "DEFAULT_NUM_SAMPLES", "fit_mcdo",
           "mcdo_predictive", "SampleCountStability", "sample_count_stability"]

DEFAULT_DROPOUT_P = 0.05
"""Channel-dropout rate of the paper's DIP-MCDO baseline."""

DEFAULT_NUM_SAMPLES = 16_384
"""MC samples of :func:`mcdo_predictive` (the paper's count). Measured with
:func:`sample_count_stability` on KMNIST test image 0 (20 angles, 5 % noise, 10k iterations,
3 seeds, counts 256 … 32,768): with the paper's image-noise term (``added_variance = c_A``)
seed spread and drift to 32,768 samples stay below 0.01 from 512 samples on (full
covariance; 256 for patch sizes 1 and 10) and below 0.001 from 8,192. With a 28× smaller
added variance (``σ_y²`` = the true noise variance) the diagonal log-likelihood needs
4,096 samples, while the full-covariance one still drifts by 0.03 between 16,384 and 32,768
samples (sample-covariance bias ~ 1/S): use patches or more samples there."""

_FULL_COVARIANCE_MAX_PIXELS = 4096  # dense covariance up to 64² (128 MiB in float64)
_SAMPLE_ELEMENTS_PER_BATCH = 2**18  # default batch: about 256 samples of 32², 16 of 128²


def fit_mcdo(ray_trafo: nn.Module, y: Tensor, *, dropout_p: float | None = None,
             config: DIPConfig | None = None, net: nn.Module | None = None,
             net_input: Tensor | None = None, ground_truth: Tensor | None = None,
             checkpoint_dir=None, progress: bool = True) -> DIPResult:
    """Train the DIP-MCDO network with :func:`~bayes_dip.dip.reconstruct_dip` (dropout on, no TV).

    Args:
        ray_trafo, y, net_input, ground_truth, checkpoint_dir, progress: as for
            :func:`~bayes_dip.dip.reconstruct_dip`.
        dropout_p: channel-dropout rate of the network built when ``net`` is ``None``
            (default :data:`DEFAULT_DROPOUT_P`); with a given ``net``, if set, it must equal
            the rate of every dropout layer in it.
        config: :class:`~bayes_dip.dip.DIPConfig` with ``gamma == 0`` (the baseline is
            trained without TV); default ``DIPConfig(gamma=0.0)``. Its ``seed`` seeds the
            network initialisation and the training dropout masks.
        net: a network with dropout layers (p > 0); default
            ``unet_preset(config.unet, dropout_p=dropout_p)`` initialised from ``config.seed``
            (preset ``"kmnist"`` up to 64 px, else ``"128"``, as in ``reconstruct_dip``).

    Returns:
        the :class:`~bayes_dip.dip.DIPResult`; ``result.net`` (best weights, eval mode) and
        ``result.net_input`` go to :func:`mcdo_predictive`. ``result.recon`` is the
        dropout-free output, not the MCDO mean.
    """
    config = DIPConfig(gamma=0.0) if config is None else config
    if not isinstance(config, DIPConfig):
        raise TypeError(f"config must be a DIPConfig, got {type(config).__name__}")
    if config.gamma != 0:
        raise ValueError(f"config.gamma must be 0: DIP-MCDO is trained without TV, "
                         f"got {config.gamma!r}")
    if dropout_p is not None:
        check_number(dropout_p, "dropout_p", gt=0, lt=1)
    if net is None:
        if not hasattr(ray_trafo, "im_shape"):
            raise TypeError("ray_trafo must have .im_shape")
        name = config.unet if config.unet is not None else (
            "kmnist" if max(int(s) for s in ray_trafo.im_shape) <= 64 else "128")
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(config.seed)
            net = unet_preset(name, dropout_p=DEFAULT_DROPOUT_P if dropout_p is None else dropout_p)
    else:
        rates = _dropout_rates(net)
        if dropout_p is not None and any(r != dropout_p for r in rates):
            raise ValueError(f"net has dropout rates {sorted(set(rates))}, not dropout_p={dropout_p}")
    return reconstruct_dip(ray_trafo, y, net=net, net_input=net_input, config=config,
                           ground_truth=ground_truth, checkpoint_dir=checkpoint_dir,
                           progress=progress)


def _dropout_rates(net: nn.Module) -> list[float]:
    """Rates of the dropout layers of ``net``; ValueError if it has none with p > 0."""
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    rates = [float(m.p) for m in net.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    if not any(r > 0 for r in rates):
        raise ValueError("net has no dropout layer with p > 0; build it with "
                         "unet_preset(..., dropout_p=0.05)")
    return rates


@contextlib.contextmanager
def _mc_dropout_mode(net: nn.Module) -> Iterator[None]:
    """Eval mode for every module except dropout layers (train mode); restores the modes."""
    modes = [(m, m.training) for m in net.modules()]
    try:
        net.eval()
        for m in net.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.train()
        yield
    finally:
        for m, training in modes:
            m.training = training


def _check_net_input(net: nn.Module, net_input: Tensor) -> Tensor:
    if not isinstance(net_input, Tensor) or not net_input.is_floating_point():
        raise TypeError("net_input must be a floating-point torch.Tensor")
    if net_input.ndim != 4 or net_input.shape[0] != 1:
        raise ValueError(f"net_input must have shape (1, C, H, W), got {tuple(net_input.shape)}")
    if not bool(torch.isfinite(net_input).all()):
        raise ValueError("net_input contains NaN or inf values")
    param = next(net.parameters(), None)
    dtype = param.dtype if param is not None else net_input.dtype
    return net_input.detach().to(dtype)


def _mc_batches(net: nn.Module, net_input: Tensor, stops: Sequence[int], seed: int,
                batch_size: int, progress: bool, start: int = 0, rng_state: tuple | None = None,
                ) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(count so far, samples (b, 1, H, W))`` with dropout active; batches end exactly
    at each count in ``stops`` (sorted). Seeded from ``seed`` in a forked RNG, or continued
    from ``start`` samples with an ``rng_state`` that :func:`_rng_state` took there (while the
    generator is suspended after a batch, the global RNG is the forked one)."""
    device = net_input.device
    devices = [device] if device.type == "cuda" else []
    total = stops[-1]
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=devices), torch.no_grad(), _mc_dropout_mode(net):
        if rng_state is None:
            torch.default_generator.manual_seed(seed)
            if cuda:
                torch.cuda.default_generators[device.index or 0].manual_seed(seed)
        else:
            torch.set_rng_state(rng_state[0])
            if cuda:
                torch.cuda.set_rng_state(rng_state[1], device)
        count = start
        with tqdm(total=total, initial=start, desc="MC dropout", disable=not progress,
                  dynamic_ncols=True) as bar:
            for stop in stops:
                while count < stop:
                    b = min(batch_size, stop - count)
                    out = net(net_input.expand(b, *net_input.shape[1:]))
                    count += b
                    bar.update(b)
                    yield count, out


def _rng_state(device: torch.device) -> tuple:
    """The global RNG state on the CPU and on ``device`` (for a checkpoint of the stream)."""
    return (torch.get_rng_state(),
            torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def mcdo_predictive(net: nn.Module, net_input: Tensor, *, num_samples: int = DEFAULT_NUM_SAMPLES,
                    seed: int = 0, batch_size: int | None = None,
                    full_covariance: bool | None = None, patch_sizes: Sequence[int] = (),
                    added_variance: float = 0.0, store_samples: bool = False,
                    progress: bool = True, checkpoint_path: str | os.PathLike | None = None,
                    checkpoint_every: int = 64) -> Prediction:
    """Gaussian predictive of MC dropout: moments of ``num_samples`` stochastic passes.

    The network runs in eval mode with only its dropout layers active (its modes are
    restored afterwards); ``net_input`` ``(1, C, H, W)`` is repeated ``batch_size`` times
    per pass, each copy drawing its own channel masks. Moments accumulate in float64 on
    ``net_input``'s device, so nothing of size ``S × H·W`` is kept unless ``store_samples``.

    Args:
        net: trained network with dropout layers (``fit_mcdo(...).net``).
        net_input: ``(1, C, H, W)`` fixed input (``fit_mcdo(...).net_input``).
        num_samples: ``S >= 2``; default :data:`DEFAULT_NUM_SAMPLES`.
        seed: seeds the dropout masks (a forked RNG: global RNG state is untouched); the
            samples depend on ``seed`` and ``batch_size``.
        batch_size: passes per forward call; default ``2**18 // (H·W)`` (at least 1).
        full_covariance: keep the dense ``(H·W, H·W)`` covariance; default: iff
            ``H·W <= 4096``.
        patch_sizes: patch sizes ``p >= 1`` whose patch covariances to keep (e.g. (2, 10)).
        added_variance: ``>= 0`` added to every pixel variance (all covariances and ``std``);
            see the module docstring for the image-noise term the paper adds.
        store_samples: also return the samples ``(S, 1, H, W)``.
        progress: tqdm bar.
        checkpoint_path: file that keeps the moments and the RNG state every
            ``checkpoint_every`` batches, at the end and on SIGINT/SIGTERM (which then raises
            ``KeyboardInterrupt`` after the batch); a run that finds it continues from it and
            ends with the uninterrupted run's result (a finished one returns at once). It is
            keyed by the sampling settings and the network's weights; another run's file is
            refused. Not with ``store_samples``.
    """
    _dropout_rates(net)
    x_in = _check_net_input(net, net_input)
    num_samples = check_int(num_samples, "num_samples", 2, allow_numpy=True)
    seed = check_int(seed, "seed", 0, allow_numpy=True)
    added_variance = check_number(added_variance, "added_variance", ge=0, finite=True)
    im_shape = tuple(int(s) for s in x_in.shape[-2:])
    n = im_shape[0] * im_shape[1]
    batch_size = (max(1, _SAMPLE_ELEMENTS_PER_BATCH // n) if batch_size is None
                  else check_int(batch_size, "batch_size", 1, allow_numpy=True))
    if full_covariance is None:
        full_covariance = n <= _FULL_COVARIANCE_MAX_PIXELS
    elif not isinstance(full_covariance, bool):
        raise TypeError(f"full_covariance must be a bool or None, got {full_covariance!r}")
    if isinstance(patch_sizes, (int, str)):
        raise TypeError(f"patch_sizes must be a sequence of ints, got {patch_sizes!r}")
    sizes = sorted({check_int(p, "patch_sizes entries", 1, allow_numpy=True) for p in patch_sizes})

    t0 = time.perf_counter()
    moments = StreamingMoments(n, full_covariance, {p: PatchGrouping(im_shape, p) for p in sizes},
                               x_in.device)
    path, start, rng_state, elapsed = None, 0, None, 0.0
    if checkpoint_path is not None:
        if store_samples:
            raise ValueError("checkpoint_path cannot be combined with store_samples (the samples "
                             "themselves are not checkpointed)")
        checkpoint_every = check_int(checkpoint_every, "checkpoint_every", 1)
        path = KeyedCheckpoint(checkpoint_path, dict(
            num_samples=num_samples, seed=seed, batch_size=batch_size,
            full_covariance=full_covariance, patch_sizes=sizes, im_shape=im_shape,
            weights=parameter_digest(net)), "MC-dropout samples")
        state = path.load(x_in.device)
        if state is not None:
            moments.load_state_dict(state["moments"])
            start, rng_state, elapsed = moments.count, state["rng_state"], state["seconds"]
    kept: list[Tensor] = []
    with deferred_interrupts(path is not None) as stop:
        batches = _mc_batches(net, x_in, [num_samples], seed, batch_size, progress, start,
                              rng_state) if start < num_samples else ()
        for i, (count, out) in enumerate(batches):
            _check_output(out, im_shape)
            moments.update(out.reshape(out.shape[0], n))
            if store_samples:
                kept.append(out.detach().clone())
            if path is not None and ((i + 1) % checkpoint_every == 0 or count == num_samples
                                     or stop.requested):
                path.save(moments=moments.state_dict(), rng_state=_rng_state(x_in.device),
                          seconds=elapsed + time.perf_counter() - t0)
            if stop.requested:
                batches.close()  # its progress bar ends before the interrupt is reported
                raise KeyboardInterrupt
    return _predictive(moments, im_shape, added_variance,
                       torch.cat(kept) if store_samples else None,
                       elapsed + time.perf_counter() - t0)


def _check_output(out: Tensor, im_shape: tuple[int, ...]) -> None:
    if out.ndim != 4 or out.shape[1] != 1 or tuple(out.shape[-2:]) != im_shape:
        raise ValueError(f"net must map net_input to (B, 1, {im_shape[0]}, {im_shape[1]}), "
                         f"got {tuple(out.shape)}")
    if not bool(torch.isfinite(out).all()):
        raise ValueError("net produced NaN or inf values")


def _predictive(moments: StreamingMoments, im_shape: tuple[int, ...], added_variance: float,
                samples: Tensor | None, seconds: float) -> Prediction:
    """The Gaussian fitted to the streamed samples (float64): sample mean, unbiased sample
    (co)variances + ``added_variance``; ``info["num_samples"]``, ``seconds["samples"]``."""
    shape = (1, 1, *im_shape)
    std = moments.variance(added_variance).sqrt().reshape(shape)
    if not bool((std > 0).all()):
        raise ValueError(f"{int((std <= 0).sum())} pixels have zero predictive variance "
                         "(e.g. saturated sigmoid outputs); pass added_variance > 0, e.g. the "
                         "image-noise term σ_y² · ray_trafo.variance_factor()")
    return Prediction(
        mean=moments.mean.reshape(shape).clone(), std=std,
        covariance=moments.covariance(added_variance),
        patch_covariances=moments.patch_covariances(added_variance),
        added_variance=added_variance, samples=samples,
        seconds={"samples": seconds}, info={"num_samples": moments.count})


class SampleCountStability(NamedTuple):
    """Test log-likelihood per pixel after ``counts[j]`` samples, for each seed.

    ``counts`` ``(K,)`` increasing; ``seeds`` ``(R,)``; ``log_likelihoods`` ``(R, K)``.
    """

    counts: np.ndarray
    seeds: np.ndarray
    log_likelihoods: np.ndarray

    def spread(self) -> np.ndarray:
        """``(K,)`` max − min over seeds at each count."""
        return self.log_likelihoods.max(0) - self.log_likelihoods.min(0)

    def drift(self) -> np.ndarray:
        """``(K,)`` largest ``|LL(counts[j]) − LL(counts[-1])|`` over seeds."""
        return np.abs(self.log_likelihoods - self.log_likelihoods[:, -1:]).max(0)

    def stable_count(self, tol: float = 0.01) -> int | None:
        """Smallest count from which on every larger count has spread and drift ``<= tol``
        (``None`` if not even the largest count qualifies)."""
        ok = (self.spread() <= tol) & (self.drift() <= tol)
        stable = None
        for j in range(len(self.counts) - 1, -1, -1):
            if not ok[j]:
                break
            stable = int(self.counts[j])
        return stable


def sample_count_stability(net: nn.Module, net_input: Tensor, ground_truth: Tensor, *,
                           counts: Sequence[int] = (256, 1024, 4096, 16_384),
                           seeds: Sequence[int] = (0, 1, 2), patch_size: int | None = None,
                           added_variance: float = 0.0, batch_size: int | None = None,
                           progress: bool = True) -> SampleCountStability:
    """How the MCDO test log-likelihood settles with the number of samples.

    For each seed one stream of ``max(counts)`` samples is drawn and the log-likelihood
    (``patch_size``: ``None`` full covariance, 1 diagonal, ``p`` patchwise) is evaluated
    whenever the stream reaches a count. A default sample count is adequate for a tolerance
    ``tol`` when :meth:`SampleCountStability.stable_count` ``(tol)`` is at most it.
    """
    _dropout_rates(net)
    x_in = _check_net_input(net, net_input)
    im_shape = tuple(int(s) for s in x_in.shape[-2:])
    if not isinstance(ground_truth, Tensor) or tuple(ground_truth.shape) != (1, 1, *im_shape):
        raise ValueError(f"ground_truth must be a tensor of shape (1, 1, {im_shape[0]}, "
                         f"{im_shape[1]}), got {tuple(getattr(ground_truth, 'shape', ()))}")
    stops = sorted({check_int(c, "counts entries", 2, allow_numpy=True) for c in counts})
    if isinstance(seeds, int) or len(seeds) == 0:
        raise ValueError(f"seeds must be a non-empty sequence of ints, got {seeds!r}")
    seed_list = [check_int(s, "seeds entries", 0, allow_numpy=True) for s in seeds]
    added_variance = check_number(added_variance, "added_variance", ge=0, finite=True)
    n = im_shape[0] * im_shape[1]
    batch_size = (max(1, _SAMPLE_ELEMENTS_PER_BATCH // n) if batch_size is None
                  else check_int(batch_size, "batch_size", 1, allow_numpy=True))
    if patch_size is None:
        full, patches = True, {}
    else:
        p = check_int(patch_size, "patch_size", 1, allow_numpy=True)
        full, patches = False, ({p: PatchGrouping(im_shape, p)} if p > 1 else {})
    lls = np.empty((len(seed_list), len(stops)))
    for i, seed in enumerate(seed_list):
        moments = StreamingMoments(n, full, patches, x_in.device)
        j = 0
        for count, out in _mc_batches(net, x_in, stops, seed, batch_size, progress):
            _check_output(out, im_shape)
            moments.update(out.reshape(out.shape[0], n))
            if count == stops[j]:
                pred = _predictive(moments, im_shape, added_variance, None, 0.0)
                lls[i, j] = pred.log_likelihood(ground_truth, patch_size).per_pixel
                j += 1
    return SampleCountStability(np.array(stops), np.array(seed_list), lls)
