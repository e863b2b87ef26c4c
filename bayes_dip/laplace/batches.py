"""Re-iterable ``(x, y)`` batches from a DataLoader, a list of batches or ``(X, y)`` tensors."""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import Tensor

__all__ = ["Batches"]


class Batches:
    """Batches of ``(inputs, targets)`` moved to ``device``; iterable any number of times.

    Args:
        data: a ``(X, y)`` tuple of tensors with equal first dimension (split into
            ``batch_size`` chunks), or any re-iterable of ``(x, y)`` pairs such as a
            ``torch.utils.data.DataLoader``.
        batch_size: chunk size for tensor data.
        device: where the batches go (the model's device).
    """

    def __init__(self, data: object, batch_size: int, device: torch.device):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.device = device
        self.batch_size = batch_size
        if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
            x, y = data
            if x.shape[0] != y.shape[0] or x.shape[0] == 0:
                raise ValueError(f"data (X, y) must have the same, non-zero number of rows, "
                                 f"got {x.shape[0]} and {y.shape[0]}")
            self._tensors: tuple[Tensor, Tensor] | None = (x, y)
            self._iterable: Iterable | None = None
        elif isinstance(data, Iterable) and not isinstance(data, (Tensor, str, tuple)):
            if isinstance(data, Iterator):
                raise TypeError("data must be re-iterable (a DataLoader or a list), not a one-shot iterator")
            self._tensors, self._iterable = None, data
        else:
            raise TypeError("data must be a DataLoader / list of (x, y) batches or a tuple (X, y) of tensors, "
                            f"got {type(data).__name__}")

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self._tensors is not None:
            x, y = self._tensors
            for start in range(0, x.shape[0], self.batch_size):
                stop = start + self.batch_size
                yield x[start:stop].to(self.device), y[start:stop].to(self.device)
            return
        for batch in self._iterable:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise TypeError("each batch of data must be an (x, y) pair")
            x, y = batch[0], batch[1]
            if not isinstance(x, Tensor) or not isinstance(y, Tensor):
                raise TypeError("batch inputs and targets must be tensors")
            yield x.to(self.device), y.to(self.device)

    def num_batches(self) -> int | None:
        """Number of batches if known (for progress bars)."""
        if self._tensors is not None:
            return -(-self._tensors[0].shape[0] // self.batch_size)
        try:
            return len(self._iterable)  # type: ignore[arg-type]
        except TypeError:
            return None
