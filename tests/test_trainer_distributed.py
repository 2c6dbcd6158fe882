"""Multi-process trainer tests: real ranks (subprocesses) in a real gloo process group.

Each run costs ~4-6 s here (imports and rendezvous), so the runs are few and each test checks a lot.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "tests" / "dist_job.py"
EXAMPLE = ROOT / "examples" / "ddp_mlp.py"

pytestmark = pytest.mark.slow


def run(*args: object, cwd: Path, timeout: float = 120, torchrun: int = 0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRIDLAB_DIST_TIMEOUT": "60"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={torchrun}"] if torchrun else []
    cmd = [*(launcher or [sys.executable]), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def max_diff(a: Path, b: Path) -> float:
    wa, wb = torch.load(a), torch.load(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def leftover(marker: str) -> list[psutil.Process]:
    """Live processes whose command line mentions `marker` (a per-test folder)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(marker in a for a in p.info["cmdline"] or []):
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_one_example_file_runs_alone_under_the_trainer_launcher_and_under_torchrun(tmp_path: Path) -> None:
    """`python ex.py`, `python ex.py --devices 2`, `torchrun --nproc-per-node 2 ex.py`: same file, same
    global batch, weights within 1e-6 (DDP averages the two half-batch gradients)."""
    common = ["--epochs", "1"]
    out1 = ok(run(EXAMPLE, *common, "--root", tmp_path / "a", "--save-weights", tmp_path / "one.pt", cwd=tmp_path))
    out2 = ok(
        run(
            EXAMPLE,
            *common,
            "--devices",
            "2",
            "--root",
            tmp_path / "b",
            "--save-weights",
            tmp_path / "two.pt",
            cwd=tmp_path,
        )
    )
    out3 = ok(
        run(EXAMPLE, *common, "--root", tmp_path / "c", "--save-weights", tmp_path / "tr.pt", cwd=tmp_path, torchrun=2)
    )
    assert "world_size=1 steps=16" in out1
    assert "world_size=2 steps=16" in out2
    assert "world_size=2 steps=16" in out3
    assert max_diff(tmp_path / "one.pt", tmp_path / "two.pt") < 1e-6
    assert max_diff(tmp_path / "one.pt", tmp_path / "tr.pt") < 1e-6
    # Rank 0 alone writes logs and checkpoints: one version folder, one checkpoint.
    assert [p.name for p in (tmp_path / "b" / "gridlab_logs").iterdir()] == ["version_0"]
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["epoch=0-step=16.ckpt"]
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "epoch=0-step=16.ckpt", weights_only=False)
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])  # the unwrapped Module's weights
    assert not leftover(str(tmp_path))


def test_ddp_with_accumulation_matches_one_process_and_sigterm_resume_is_exact(tmp_path: Path) -> None:
    """no_sync inside the accumulation window keeps parity; SIGTERM to both ranks mid-epoch writes a
    checkpoint and exits 0; resuming from it ends with the uninterrupted run's weights exactly."""
    job = [JOB, "--accumulate", "2"]
    ok(run(*job, "--root", tmp_path / "one", "--save-weights", tmp_path / "one.pt", cwd=tmp_path))
    ok(run(*job, "--devices", 2, "--root", tmp_path / "ref", "--save-weights", tmp_path / "ref.pt", cwd=tmp_path))
    assert max_diff(tmp_path / "one.pt", tmp_path / "ref.pt") < 1e-6

    shuffled = [*job, "--shuffle", "--devices", 2]
    ref_out = ok(run(*shuffled, "--root", tmp_path / "sref", "--save-weights", tmp_path / "sref.pt", cwd=tmp_path))
    stopped = run(
        *shuffled, "--root", tmp_path / "pre", "--sigterm-at", 10, "--save-weights", tmp_path / "x.pt", cwd=tmp_path
    )
    out = ok(stopped)
    ckpt_path = tmp_path / "pre" / "checkpoints" / "preempted.ckpt"
    assert f"SIGTERM received; saved {ckpt_path} at epoch 1, step 11" in out
    assert "done" not in out
    assert not (tmp_path / "x.pt").exists()
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert ckpt["global_step"] == 11
    assert ckpt["loops"]["fit_loop"]["epoch_progress"]["processed"] == 1  # inside the second epoch

    resumed = run(
        *shuffled,
        "--root",
        tmp_path / "res",
        "--ckpt-path",
        ckpt_path,
        "--save-weights",
        tmp_path / "res.pt",
        cwd=tmp_path,
    )
    res_out = ok(resumed)
    assert "done world_size=2 steps=16" in res_out
    assert max_diff(tmp_path / "sref.pt", tmp_path / "res.pt") == 0.0
    # Each rank got its own share of the half-finished epoch's metric totals back: the synced epoch loss too.
    assert ref_out.split("epoch_loss=")[1].split()[0] == res_out.split("epoch_loss=")[1].split()[0]
    assert len(ckpt["loops"]["fit_loop"]["per_rank"]) == 2
    assert not leftover(str(tmp_path))


def test_sigterm_to_one_rank_stops_every_rank_through_the_all_reduce(tmp_path: Path) -> None:
    out = ok(
        run(JOB, "--devices", 2, "--root", tmp_path / "r", "--sigterm-at", 5, "--sigterm-ranks", "1", cwd=tmp_path)
    )
    assert "saved" in out
    assert "step 6" in out
    assert (tmp_path / "r" / "checkpoints" / "preempted.ckpt").is_file()


