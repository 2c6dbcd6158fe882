"""A run's checkpoints and artifacts, for people: list them, fetch them into a folder.

    listing = list_artifacts(client, run_id)
    folder = download_checkpoint(client, run_id, "latest", dest="ckpt")
    path = download_artifact(client, run_id, "model.onnx", dest="out")

Files are fetched with `gridlab.common.transfer` (resumable, verified, renamed into place), so an
interrupted download continues where it stopped when run again.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import grpc

from gridlab.common import transfer
from gridlab.v1 import artifacts_pb2, artifacts_pb2_grpc, types_pb2

from .errors import GridlabError, NotFound

if TYPE_CHECKING:
    from .sdk import Client

LATEST = "latest"


def _stub(client: Client) -> artifacts_pb2_grpc.ArtifactsStub:
    return artifacts_pb2_grpc.ArtifactsStub(client._channel)


def list_artifacts(client: Client, run_id: str) -> artifacts_pb2.ListArtifactsResponse:
    """A run's complete checkpoints and its artifacts, oldest first.

    Example:
        >>> [c.name for c in list_artifacts(client, run_id).checkpoints]
        ['step-100', 'step-200']

    Raises:
        NotFound: No such run, or another user's.
    """
    request = artifacts_pb2.ListArtifactsRequest(run_id=run_id)
    return client._unary(_stub(client).ListArtifacts, request)


def newest(checkpoints: Iterable[types_pb2.Checkpoint]) -> types_pb2.Checkpoint | None:
    """The checkpoint a retry would resume from: the highest step, then the newest (as the scheduler picks)."""
    return max(checkpoints, key=lambda c: (c.step, c.time.ToNanoseconds(), c.id), default=None)


def pick_checkpoint(checkpoints: Iterable[types_pb2.Checkpoint], name: str = LATEST) -> types_pb2.Checkpoint:
    """`latest`, or the newest checkpoint called `name`.

    Raises:
        NotFound: The run has no (such) checkpoint; the message lists the names it has.
    """
    found = list(checkpoints)
    chosen = newest(c for c in found if name == LATEST or c.name == name)
    if chosen is None:
        names = sorted({c.name for c in found})
        have = f"its checkpoints: {', '.join(names)}" if names else "it has no complete checkpoint yet"
        raise NotFound(f"no checkpoint {name!r} ({have})")
    return chosen


def _target(dest: Path, path: str) -> Path:
    """Where a stored file goes under `dest`; a path that would leave it is refused."""
    parts = PurePosixPath(path).parts
    if not parts or PurePosixPath(path).is_absolute() or any(p in ("", ".", "..") for p in parts) or "\\" in path:
        raise GridlabError(f"refusing to write {path!r}: not a plain relative path")
    return dest.joinpath(*parts)


def _fetch(client: Client, run_id: str, ref: types_pb2.FileRef, dest: Path) -> Path:
    target = _target(dest, ref.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        transfer.download_blob(_stub(client), ref.digest, target, run_id=run_id, metadata=client._metadata)
    except grpc.RpcError as err:
        raise client._error(err) from None
    except transfer.TransferError as exc:
        raise GridlabError(f"{ref.path}: {exc}", grpc.StatusCode.DATA_LOSS) from None
    return target


def download_checkpoint(client: Client, run_id: str, name: str = LATEST, *, dest: str | os.PathLike[str] = ".") -> Path:
    """Fetch every file of a checkpoint under `dest` (a file checkpoint becomes dest/<name>).

    Example:
        >>> download_checkpoint(client, run_id, dest="ckpts")
        PosixPath('ckpts/step-200')

    Args:
        client: A connected `Client`.
        run_id: The run.
        name: "latest" (what a retry would resume from) or a checkpoint's name.
        dest: The folder to write into; created if missing.

    Returns:
        The checkpoint's path under `dest`.

    Raises:
        NotFound: No such run or checkpoint.
        GridlabError: A file did not match its digest (nothing is left half-written).
    """
    checkpoint = pick_checkpoint(list_artifacts(client, run_id).checkpoints, name)
    root = Path(dest)
    for ref in checkpoint.files:
        _fetch(client, run_id, ref, root)
    return _target(root, checkpoint.name)


def newest_artifacts(artifacts: Iterable[types_pb2.Artifact]) -> dict[str, types_pb2.Artifact]:
    """One copy per path: the latest attempt's, from its lowest node rank."""
    chosen: dict[str, types_pb2.Artifact] = {}
    for art in artifacts:
        have = chosen.get(art.file.path)
        if have is None or (art.attempt_number, -art.node_rank) > (have.attempt_number, -have.node_rank):
            chosen[art.file.path] = art
    return chosen


def download_artifact(client: Client, run_id: str, path: str, *, dest: str | os.PathLike[str] = ".") -> Path:
    """Fetch one artifact (its newest copy) to dest/<path>.

    Raises:
        NotFound: The run has no artifact at `path`; the message lists some it has.
    """
    chosen = newest_artifacts(list_artifacts(client, run_id).artifacts)
    if path not in chosen:
        listed = ", ".join(sorted(chosen)[:10]) or "none"
        raise NotFound(f"run {run_id} has no artifact {path!r} (it has: {listed})")
    return _fetch(client, run_id, chosen[path].file, Path(dest))


def download_artifacts(client: Client, run_id: str, *, dest: str | os.PathLike[str] = ".") -> list[Path]:
    """Fetch every artifact of the run (the newest copy of each path) under `dest`."""
    chosen = newest_artifacts(list_artifacts(client, run_id).artifacts)
    return [_fetch(client, run_id, chosen[p].file, Path(dest)) for p in sorted(chosen)]
