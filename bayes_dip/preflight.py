"""Checks a ``bayes-dip`` command runs before any work: the output location and the memory
the problem size needs (each failure is one ``ValueError`` naming the option), and an
estimate of the run time from the problem size, measured on this machine."""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["check_output_folder", "available_memory", "estimate_memory", "check_memory",
           "image_side", "check_device", "RunTimeEstimate", "estimate_run_time"]

#: bytes per non-zero of the system matrix while it lives: astra's float32 + int32 copy,
#: scipy's float64 CSR and its transpose, torch CSR copies in float32 and float64 (both ways)
BYTES_PER_NONZERO = 90
#: non-zeros of the system matrix per pixel and angle (astra's parallel/fan projectors: ~1.8)
NONZEROS_PER_PIXEL_ANGLE = 2
#: memory of everything else in a small job (interpreter, torch, network, figures)
BASE_MEMORY = 2 ** 30
#: angles of the largest HTC2022 scan (0.5° steps over 360°), for an estimate before loading
HTC2022_MAX_ANGLES = 721


def check_output_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """The absolute folder ``path`` if it can be created or replaced: not an existing file, and
    its nearest existing parent a folder this process can create entries in (probed)."""
    target = Path(path).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise ValueError(f"{option}: {target} is an existing file, not a folder")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{option}: cannot create {target}: {parent} is a file")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".bayes-dip-probe.", dir=parent))
    except OSError as exc:
        raise ValueError(f"{option}: cannot create {target}: {parent} is not writable "
                         f"({exc.strerror})") from exc
    return target


def available_memory() -> int | None:
    """Bytes available to this process: ``MemAvailable`` of ``/proc/meminfo``, capped by a
    cgroup v2 limit; ``None`` where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            found.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def estimate_memory(side: int, angles: int) -> int:
    """Lower estimate in bytes of a job's peak memory for a ``side × side`` image and
    ``angles`` projection angles: the system matrix in all its copies plus a base."""
    nonzeros = NONZEROS_PER_PIXEL_ANGLE * angles * side * side
    return BASE_MEMORY + BYTES_PER_NONZERO * nonzeros


def check_memory(side: int, angles: int, options: str, force: bool = False) -> None:
    """Refuse (``ValueError`` naming ``options``) a problem whose estimated memory exceeds the
    available memory, unless ``force``."""
    need, have = estimate_memory(side, angles), available_memory()
    if force or have is None or need <= have:
        return
    gib = 2 ** 30
    raise ValueError(f"{options} ({side}x{side} pixels, {angles} angles) needs an estimated "
                     f"{need / gib:.1f} GiB of memory (system matrix ~{BYTES_PER_NONZERO} bytes "
                     f"per non-zero), but {have / gib:.1f} GiB are available; lower them, or "
                     f"pass --force to try anyway")


def image_side(path: str | os.PathLike) -> int | None:
    """Larger side in pixels of an image file (.npy, .dcm, or what Pillow reads), read from its
    header; ``None`` where it cannot be read (the loader then reports why)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            import numpy as np
            return int(max(np.load(path, mmap_mode="r").shape[-2:]))
        if path.suffix.lower() == ".dcm":
            import pydicom
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return int(max(ds.Rows, ds.Columns))
        from PIL import Image
        with Image.open(path) as image:
            return int(max(image.size))
    except Exception:  # unreadable: load_problem names the option and the reason
        return None


#: uncertainty stages of each method in DIP-step equivalents (:func:`estimate_run_time`)
UNCERTAINTY_STEPS = {"dip": 0, "dip-evidence": 0, "lin-dip-mll": 4000, "lin-dip-tvmap": 4000}
#: spread of the linearised stages over the development runs: 2,600–5,500 step equivalents
UNCERTAINTY_SPREAD = (0.65, 1.4)
#: MC-dropout forward passes per DIP-step equivalent (a step is a forward and a backward)
FORWARDS_PER_STEP = 3
#: the rest of a job (TV-weight rule, c_A, metrics, figures) in DIP-step equivalents, plus
#: the interpreter's start and imports in seconds (measured: 9 s at 28², 46 s at 128²)
SETUP_STEPS, SETUP_SECONDS = 350, 10.0


