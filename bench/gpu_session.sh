#!/usr/bin/env bash
# One short, prepared run for a lent GPU machine (device time is scarce): the `gpu` tests, then the
# GPU benchmarks (the Trainer against a raw PyTorch loop on the GPU; DDP with NCCL on every visible
# GPU). Run from the repository root, with PY naming a Python that can import gridlab (.venv after
# `make test`, or the machine's own python3 with gridlab's wheel on PYTHONPATH). Prints everything;
# the figures go into the issue note. Each step has its own time limit so one hang cannot eat the rest.
set -u
PY=${PY:-.venv/bin/python}
export PYTHONUNBUFFERED=1
step() { echo; echo "=== $* ($(date +%T))"; }

step environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import sys, torch, grpc, google.protobuf as pb, gridlab.v1.scheduler_pb2; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count(), 'grpc', grpc.__version__, 'protobuf', pb.__version__)"

step gpu tests
timeout 300 "$PY" -m pytest -q -p no:cacheprovider -m gpu -rA --timeout 240 tests/test_trainer_gpu.py tests/test_cluster_gpu.py

step "trainer overhead on the GPU (against the plain PyTorch loop)"
timeout 150 "$PY" bench/trainer_overhead.py --device cuda --steps 1000 --wide-steps 300 --repeats 3

step "DDP with NCCL on every visible GPU (against raw PyTorch DDP)"
timeout 150 "$PY" bench/ddp_scaling.py --device gpu --repeats 2 --steps 200

step done