@pytest.mark.parametrize("failing_rank", [1, 0])
def test_a_rank_that_raises_fails_the_whole_group_fast_and_leaves_no_process(tmp_path: Path, failing_rank: int) -> None:
    t0 = time.monotonic()
    proc = run(
        JOB, "--devices", 2, "--root", tmp_path / "r", "--raise-at", 3, "--raise-rank", failing_rank, cwd=tmp_path
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    assert f"ValueError: boom on rank {failing_rank}" in proc.stderr
    if failing_rank == 1:  # rank 0 reports the first failure, not only its own broken connection
        assert "GroupError: rank 1: ValueError: boom on rank 1 (this is rank 0" in proc.stderr
    assert elapsed < 60, f"the group took {elapsed:.0f} s to fail: it waited for the collective timeout"
    assert not leftover(str(tmp_path))


def test_fsdp_trains_and_its_sharded_checkpoint_resumes_in_one_process_and_in_two(tmp_path: Path) -> None:
    fsdp = [EXAMPLE, "--strategy", "fsdp"]
    ok(run(EXAMPLE, "--epochs", 3, "--root", tmp_path / "ref", "--save-weights", tmp_path / "ref.pt", cwd=tmp_path))
    out = ok(run(*fsdp, "--devices", 2, "--epochs", 2, "--root", tmp_path / "a", cwd=tmp_path))
    assert "world_size=2 steps=32" in out
    folder = tmp_path / "a" / "checkpoints" / "epoch=1-step=32.ckpt"
    assert folder.is_dir()
    assert (folder / "meta.pt").is_file()
    assert len(list(folder.glob("*.distcp"))) == 2

    one = run(
        EXAMPLE,
        "--epochs",
        3,
        "--root",
        tmp_path / "b",
        "--ckpt-path",
        folder,
        "--save-weights",
        tmp_path / "one.pt",
        cwd=tmp_path,
    )
    assert "world_size=1 steps=48" in ok(one)
    two = run(
        *fsdp,
        "--devices",
        2,
        "--epochs",
        3,
        "--root",
        tmp_path / "c",
        "--ckpt-path",
        folder,
        "--save-weights",
        tmp_path / "two.pt",
        cwd=tmp_path,
    )
    assert "world_size=2 steps=48" in ok(two)
    # Sharded training, then a resume at another world size, ends where one process training throughout ends.
    assert max_diff(tmp_path / "ref.pt", tmp_path / "one.pt") < 1e-5
    assert max_diff(tmp_path / "ref.pt", tmp_path / "two.pt") < 1e-5
    assert not leftover(str(tmp_path))


def test_fsdp_clips_the_global_gradient_norm_and_trains_in_bf16(tmp_path: Path) -> None:
    """Clipping under FSDP sees the whole (sharded) gradient, and accumulation reduce-scatters once per step:
    it matches one process doing the same."""
    clip = [JOB, "--clip", "0.05", "--accumulate", "2"]
    ok(run(*clip, "--root", tmp_path / "a", "--save-weights", tmp_path / "one.pt", cwd=tmp_path))
    ok(
        run(
            *clip,
            "--devices",
            2,
            "--strategy",
            "fsdp",
            "--root",
            tmp_path / "b",
            "--save-weights",
            tmp_path / "fsdp.pt",
            cwd=tmp_path,
        )
    )
    assert max_diff(tmp_path / "one.pt", tmp_path / "fsdp.pt") < 1e-6
    bf16 = [JOB, "--devices", 2, "--strategy", "fsdp", "--precision", "bf16-mixed"]
    ok(run(*bf16, "--root", tmp_path / "c", "--save-weights", tmp_path / "bf16.pt", cwd=tmp_path))
    weights = torch.load(tmp_path / "bf16.pt")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())  # fp32 master weights
    assert 0 < max_diff(tmp_path / "one.pt", tmp_path / "bf16.pt") < 0.5


def test_devices_2_from_a_notebook_like_session_forks_and_hands_results_back(tmp_path: Path) -> None:
    """`python -c` stands in for a notebook: nothing on disk to re-run, the Module defined in the session."""
    code = (ROOT / "tests" / "notebook_job.py").read_text()
    out = ok(run("-c", code, cwd=tmp_path))
    # The parent's own Module object holds the trained weights, equal to one process's (the same global batch).
    assert "forked steps=16 epoch=2" in out
    assert "status=finished" in out
    diff = float(out.split("diff=")[1].split()[0])
    assert diff < 1e-6

    failed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "BOOM": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert failed.returncode != 0
    assert "GroupError: rank 1: ValueError: boom in a notebook" in failed.stderr
    assert "RuntimeError: rank 1 of 2 failed: ValueError: boom in a notebook" in failed.stderr


def test_a_second_sigterm_ends_a_rank_at_once_even_inside_a_collective(tmp_path: Path) -> None:
    """Rank 1 sleeps at step 3, so rank 0 sits in the gradient all-reduce, where no Python handler can run;
    two SIGTERMs there must still end rank 0 at once (143), not a checkpoint 20 s later."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRIDLAB_DIST_TIMEOUT": "60"}
    cmd = [sys.executable, str(JOB), "--devices", "2", "--root", str(tmp_path / "r"), "--print-every", "1"]
    proc = subprocess.Popen([*cmd, "--sleep", "3,1,20"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("step 3"):
                break
        time.sleep(1.0)  # rank 0 is inside the all-reduce of step 3's backward by now
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        assert time.monotonic() - t0 < 5
        assert code == 143
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 10  # rank 1 dies with rank 0 (parent-death signal)
    while leftover(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not leftover(str(tmp_path))
