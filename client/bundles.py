"""A folder of code to the scheduler as a content-addressed bundle, for `RunSpec.code_digest`.

The same tree always packs to the same bytes (common/bundle.py), so resubmitting unchanged code
costs a StatBlob and no upload.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from gridlab.common import transfer
from gridlab.common.bundle import DEFAULT_MAX_BYTES, pack
from gridlab.v1 import artifacts_pb2, artifacts_pb2_grpc

STAT_TIMEOUT = 30.0


def upload_bundle(
    stub: artifacts_pb2_grpc.ArtifactsStub,
    metadata: Sequence[tuple[str, str]],
    directory: Path,
    *,
    max_bytes: int | None = None,
) -> tuple[str, list[str]]:
    """Pack `directory` and upload it unless the scheduler has it already.

    Example:
        digest, warnings = upload_bundle(stub, auth.metadata(token), Path("."))
        spec.code_digest = digest

    Returns:
        The bundle's digest ("sha256:<hex>") and pack's warnings for the user (a bundle over
        50 MB, ignore patterns that could not be read, files skipped).

    Raises:
        BundleError: the folder cannot be packed (over `max_bytes`, a link out of it, unreadable files).
        grpc.RpcError: the upload failed; RESOURCE_EXHAUSTED when the scheduler's bundle cap is lower.
    """
    with tempfile.TemporaryDirectory(prefix="gridlab-bundle-") as tmp:
        bundle = pack(directory, tmp, max_bytes=DEFAULT_MAX_BYTES if max_bytes is None else max_bytes)
        stat = stub.StatBlob(
            artifacts_pb2.StatBlobRequest(digest=bundle.digest), metadata=metadata, timeout=STAT_TIMEOUT
        )
        if not stat.complete:
            transfer.upload_file(
                stub, bundle.path, purpose=artifacts_pb2.BLOB_PURPOSE_BUNDLE, metadata=metadata, digest=bundle.digest
            )
    return bundle.digest, list(bundle.warnings)
