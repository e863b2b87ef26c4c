"""Checks a ``bayes-dip`` command runs before any work: the output location and the memory
the problem size needs. Each failure is one ``ValueError`` naming the option."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["check_output_folder", "available_memory", "estimate_memory", "check_memory",
           "image_side"]

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
