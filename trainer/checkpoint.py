"""Checkpoint format. Keys: format_version, epoch, global_step, state_dict, hyper_parameters,
optimizer_states, lr_schedulers, precision (GradScaler), loops (progress counters, the position
inside the epoch, the epoch's starting RNG state, elapsed time, epoch-metric accumulators),
callbacks (by state_key), datamodule, rng_states (python, torch, torch.cuda)."""

from __future__ import annotations

FORMAT_VERSION = 1
