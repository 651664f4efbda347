"""Training and evaluation loaders over in-memory uint8 arrays, and the per-rank shard sampler."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    WeightedRandomSampler,
)

from medtl.training.data.base import SampleSet
from medtl.training.runtime import Runtime, world
from medtl.training.tasks import TaskAdapter


class ShardSampler(torch.utils.data.Sampler[int]):
    """This rank's share of one seeded epoch order; with `weights`, a weighted draw with replacement.

    Every rank draws the same global order (seed + epoch) and keeps every world-th index, so the
    ranks see disjoint samples. `set_epoch` is called by the loop before each epoch.
    """

    def __init__(self, n: int, seed: int, rank: int, world_size: int, weights: np.ndarray | None = None) -> None:
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.epoch = 0
        self.per_rank = -(-n // world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        total = self.per_rank * self.world_size
        if self.weights is not None:
            order = torch.multinomial(self.weights, total, replacement=True, generator=generator)
        else:
            order = torch.randperm(self.n, generator=generator)
            order = torch.cat([order, order[: total - self.n]])  # pad so every rank gets as many
        return iter(order[self.rank : total : self.world_size].tolist())

    def __len__(self) -> int:
        return self.per_rank


class _BatchDataset(Dataset):
    """Serves whole batches from uint8 arrays: one fancy-index per batch instead of N item calls."""

    def __init__(self, samples: SampleSet, adapter: TaskAdapter) -> None:
        self.images = samples.images
        self.targets = adapter.target_tensor(np.asarray(samples.targets))
        self.extras = None if samples.extras is None else torch.as_tensor(samples.extras, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: Sequence[int]) -> dict[str, torch.Tensor]:
        index = np.sort(np.asarray(index))
        batch = {
            "image": torch.from_numpy(np.ascontiguousarray(self.images[index])).unsqueeze(1),
            "target": self.targets[index],
        }
        if self.extras is not None:
            batch["extras"] = self.extras[index]
        return batch


def make_loader(
    samples: SampleSet,
    adapter: TaskAdapter,
    batch_size: int,
    runtime: Runtime,
    *,
    shuffle: bool,
    seed: int = 0,
    sample_weights: np.ndarray | None = None,
) -> DataLoader:
    """A loader over in-memory arrays; `sample_weights` draws with replacement (oversampling)."""
    generator = torch.Generator().manual_seed(seed)
    rank, world_size = world()
    if world_size > 1 and (shuffle or sample_weights is not None):
        base = ShardSampler(len(samples), seed, rank, world_size, sample_weights)
    elif sample_weights is not None:
        base = WeightedRandomSampler(
            torch.as_tensor(sample_weights, dtype=torch.double), len(samples), replacement=True, generator=generator
        )
    elif shuffle:
        base = RandomSampler(range(len(samples)), generator=generator)
    else:
        base = SequentialSampler(range(len(samples)))
    return DataLoader(
        _BatchDataset(samples, adapter),
        sampler=BatchSampler(base, batch_size, drop_last=False),
        batch_size=None,
        num_workers=runtime.num_workers,
        pin_memory=runtime.pin_memory,
        persistent_workers=runtime.num_workers > 0,
    )
