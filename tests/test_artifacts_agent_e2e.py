"""The agent's side of bundles and checkpoints against a real scheduler on an ephemeral port.

A simulated agent (the real Connect protocol, no processes) takes the run's assignment, so the
store's checks (whose attempt, which agent, is every blob in) are the real ones.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gridlab.agent.bundles import BundleFetchError, fetch_bundle
from gridlab.agent.ckptship import CheckpointShipper, restore_checkpoint, upload_artifacts
from gridlab.client.bundles import upload_bundle
from gridlab.client.localcluster import LocalCluster
from gridlab.common import auth, transfer
from gridlab.common.bundle import BundleError
from gridlab.v1 import agent_pb2, agent_pb2_grpc, artifacts_pb2, artifacts_pb2_grpc, types_pb2

AGENT = "sim1"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A scheduler alone: the agent is simulated in the test."""
    with LocalCluster(tmp_path_factory.mktemp("artifacts"), heartbeat_timeout=10) as c:
        c.start_scheduler()
        yield c


def agent_metadata(cluster: LocalCluster) -> tuple[tuple[str, str], ...]:
    return auth.metadata(auth.read_secret(cluster.agent_token_file))


class SimAgent:
    """Says Hello, heartbeats the attempts it was given as RUNNING, and collects assignments."""

    def __init__(self, cluster: LocalCluster, name: str) -> None:
        self.channel = grpc.aio.insecure_channel(cluster.address)
        self.metadata = agent_metadata(cluster)
        self.name = name
        self.assignments: asyncio.Queue[agent_pb2.Assignment] = asyncio.Queue()
        self.running: dict[str, agent_pb2.AttemptStatus] = {}
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> SimAgent:
        self.call = agent_pb2_grpc.AgentGatewayStub(self.channel).Connect(metadata=self.metadata)
        inventory = types_pb2.Inventory(hostname=self.name, address="127.0.0.1", cpus=8, memory_bytes=16 << 30)
        await self.call.write(agent_pb2.AgentMessage(hello=agent_pb2.Hello(name=self.name, inventory=inventory)))
        welcome = await self.call.read()
        assert welcome.WhichOneof("msg") == "welcome"
        self.tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._beat())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        self.call.cancel()
        await self.channel.close()

    async def _read(self) -> None:
        while (msg := await self.call.read()) is not grpc.aio.EOF:
            if msg.WhichOneof("msg") == "assign":
                a = msg.assign
                status = agent_pb2.AttemptStatus(
                    attempt_id=a.attempt_id, run_id=a.run_id, state=types_pb2.ATTEMPT_STATE_RUNNING, prepared=True
                )
                self.running[a.attempt_id] = status
                await self.call.write(agent_pb2.AgentMessage(update=status))
                await self.assignments.put(a)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(0.3)
            beat = agent_pb2.Heartbeat(attempts=list(self.running.values()))
            await self.call.write(agent_pb2.AgentMessage(heartbeat=beat))


def run_async(coro: Any, timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_code_checkpoints_and_artifacts_round_trip(cluster: LocalCluster, tmp_path: Path) -> None:
    code = tmp_path / "code"
    (code / "src").mkdir(parents=True)
    (code / "src" / "train.py").write_text("print('train')\n")
    (code / "data.bin").write_bytes(b"d" * 10)
    (code / ".gridlabignore").write_text("data.bin\n")
    client = cluster.client()
    run = client.submit("python train.py", code=code, workdir="src", name="round-trip")
    agent_dir = tmp_path / "agent"
    notes: list[str] = []

    async def go() -> None:
        async with SimAgent(cluster, AGENT) as sim:
            a = await asyncio.wait_for(sim.assignments.get(), 30)
            assert a.run_id == run.id
            assert not a.resume_files  # a first attempt has nothing to resume
            async with grpc.aio.insecure_channel(cluster.address) as channel:
                stub = artifacts_pb2_grpc.ArtifactsStub(channel)
                start = await fetch_bundle(
                    stub, sim.metadata, a.spec.code_digest, agent_dir / "bundles", agent_dir / "a1" / "work",
                    workdir=a.spec.workdir,
                )  # fmt: skip
                assert (start / "train.py").read_text() == "print('train')\n"
                assert not (agent_dir / "a1" / "work" / "data.bin").exists()  # ignored at pack

                ck = agent_dir / "a1" / "checkpoints"
                (ck / "sharded").mkdir(parents=True)
                (ck / "sharded" / "__0_0.distcp").write_bytes(b"tensors" * 1000)
                (ck / "sharded" / "meta.pt").write_bytes(b"meta")
                (ck / "last.ckpt").write_bytes(b"last")
                shipper = CheckpointShipper(
                    stub, sim.metadata, agent_name=AGENT, attempt_id=a.attempt_id, node_rank=0,
                    checkpoint_dir=ck, step=lambda: 42, poll=0.1, note=notes.append,
                )  # fmt: skip
                assert await shipper.flush(timeout=30)

                art = agent_dir / "a1" / "artifacts"
                (art / "plots").mkdir(parents=True)
                (art / "plots" / "loss.csv").write_text("1,2\n")
                assert await upload_artifacts(stub, sim.metadata, AGENT, a.attempt_id, 0, art, notes.append) == 1

    run_async(go())
    assert any(n.startswith("checkpoint sharded (step 42, 2 files,") for n in notes), notes

    # What the scheduler lists for the run is what the next attempt restores, byte for byte.
    with grpc.insecure_channel(cluster.address) as channel:
        listing = artifacts_pb2_grpc.ArtifactsStub(channel).ListArtifacts(
            artifacts_pb2.ListArtifactsRequest(run_id=run.id), metadata=auth.metadata(cluster.admin_token), timeout=10
        )
    by_name = {c.name: c for c in listing.checkpoints}
    assert set(by_name) == {"last.ckpt", "sharded"}
    assert by_name["sharded"].step == 42
    assert [f.file.path for f in listing.artifacts] == ["plots/loss.csv"]

    async def restore(checkpoint: types_pb2.Checkpoint, dest: Path) -> Path | None:
        assignment = agent_pb2.Assignment(resume_name=checkpoint.name, resume_files=checkpoint.files)
        async with grpc.aio.insecure_channel(cluster.address) as channel:
            stub = artifacts_pb2_grpc.ArtifactsStub(channel)
            return await restore_checkpoint(stub, agent_metadata(cluster), assignment, dest)

    path = run_async(restore(by_name["sharded"], tmp_path / "a2" / "resume"))
    assert path == tmp_path / "a2" / "resume" / "sharded"
    assert (path / "__0_0.distcp").read_bytes() == b"tensors" * 1000
    assert (path / "meta.pt").read_bytes() == b"meta"
    path = run_async(restore(by_name["last.ckpt"], tmp_path / "a2" / "resume"))
    assert path.read_bytes() == b"last"
    run.cancel()


def test_a_checkpoint_of_an_attempt_not_ours_stops_the_shipper(cluster: LocalCluster, tmp_path: Path) -> None:
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "x.ckpt").write_bytes(b"x")
    notes: list[str] = []

    async def go() -> bool:
        async with grpc.aio.insecure_channel(cluster.address) as channel:
            shipper = CheckpointShipper(
                artifacts_pb2_grpc.ArtifactsStub(channel), agent_metadata(cluster), agent_name=AGENT,
                attempt_id="no-such-attempt", node_rank=0, checkpoint_dir=tmp_path / "ck", step=lambda: -1,
                poll=0.1, note=notes.append,
            )  # fmt: skip
            return await shipper.flush(timeout=5)

    assert run_async(go()) is False
    assert any("no longer takes" in n for n in notes), notes


