"""Checkpoint and artifact shipping, and restoring a checkpoint, against an in-memory store."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from fakestore import FakeArtifacts

from gridlab.agent import ckptship
from gridlab.agent.ckptship import (
    CheckpointRestoreError,
    CheckpointShipper,
    hash_stable,
    restore_checkpoint,
    scan_checkpoints,
    upload_artifacts,
)
from gridlab.common import transfer
from gridlab.v1 import agent_pb2, artifacts_pb2, types_pb2

T = TypeVar("T")


def arun(coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def write(path: Path, data: bytes = b"x", mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def names(ckpt_dir: Path) -> list[str]:
    return [e.name for e in scan_checkpoints(ckpt_dir).entries]


def shipper(store: FakeArtifacts, ckpt_dir: Path, notes: list[str], step: int = 7) -> CheckpointShipper:
    return CheckpointShipper(
        store,
        (),
        agent_name="w1",
        attempt_id="a1",
        node_rank=0,
        checkpoint_dir=ckpt_dir,
        step=lambda: step,
        poll=0.05,
        note=notes.append,
        settle=0,
    )


@pytest.fixture(autouse=True)
def no_transfer_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreachable scheduler fails at once instead of after transfer's own retries."""
    monkeypatch.setattr(transfer, "RETRIES", 0)


# --- the completeness scan -------------------------------------------------------------------