@dataclass(frozen=True)
class RunTimeEstimate:
    """Seconds a ``reconstruct`` job is expected to take: ``step`` (one DIP step here, measured),
    ``setup`` (everything but the DIP and the uncertainty), ``dip`` (at the iteration cap: an
    upper bound, the plateau rule often stops earlier) and ``uncertainty`` as a
    ``(low, high)`` range."""

    step: float
    setup: float
    dip: float
    uncertainty: tuple[float, float]

    def describe(self) -> str:
        """One line for the user, e.g. ``about 6–12 min (DIP at most 5 min, uncertainty
        2–6 min; one DIP step here: 0.15 s)``."""
        low = self.setup + self.dip * 0.7 + self.uncertainty[0]
        high = self.setup + self.dip + self.uncertainty[1]
        parts = f"DIP at most {_duration(self.dip)}"
        if self.uncertainty[1] > 0:
            parts += f", uncertainty {_duration(*self.uncertainty)}"
        return f"about {_duration(low, high)} ({parts}; one DIP step here: {self.step:.2g} s)"


def _duration(low: float, high: float | None = None) -> str:
    """``low`` (to ``high``) seconds in minutes or hours, e.g. ``3–5 min``, ``1.2–2.5 h``."""
    values = (low,) if high is None else (low, high)
    unit, fmt, suffix = (3600, "{:.1f}", " h") if max(values) >= 3600 else (60, "{:.0f}", " min")
    texts = dict.fromkeys(fmt.format(max(v / unit, 0.1 if unit == 3600 else 1)) for v in values)
    return "–".join(texts) + suffix


def measure_dip_step(side: int, device: str = "cpu", budget: float = 1.0) -> float:
    """Seconds of one DIP training step (U-Net forward, backward, Adam) for a ``side × side``
    image with the U-Net the data rule picks at that size
    (:func:`~bayes_dip.dip.settings.unet_for_size`): the median of 2–6 steps timed
    within about ``budget`` seconds, after one warm-up step."""
    import torch

    from bayes_dip.dip.settings import unet_for_size
    from bayes_dip.dip.unet import unet_preset
    net = unet_preset(unet_for_size(side)).to(device)
    x = torch.rand(1, 1, side, side, device=device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    times: list[float] = []
    while len(times) < 3 or (sum(times[1:]) < budget and len(times) < 7):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    timed = sorted(times[1:])
    return timed[len(timed) // 2]


def check_device(device: str, option: str = "--device") -> str:
    """``device`` if torch can run there: a valid device string whose backend is present."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{option} must be a torch device such as cpu or cuda, "
                         f"got {device!r}") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option} {device}: this torch has no CUDA device available")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"{option} {device}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def estimate_run_time(side: int, method: str | None, iterations: int | None = None,
                      mcdo_samples: int | None = None, device: str = "cpu") -> RunTimeEstimate:
    """Run time of a ``reconstruct`` job on a ``side × side`` image, from one DIP step measured
    on this machine (:func:`measure_dip_step`) times a count of steps: a setup
    (:data:`SETUP_STEPS`, :data:`SETUP_SECONDS`), the DIP's ``iterations``
    (default: the data rule's cap, :func:`~bayes_dip.dip.settings.iteration_cap`) and the
    ``method``'s uncertainty stages in DIP-step equivalents (``None``: no uncertainty):
    4,000 for the linearised DIP (subspace, evidence, predictive; 2,600–5,500 measured over
    the development runs from 64² to 256² and 20 to 121 angles, whose DIP steps took
    0.08–0.28 s), a second DIP plus one third of a step per forward pass for MC-dropout."""
    from bayes_dip.baselines import DEFAULT_NUM_SAMPLES
    from bayes_dip.dip.settings import iteration_cap

    step = measure_dip_step(side, device)
    dip = step * (iterations or iteration_cap(side))
    if method is None:
        extra = (0.0, 0.0)
    elif method == "mcdo":
        cost = dip + step * (mcdo_samples or DEFAULT_NUM_SAMPLES) / FORWARDS_PER_STEP
        extra = (cost, cost)
    else:
        cost = step * UNCERTAINTY_STEPS.get(method, max(UNCERTAINTY_STEPS.values()))
        extra = (cost * UNCERTAINTY_SPREAD[0], cost * UNCERTAINTY_SPREAD[1])
    return RunTimeEstimate(step, SETUP_SECONDS + step * SETUP_STEPS, dip, extra)
