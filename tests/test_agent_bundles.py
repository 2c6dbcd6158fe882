"""The agent's code bundles: fetched by digest into a cache (once, under a lock), extracted safely."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from fakestore import FakeArtifacts

from gridlab.agent.bundles import BundleFetchError, bundle_requirements, fetch_bundle
from gridlab.common import transfer
from gridlab.common.bundle import pack

T = TypeVar("T")
HEX = "ab" * 32


def arun(coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(autouse=True)
def no_transfer_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "RETRIES", 0)


def code_folder(root: Path) -> Path:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "train.py").write_text("print('hi')\n")
    (root / "src" / "pkg" / "__init__.py").write_text("")
    (root / "README").write_text("readme\n")
    return root


def packed(tmp_path: Path, store: FakeArtifacts) -> str:
    bundle = pack(code_folder(tmp_path / "code"), tmp_path / "packed")
    return store.put(bundle.path.read_bytes())


def fetch(store: FakeArtifacts, digest: str, root: Path, *, work: str = "w1", **kw: Any) -> Path:
    return arun(fetch_bundle(store, (), digest, root / "cache", root / work, **kw))


def test_fetch_extracts_and_returns_the_workdir_and_reuses_the_cache(tmp_path: Path) -> None:
    store = FakeArtifacts()
    digest = packed(tmp_path, store)
    start = fetch(store, digest, tmp_path, workdir="src")
    assert start == (tmp_path / "w1" / "src").resolve()
    assert (start / "train.py").read_text() == "print('hi')\n"
    assert (tmp_path / "cache" / f"{digest.removeprefix('sha256:')}.tar.gz").is_file()
    (tmp_path / "w2").mkdir()  # the attempt's fresh, empty working directory
    assert fetch(store, digest, tmp_path, work="w2") == (tmp_path / "w2").resolve()
    assert (tmp_path / "w2" / "README").is_file()
    assert store.downloads == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "code", "packed", "w1", "w2"]


def test_two_attempts_asking_at_once_download_once(tmp_path: Path) -> None:
    store = FakeArtifacts()
    digest = packed(tmp_path, store)
    store.download_delay = 0.3

    async def go() -> list[Path]:
        return await asyncio.gather(
            *(fetch_bundle(store, (), digest, tmp_path / "cache", tmp_path / f"w{i}") for i in range(3))
        )

    assert len(set(arun(go()))) == 3
    assert store.downloads == 1


@pytest.mark.parametrize(
    ("digest", "fail", "permanent", "match"),
    [
        ("sha256:" + "AB" * 32, None, True, "64 lowercase hex"),
        ("md5:abc", None, True, "64 lowercase hex"),
        ("sha256:" + HEX, None, True, "NOT_FOUND"),
        ("sha256:" + HEX, grpc.StatusCode.UNAVAILABLE, False, "will retry"),
    ],
)
def test_fetch_errors_say_whether_a_retry_can_help(
    tmp_path: Path, digest: str, fail: grpc.StatusCode | None, permanent: bool, match: str
) -> None:
    store = FakeArtifacts()
    store.fail = fail
    with pytest.raises(BundleFetchError, match=match) as info:
        fetch(store, digest, tmp_path)
    assert info.value.permanent is permanent
    assert not (tmp_path / "w1").exists()


def test_a_damaged_store_copy_is_permanent(tmp_path: Path) -> None:
    store = FakeArtifacts()
    digest = packed(tmp_path, store)
    store.blobs[digest] = b"not the bundle"
    with pytest.raises(BundleFetchError, match="damaged") as info:
        fetch(store, digest, tmp_path)
    assert info.value.permanent
    assert list((tmp_path / "cache").glob("*.tar.gz")) == []


@pytest.mark.parametrize("workdir", ["missing", "README", "../code", "/etc", "src/../../x"])
def test_a_bad_workdir_is_permanent(tmp_path: Path, workdir: str) -> None:
    store = FakeArtifacts()
    digest = packed(tmp_path, store)
    with pytest.raises(BundleFetchError, match="workdir") as info:
        fetch(store, digest, tmp_path, workdir=workdir)
    assert info.value.permanent


def test_a_non_empty_work_dir_is_a_caller_bug(tmp_path: Path) -> None:
    store = FakeArtifacts()
    digest = packed(tmp_path, store)
    (tmp_path / "w1").mkdir()
    (tmp_path / "w1" / "left").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        fetch(store, digest, tmp_path)


# --- hostile bundles ------------------------------------------------------------------------

Member = tuple[tarfile.TarInfo, bytes]


def member(name: str, data: bytes = b"", **attrs: Any) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def tarball(members: list[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


HOSTILE: dict[str, tuple[Callable[[Path], list[Member]], dict[str, Any], str]] = {
    "absolute path": (lambda out: [member(str(out / "evil"), b"x")], {}, "absolute paths"),
    "dot-dot": (lambda out: [member("ok"), member("../outside/evil", b"x")], {}, "'..'"),
    "symlink out": (
        lambda out: [member("link", type=tarfile.SYMTYPE, linkname="../outside"), member("link/evil", b"x")],
        {},
        "resolves outside",
    ),
    "absolute symlink": (
        lambda out: [member("link", type=tarfile.SYMTYPE, linkname=str(out))],
        {},
        "absolute path",
    ),
    "device file": (lambda out: [member("dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)], {}, "device"),
    "too big": (lambda out: [member("big", b"x" * 5000)], {"max_bytes": 1000}, "max_bytes"),
    "too many files": (lambda out: [member(f"f{i}", b"x") for i in range(10)], {"max_files": 5}, "max_files"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_bundles_are_refused_and_nothing_is_written_outside(tmp_path: Path, case: str) -> None:
    make, caps, match = HOSTILE[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    store = FakeArtifacts()
    digest = store.put(tarball(make(outside)))
    with pytest.raises(BundleFetchError, match=match) as info:
        fetch(store, digest, tmp_path / "agent", **caps)
    assert info.value.permanent
    assert "refused" in str(info.value)
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "agent").iterdir()) == ["cache"]  # no work dir, no staging


def test_a_zip_bomb_is_refused_as_permanent_and_leaves_nothing(tmp_path: Path) -> None:
    """200 MiB of zeros in about 200 KB: refused by its compression ratio after about 10 MiB, not 1 GiB."""
    info = tarfile.TarInfo("zeros.bin")
    info.size = 200 * 1024 * 1024
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=9) as tar:
        tar.addfile(info, io.BufferedReader(_Zeros(info.size)))
    store = FakeArtifacts()
    digest = store.put(buf.getvalue())
    with pytest.raises(BundleFetchError, match="zip bomb") as caught:
        fetch(store, digest, tmp_path / "agent")
    assert caught.value.permanent
    assert sorted(p.name for p in (tmp_path / "agent").iterdir()) == ["cache"]


class _Zeros(io.RawIOBase):
    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self.left)
        buf[:n] = bytes(n)
        self.left -= n
        return n


# --- requirements.txt -----------------------------------------------------------------------


def test_bundle_requirements(tmp_path: Path) -> None:
    assert bundle_requirements(tmp_path) == []
    (tmp_path / "requirements.txt").write_text("# pinned\nnumpy==2.1  # fast\n\nrich\nnumpy==2.1\n")
    assert bundle_requirements(tmp_path) == ["numpy==2.1", "rich"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("rich\n-e .\n", "requirements.txt line 2 = '-e .' is or carries a pip option"),
        ("--index-url https://evil.example\n", "line 1"),
        ("-r other.txt\n", "line 1"),
        ("./local\n", "local path"),
    ],
)
def test_bundle_requirements_refuses_what_a_spec_may_not_ask(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "requirements.txt").write_text(text)
    with pytest.raises(BundleFetchError, match=match) as info:
        bundle_requirements(tmp_path)
    assert info.value.permanent


def test_bundle_requirements_refuses_links_and_binary(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("rich\n")
    os.symlink("real.txt", tmp_path / "requirements.txt")
    with pytest.raises(BundleFetchError, match="regular file"):
        bundle_requirements(tmp_path)
    (tmp_path / "requirements.txt").unlink()
    (tmp_path / "requirements.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(BundleFetchError, match="UTF-8"):
        bundle_requirements(tmp_path)
