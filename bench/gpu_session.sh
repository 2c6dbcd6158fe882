#!/usr/bin/env bash
# One short, prepared run for a lent GPU machine (device time is scarce): the `gpu` tests, then the
# DDP scaling benchmark on every visible GPU with NCCL. Run from the repository root after `make test`
# has built .venv (or with .venv carried over). Prints everything; the figures go into the issue note.
set -u
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())"
timeout 300 "$PY" -m pytest -q -p no:cacheprovider -m gpu -rA tests/test_trainer_gpu.py
timeout 240 "$PY" bench/ddp_scaling.py --device gpu --repeats 2