def test_scan_takes_complete_files_and_sharded_folders_only(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    write(ck / "last.ckpt", mtime=time.time() - 20)
    write(ck / "epoch1.ckpt", mtime=time.time() - 30)
    write(ck / ".last.ckpt.tmp123")  # a writer's temp file
    write(ck / "last.ckpt.partial")
    write(ck / "epoch0.ckpt.old-1a2b3c4d")  # the old one being swapped out
    write(ck / "notes.txt")  # not a checkpoint
    write(ck / "sharded.partial" / "meta.pt")  # a sharded save in progress
    write(ck / "nometa" / "__0_0.distcp")  # no meta.pt yet: still being written
    write(ck / "epoch2" / "__0_0.distcp", mtime=time.time() - 10)
    write(ck / "epoch2" / ".metadata", mtime=time.time() - 10)  # dcp's own dotfile is part of it
    write(ck / "epoch2" / "sub" / "x.bin", mtime=time.time() - 10)
    write(ck / "epoch2" / "meta.pt", mtime=time.time() - 10)
    os.symlink(tmp_path / "elsewhere.bin", ck / "epoch2" / "link.bin")
    write(tmp_path / "elsewhere.bin")
    os.symlink(ck / "last.ckpt", ck / "alias.ckpt")  # a link could point anywhere
    os.mkfifo(ck / "fifo.ckpt")

    scan = scan_checkpoints(ck)
    assert [e.name for e in scan.entries] == ["epoch1.ckpt", "last.ckpt", "epoch2"]  # oldest first
    epoch2 = scan.entries[-1]
    assert [f.rel for f in epoch2.files] == [
        "epoch2/.metadata",
        "epoch2/__0_0.distcp",
        "epoch2/meta.pt",
        "epoch2/sub/x.bin",
    ]
    assert any("alias.ckpt" in s and "symlink" in s for s in scan.skipped)
    assert any("epoch2/link.bin" in s for s in scan.skipped)


def test_scan_skips_entries_from_the_future_and_a_missing_folder(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    write(ck / "future.ckpt", mtime=time.time() + 3600)
    write(ck / "shard" / "meta.pt")
    write(ck / "shard" / "x.distcp", mtime=time.time() + 3600)
    write(ck / "ok.ckpt")
    scan = scan_checkpoints(ck)
    assert [e.name for e in scan.entries] == ["ok.ckpt"]
    assert sum("future" in s for s in scan.skipped) == 2
    assert scan_checkpoints(tmp_path / "missing").entries == []


def test_a_rewritten_file_has_a_new_key(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    write(ck / "last.ckpt", b"one", mtime=1000)
    before = scan_checkpoints(ck).entries[0].key
    write(ck / "last.ckpt", b"two", mtime=1000)  # same size and time: same key (nothing to tell them apart)
    assert scan_checkpoints(ck).entries[0].key == before
    write(ck / "last.ckpt", b"three", mtime=2000)
    assert scan_checkpoints(ck).entries[0].key != before


def test_a_file_replaced_while_hashed_is_not_used(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    write(ck / "last.ckpt", b"one")
    entry = scan_checkpoints(ck).entries[0]
    assert hash_stable(entry.files) is not None
    tmp = write(ck / ".last.tmp", b"two")
    os.replace(tmp, ck / "last.ckpt")  # the writer's rename: a new inode
    assert hash_stable(entry.files) is None
    (ck / "last.ckpt").unlink()
    assert hash_stable(entry.files) is None


# --- the shipper ----------------------------------------------------------------------------


def test_shipper_uploads_new_and_rewritten_checkpoints_once(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    store = FakeArtifacts()
    notes: list[str] = []
    ship = shipper(store, ck, notes)

    async def go() -> None:
        write(ck / "last.ckpt", b"epoch 1", mtime=1000)
        write(ck / "s1" / "a.distcp", b"aa")
        write(ck / "s1" / "meta.pt", b"m")
        write(ck / "s2" / "a.distcp", b"no meta yet")
        assert await ship.ship()
        assert await ship.ship()  # nothing new: nothing uploaded again
        assert [(c.name, c.step) for c in store.checkpoints] == [("last.ckpt", 7), ("s1", 7)]
        assert [(f.path, f.size) for f in store.checkpoints[1].files] == [("s1/a.distcp", 2), ("s1/meta.pt", 1)]
        assert store.checkpoints[0].attempt_id == "a1"
        assert store.checkpoints[0].agent_name == "w1"
        assert set(store.purposes.values()) == {artifacts_pb2.BLOB_PURPOSE_CHECKPOINT}
        assert store.uploads == 3
        write(ck / "last.ckpt", b"epoch 2", mtime=2000)  # overwritten each epoch
        write(ck / "s2" / "meta.pt", b"m")  # the folder is complete now
        assert await ship.ship()
        assert [c.name for c in store.checkpoints] == ["last.ckpt", "s1", "last.ckpt", "s2"]
        assert store.blobs[store.checkpoints[2].files[0].digest] == b"epoch 2"
        assert store.uploads == 5  # s2's meta.pt has s1's bytes: stored once

    arun(go())
    assert "checkpoint last.ckpt (step 7, 1 file, 7 bytes) uploaded" in notes
    assert "checkpoint s1 (step 7, 2 files, 3 bytes) uploaded" in notes


def test_shipper_retries_when_the_scheduler_is_unreachable_and_flushes_at_the_end(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    store = FakeArtifacts()
    notes: list[str] = []
    ship = shipper(store, ck, notes)

    async def go() -> None:
        write(ck / "a.ckpt", b"a")
        store.fail = grpc.StatusCode.UNAVAILABLE
        task = asyncio.create_task(ship.run())
        await asyncio.sleep(0.2)  # several scans, all failing
        assert store.checkpoints == []
        assert not task.done()  # failures never end the loop
        store.fail = None
        while not store.checkpoints:
            await asyncio.sleep(0.02)
        task.cancel()
        write(ck / "preempted.ckpt", b"p")  # written as the ranks stopped
        store.fail = grpc.StatusCode.UNAVAILABLE
        store.fail_calls = {"RecordCheckpoint"}
        flushing = asyncio.create_task(ship.flush(timeout=10))
        await asyncio.sleep(0.1)
        store.fail = None  # back before the flush gave up
        assert await flushing
        assert [c.name for c in store.checkpoints] == ["a.ckpt", "preempted.ckpt"]

    arun(go())


def test_flush_gives_up_after_its_timeout_and_a_refused_checkpoint_is_not_retried(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    store = FakeArtifacts()
    notes: list[str] = []
    ship = shipper(store, ck, notes)

    async def go() -> None:
        write(ck / "a.ckpt", b"a")
        store.fail = grpc.StatusCode.UNAVAILABLE
        assert not await ship.flush(timeout=0.2)
        store.fail = None
        store.max_blob = 0  # the store's cap
        assert await ship.flush(timeout=5)
        uploads = store.uploads
        assert await ship.ship()
        assert store.uploads == uploads
        assert store.checkpoints == []

    arun(go())
    assert any("not uploaded before the attempt ended" in n for n in notes)
    assert any("checkpoint a.ckpt (1 bytes) was refused: too big" in n for n in notes)


def test_shipper_stops_when_the_attempt_is_no_longer_ours(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    store = FakeArtifacts()
    notes: list[str] = []
    ship = shipper(store, ck, notes)

    async def go() -> None:
        write(ck / "a.ckpt", b"a")
        store.fail = grpc.StatusCode.ABORTED
        await asyncio.wait_for(ship.run(), 5)  # returns instead of scanning forever
        assert not await ship.flush(timeout=5)

    arun(go())
    assert ship.gone
    assert any("no longer takes" in n for n in notes)


def test_step_is_taken_when_the_checkpoint_appears(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    store = FakeArtifacts()
    steps = iter([10, 20, 30])
    ship = CheckpointShipper(
        store,
        (),
        agent_name="w1",
        attempt_id="a1",
        node_rank=2,
        checkpoint_dir=ck,
        step=lambda: next(steps),
        poll=0.05,
        note=lambda _: None,
        settle=0,
    )

    async def go() -> None:
        write(ck / "a.ckpt", b"a")
        store.fail = grpc.StatusCode.UNAVAILABLE
        assert not await ship.ship()
        store.fail = None
        assert await ship.ship()

    arun(go())
    assert [(c.step, c.node_rank) for c in store.checkpoints] == [(10, 2)]


# --- artifacts ------------------------------------------------------------------------------


def test_artifacts_are_uploaded_recursively_without_following_links(tmp_path: Path) -> None:
    art = tmp_path / "art"
    write(art / "model.onnx", b"onnx")
    write(art / "plots" / "loss.png", b"png")
    write(tmp_path / "secret", b"s")
    os.symlink(tmp_path / "secret", art / "secret")
    os.symlink(tmp_path, art / "up")
    store = FakeArtifacts()
    notes: list[str] = []
    count = arun(upload_artifacts(store, (), "w1", "a1", 0, art, notes.append))
    assert count == 2
    [record] = store.artifacts
    assert [(f.path, f.size) for f in record.files] == [("model.onnx", 4), ("plots/loss.png", 3)]
    assert set(store.purposes.values()) == {artifacts_pb2.BLOB_PURPOSE_ARTIFACT}
    assert b"s" not in store.blobs.values()
    assert "artifacts: 2 files (7 bytes) uploaded" in notes
    assert sum("symlink" in n for n in notes) == 2
    assert arun(upload_artifacts(store, (), "w1", "a1", 0, tmp_path / "none", notes.append)) == 0


def test_artifacts_failure_is_noted_not_raised(tmp_path: Path) -> None:
    write(tmp_path / "art" / "x", b"x")
    store = FakeArtifacts()
    store.fail = grpc.StatusCode.PERMISSION_DENIED
    notes: list[str] = []
    assert arun(upload_artifacts(store, (), "w1", "a1", 0, tmp_path / "art", notes.append, timeout=5)) == 0
    assert any("1 files not saved: PERMISSION_DENIED" in n for n in notes)


# --- restore --------------------------------------------------------------------------------


def resume(store: FakeArtifacts, name: str, files: dict[str, bytes]) -> agent_pb2.Assignment:
    refs = [types_pb2.FileRef(path=p, digest=store.put(d), size=len(d)) for p, d in files.items()]
    return agent_pb2.Assignment(run_id="r1", resume_name=name, resume_files=refs)


def test_restore_a_file_and_a_folder(tmp_path: Path) -> None:
    store = FakeArtifacts()
    dest = tmp_path / "resume"
    assert arun(restore_checkpoint(store, (), agent_pb2.Assignment(), dest)) is None
    path = arun(restore_checkpoint(store, (), resume(store, "last.ckpt", {"last.ckpt": b"w"}), dest))
    assert path == dest / "last.ckpt"
    assert path.read_bytes() == b"w"
    files = {"ep/meta.pt": b"m", "ep/.metadata": b"d", "ep/sub/x": b"x"}
    path = arun(restore_checkpoint(store, (), resume(store, "ep", files), dest))
    assert path == dest / "ep"
    assert {str(p.relative_to(dest)): p.read_bytes() for p in path.rglob("*") if p.is_file()} == files
    assert sorted(p.name for p in dest.iterdir()) == ["ep", "last.ckpt"]  # no staging left behind


@pytest.mark.parametrize(
    ("name", "files", "match"),
    [
        ("../x", {"../x": b"a"}, "not a plain file name"),
        ("/etc", {"/etc": b"a"}, "not a plain file name"),
        ("..", {"../a": b"a"}, "not a plain file name"),
        ("", {"a": b"a"}, "not a plain file name"),
        ("ep", {"ep/../../evil": b"a"}, "relative path under ep/"),
        ("ep", {"/abs/evil": b"a"}, "relative path under ep/"),
        ("ep", {"other/x": b"a"}, "relative path under ep/"),
        ("ep", {"ep/./x": b"a"}, "relative path under ep/"),
        ("ep", {"ep//x": b"a"}, "relative path under ep/"),
        ("ep", {"ep/a\nb": b"a"}, "relative path under ep/"),
        ("ep", {"ep": b"a", "ep/x": b"b"}, "relative path under ep/"),
        ("ep", {"ep/x": b"a", "ep/x/y": b"b"}, "could not write"),
    ],
)
def test_restore_refuses_hostile_names_and_writes_nothing_outside(
    tmp_path: Path, name: str, files: dict[str, bytes], match: str
) -> None:
    store = FakeArtifacts()
    dest = tmp_path / "a" / "resume"
    with pytest.raises(CheckpointRestoreError, match=match) as info:
        arun(restore_checkpoint(store, (), resume(store, name, files), dest))
    assert info.value.permanent
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_restore_of_a_missing_blob_is_permanent_and_of_an_unreachable_store_is_not(tmp_path: Path) -> None:
    store = FakeArtifacts()
    assignment = resume(store, "a.ckpt", {"a.ckpt": b"a"})
    store.blobs.clear()
    with pytest.raises(CheckpointRestoreError, match="NOT_FOUND") as info:
        arun(restore_checkpoint(store, (), assignment, tmp_path))
    assert info.value.permanent
    store.fail = grpc.StatusCode.UNAVAILABLE
    with pytest.raises(CheckpointRestoreError, match="UNAVAILABLE") as info:
        arun(restore_checkpoint(store, (), assignment, tmp_path))
    assert not info.value.permanent
    assert list(tmp_path.iterdir()) == []


def test_restore_replaces_a_stale_copy(tmp_path: Path) -> None:
    store = FakeArtifacts()
    write(tmp_path / "ep" / "old", b"old")
    os.symlink(tmp_path / "elsewhere", tmp_path / "x.ckpt")
    path = arun(restore_checkpoint(store, (), resume(store, "ep", {"ep/meta.pt": b"m"}), tmp_path))
    assert sorted(p.name for p in path.iterdir()) == ["meta.pt"]
    path = arun(restore_checkpoint(store, (), resume(store, "x.ckpt", {"x.ckpt": b"x"}), tmp_path))
    assert not path.is_symlink()
    assert path.read_bytes() == b"x"
    assert not (tmp_path / "elsewhere").exists()


def test_safe_names() -> None:
    assert ckptship.split_rel("a/b.c") == ["a", "b.c"]
    for bad in ["", "/a", "a/", "a//b", "./a", "a/..", "a\\b", "a\x00b", "\udcff"]:
        assert ckptship.split_rel(bad) is None, bad


def test_a_file_still_being_written_waits_until_it_settles_except_at_the_end(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    store = FakeArtifacts()
    ship = shipper(store, ck, [])
    ship.settle_ns = 3600 * 10**9

    async def go() -> None:
        write(ck / "last.ckpt", b"half")  # a script writing in place, not through a rename
        assert not await ship.ship()
        assert store.checkpoints == []
        write(ck / "old.ckpt", b"o", mtime=time.time() - 7200)
        assert not await ship.ship()
        assert [c.name for c in store.checkpoints] == ["old.ckpt"]
        assert await ship.flush(timeout=5)  # the ranks have exited: nothing is still being written
        assert [c.name for c in store.checkpoints] == ["old.ckpt", "last.ckpt"]

    arun(go())
