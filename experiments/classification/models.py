"""Classifiers for the benchmark and their MAP training (seeded, cached as ``.pt`` files).

- :class:`MLP`: flatten → [Linear → ReLU] × len(hidden) → Linear;
- :class:`LeNet`: LeNet-5 style, [Conv2d 5×5 → ReLU → MaxPool 2] × 2 → Linear 120 → ReLU →
  Linear 84 → ReLU → Linear; paddings (2, 0) give the classic 16 × 5 × 5 features on 28 × 28
  MNIST (61,706 weights), (2, 2) suit tiny 8 × 8 images.

MAP training minimises the mean cross-entropy plus ``weight_decay/2 · ‖θ‖²`` with Adam,
i.e. a Gaussian prior of precision ``weight_decay · N`` on all weights.
The last module of both networks is the output ``nn.Linear`` (``subset="last_layer"`` works).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .datasets import Split

__all__ = ["MLP", "LeNet", "TrainConfig", "build_model", "train_map", "load_or_train"]


class MLP(nn.Sequential):
    """Fully connected ReLU network on flattened images ``(B, 1, H, W)`` -> logits ``(B, C)``."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (128, 128)):
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class LeNet(nn.Sequential):
    """LeNet-5 style CNN on ``(B, C_in, H, W)`` images -> logits ``(B, C)``."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, channels: tuple[int, int] = (6, 16),
                 hidden: tuple[int, int] = (120, 84), padding: tuple[int, int] = (2, 0)):
        c_in, height, width = image_shape
        conv = nn.Sequential(
            nn.Conv2d(c_in, channels[0], 5, padding=padding[0]), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels[0], channels[1], 5, padding=padding[1]), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten())
        size = [(((n + 2 * padding[0] - 4) // 2) + 2 * padding[1] - 4) // 2 for n in (height, width)]
        if min(size) < 1:
            raise ValueError(f"LeNet with paddings {tuple(padding)} needs larger images than {height} × {width}")
        features = channels[1] * size[0] * size[1]
        super().__init__(*conv, nn.Linear(features, hidden[0]), nn.ReLU(), nn.Linear(hidden[0], hidden[1]),
                         nn.ReLU(), nn.Linear(hidden[1], num_classes))


def build_model(arch: str, image_shape: tuple[int, int, int], num_classes: int, seed: int,
                **kwargs: object) -> nn.Module:
    """``"mlp"`` or ``"lenet"`` initialised from ``seed`` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "mlp":
            c, h, w = image_shape
            return MLP(c * h * w, num_classes, tuple(kwargs.get("hidden", (128, 128))))
        if arch == "lenet":
            return LeNet(image_shape, num_classes, **{k: tuple(v) for k, v in kwargs.items()})
    raise ValueError(f"arch must be 'mlp' or 'lenet', got {arch!r}")


@dataclass
class TrainConfig:
    """Adam MAP training: ``epochs`` passes in shuffled mini-batches of ``batch_size``."""

    arch: str = "mlp"
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 1e-4
    seed: int = 0
    model_kwargs: dict = field(default_factory=dict)


def train_map(model: nn.Module, train: Split, config: TrainConfig, progress: bool = False) -> list[float]:
    """Train ``model`` in place; returns the mean training loss of each epoch."""
    gen = torch.Generator().manual_seed(config.seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    n = len(train)
    losses = []
    model.train()
    for epoch in range(config.epochs):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for start in tqdm(range(0, n, config.batch_size), disable=not progress, desc=f"epoch {epoch + 1}"):
            idx = perm[start:start + config.batch_size]
            loss = nn.functional.cross_entropy(model(train.images[idx]), train.labels[idx])
            l2 = sum((p**2).sum() for p in model.parameters())
            opt.zero_grad()
            (loss + 0.5 * config.weight_decay * l2).backward()
            opt.step()
            total += loss.item() * idx.numel()
        losses.append(total / n)
    model.eval()
    return losses


def _fingerprint(train: Split) -> str:
    h = hashlib.sha1()
    h.update(str(tuple(train.images.shape)).encode())
    h.update(train.images[::max(1, len(train) // 64)].numpy().tobytes())
    h.update(train.labels.numpy().tobytes())
    return h.hexdigest()[:12]


def load_or_train(config: TrainConfig, train: Split, num_classes: int, cache_dir: str | Path | None,
                  progress: bool = False) -> tuple[nn.Module, dict]:
    """The MAP network for ``config`` and ``train``, from ``cache_dir`` if trained before.

    The cache file name hashes the config, the architecture (``repr(model)``) and a
    fingerprint of the training data.
    Returns the model (eval mode) and info ``{"path", "cached", "train_seconds", "losses"}``.
    """
    model = build_model(config.arch, tuple(train.images.shape[1:]), num_classes, config.seed, **config.model_kwargs)
    key = hashlib.sha1(json.dumps({**asdict(config), "data": _fingerprint(train), "net": repr(model)},
                                  sort_keys=True).encode())
    path = None if cache_dir is None else Path(cache_dir) / f"{config.arch}_seed{config.seed}_{key.hexdigest()[:12]}.pt"
    if path is not None and path.is_file():
        state = torch.load(path, weights_only=True)
        model.load_state_dict(state["model"])
        model.eval()
        return model, {"path": str(path), "cached": True, "train_seconds": float(state["train_seconds"]),
                       "losses": state["losses"].tolist()}
    start = time.perf_counter()
    losses = train_map(model, train, config, progress)
    seconds = time.perf_counter() - start
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "train_seconds": seconds,
                    "losses": torch.tensor(losses)}, path)
    return model, {"path": None if path is None else str(path), "cached": False, "train_seconds": seconds,
                   "losses": losses}
