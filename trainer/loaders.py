"""Rebuilding a DataLoader with another sampler (distributed sharding, overfit_batches), keeping
everything else the user chose."""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, Sampler


def with_sampler(loader: DataLoader[Any], sampler: Sampler[Any]) -> DataLoader[Any]:
    """The same loader (batch size, workers, collate, pinning, drop_last, seeding) drawing from `sampler`."""
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor,
        persistent_workers=loader.persistent_workers,
    )
