"""Input validation and small tensor helpers shared by the ``linalg`` modules."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .. import checks

Matmul = Callable[[Tensor], Tensor]


def as_matmul(obj: object, name: str, n: int | None = None) -> Matmul:
    """Turn a dense square tensor, an operator or a callable into ``V (n, k) -> (n, k)``.

    ``n`` (when given) is the expected size; a known non-square or mismatched shape raises.
    """
    if isinstance(obj, Tensor):
        if obj.dim() != 2 or obj.shape[0] != obj.shape[1]:
            raise ValueError(f"{name} must be a square matrix (n, n), got shape {tuple(obj.shape)}")
        shape = tuple(obj.shape)
        fn: Matmul = obj.__matmul__
    elif hasattr(obj, "shape") and hasattr(obj, "matmul") and callable(obj.matmul):
        shape = tuple(obj.shape)
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"{name} must be a square operator (n, n), got shape {shape}")
        fn = obj.matmul
    elif callable(obj):
        return obj
    else:
        raise TypeError(f"{name} must be a square Tensor, an operator or a callable, got {type(obj).__name__}")
    if n is not None and shape[0] != n:
        raise ValueError(f"{name} has shape {shape} but the right-hand side has {n} rows")
    return fn


def as_solve(obj: object, name: str) -> Matmul:
    """A preconditioner object with ``.solve`` or a callable ``V -> P^{-1} V``."""
    if hasattr(obj, "solve") and callable(obj.solve):
        return obj.solve
    if callable(obj):
        return obj
    raise TypeError(f"{name} must have a .solve(V) method or be callable, got {type(obj).__name__}")


def check_block(v: object, name: str, n: int | None = None) -> Tensor:
    """Check that ``v`` is a floating 2-D tensor ``(n, k)`` with ``k >= 1``."""
    if not isinstance(v, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    if v.dim() != 2 or v.shape[1] < 1:
        raise ValueError(f"{name} must have shape (n, k) with k >= 1, got {tuple(v.shape)}")
    if not v.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {v.dtype}")
    if n is not None and v.shape[0] != n:
        raise ValueError(f"{name} must have {n} rows, got shape {tuple(v.shape)}")
    return v


def check_int(value: object, name: str, minimum: int) -> int:
    """``value`` as an int ``>= minimum``; ``TypeError`` for a non-int (or bool)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return checks.check_int(value, name, minimum)


def check_positive(value: object, name: str) -> float:
    """``value`` (a number or a one-element tensor) as a float ``> 0``; ``TypeError`` for
    anything else."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__}")
    return checks.check_number(value, name, gt=0)


def dtype_device(matmul: object, dtype: torch.dtype | None,
                 device: torch.device | str | None) -> tuple[torch.dtype, torch.device]:
    """dtype/device given explicitly, else those of an operator or tensor ``matmul``.

    A plain callable carries neither: then ``dtype`` is required and ``device`` defaults to
    the CPU. ``matmul=None`` means "no operator": the torch default dtype and the CPU.
    """
    if dtype is None:
        dtype = getattr(matmul, "dtype", None)
        if dtype is None:
            if matmul is not None:
                raise ValueError("dtype is required when matmul is a plain callable "
                                 "(pass dtype=..., and device=... unless it is the CPU)")
            dtype = torch.get_default_dtype()
    if device is None:
        device = getattr(matmul, "device", None) or torch.device("cpu")
    return dtype, torch.device(device)


def randn(shape: tuple[int, ...], generator: torch.Generator | None, dtype: torch.dtype,
          device: torch.device) -> Tensor:
    """Standard normal draws from ``generator`` (on its own device), moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, dtype=dtype, device=gen_device).to(device)


def orthonormalize(y: Tensor) -> Tensor:
    """Orthonormal basis ``(n, k)`` of the columns of ``y`` (reduced QR)."""
    return torch.linalg.qr(y, mode="reduced").Q


def col_dot(a: Tensor, b: Tensor) -> Tensor:
    """Column-wise inner products ``(k,)`` of two ``(n, k)`` blocks."""
    return (a * b).sum(dim=0)