def tarball(info: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.addfile(tarfile.TarInfo("ok.py"), io.BytesIO())
        info.size = len(data) if info.isreg() else 0
        tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def member(name: str, **attrs: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


HOSTILE = {
    "absolute path": (lambda out: tarball(member(f"{out}/evil"), b"x"), {}, "absolute paths"),
    "dot-dot": (lambda out: tarball(member("../outside/evil"), b"x"), {}, "'..'"),
    "symlink out": (lambda out: tarball(member("link", type=tarfile.SYMTYPE, linkname="../outside")), {}, "outside"),
    "device file": (lambda out: tarball(member("null", type=tarfile.CHRTYPE, devmajor=1, devminor=3)), {}, "device"),
    "too big": (lambda out: tarball(member("big"), b"x" * 4096), {"max_bytes": 1024}, "max_bytes"),
    "too many files": (lambda out: tarball(member("two"), b""), {"max_files": 1}, "max_files"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_bundle_a_user_uploaded_is_refused_at_the_agent(
    cluster: LocalCluster, tmp_path: Path, case: str
) -> None:
    make, caps, match = HOSTILE[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = tmp_path / "hostile.tar.gz"
    archive.write_bytes(make(outside))
    with grpc.insecure_channel(cluster.address) as channel:  # the user's side: any bytes may be uploaded
        blob = transfer.upload_file(
            artifacts_pb2_grpc.ArtifactsStub(channel),
            archive,
            purpose=artifacts_pb2.BLOB_PURPOSE_BUNDLE,
            metadata=auth.metadata(cluster.admin_token),
        )
    agent_dir = tmp_path / "agent"

    async def go() -> None:
        async with grpc.aio.insecure_channel(cluster.address) as channel:
            stub = artifacts_pb2_grpc.ArtifactsStub(channel)
            await fetch_bundle(
                stub, agent_metadata(cluster), blob.digest, agent_dir / "bundles", agent_dir / "work", **caps
            )

    with pytest.raises(BundleFetchError, match=match) as info:
        run_async(go())
    assert info.value.permanent
    assert str(info.value).startswith(f"code bundle {blob.digest} refused: refused bundle member")
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in agent_dir.iterdir()) == ["bundles"]


class CountingStub:
    """A sync ArtifactsStub that counts the uploads it starts."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = artifacts_pb2_grpc.ArtifactsStub(channel)
        self.uploads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stub, name)

    def UploadBlob(self, *args: Any, **kw: Any) -> Any:  # noqa: N802
        self.uploads += 1
        return self.stub.UploadBlob(*args, **kw)


def test_upload_bundle_sends_a_tree_once_and_returns_pack_warnings(cluster: LocalCluster, tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "train.py").write_text("print(1)\n")
    (tmp_path / "code" / ".gridlabignore").write_text("[z-a]\n")  # git skips an invalid pattern; so do we
    with grpc.insecure_channel(cluster.address) as channel:
        stub = CountingStub(channel)
        metadata = auth.metadata(cluster.admin_token)
        digest, warnings = upload_bundle(stub, metadata, tmp_path / "code")
        assert transfer.is_digest(digest)
        assert any("invalid pattern" in w for w in warnings)
        assert upload_bundle(stub, metadata, tmp_path / "code")[0] == digest
        assert stub.uploads == 1
        stat = stub.StatBlob(artifacts_pb2.StatBlobRequest(digest=digest), metadata=metadata, timeout=10)
        assert stat.complete
        with pytest.raises(BundleError, match="cap"):
            upload_bundle(stub, metadata, tmp_path / "code", max_bytes=1)
