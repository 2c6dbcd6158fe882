from gridlab.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BlobPurpose(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BLOB_PURPOSE_UNSPECIFIED: _ClassVar[BlobPurpose]
    BLOB_PURPOSE_BUNDLE: _ClassVar[BlobPurpose]
    BLOB_PURPOSE_CHECKPOINT: _ClassVar[BlobPurpose]
    BLOB_PURPOSE_ARTIFACT: _ClassVar[BlobPurpose]
BLOB_PURPOSE_UNSPECIFIED: BlobPurpose
BLOB_PURPOSE_BUNDLE: BlobPurpose
BLOB_PURPOSE_CHECKPOINT: BlobPurpose
BLOB_PURPOSE_ARTIFACT: BlobPurpose

class StatBlobRequest(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    def __init__(self, digest: _Optional[str] = ...) -> None: ...

class StatBlobResponse(_message.Message):
    __slots__ = ("complete", "size")
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    complete: bool
    size: int
    def __init__(self, complete: _Optional[bool] = ..., size: _Optional[int] = ...) -> None: ...

class BlobHeader(_message.Message):
    __slots__ = ("digest", "size", "offset", "purpose", "attempt_id", "agent_name")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    offset: int
    purpose: BlobPurpose
    attempt_id: str
    agent_name: str
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., offset: _Optional[int] = ..., purpose: _Optional[_Union[BlobPurpose, str]] = ..., attempt_id: _Optional[str] = ..., agent_name: _Optional[str] = ...) -> None: ...

class UploadBlobRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: BlobHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[BlobHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadBlobResponse(_message.Message):
    __slots__ = ("digest", "size", "existed")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    existed: bool
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., existed: _Optional[bool] = ...) -> None: ...

class DownloadBlobRequest(_message.Message):
    __slots__ = ("digest", "offset", "run_id")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    digest: str
    offset: int
    run_id: str
    def __init__(self, digest: _Optional[str] = ..., offset: _Optional[int] = ..., run_id: _Optional[str] = ...) -> None: ...

class DownloadBlobResponse(_message.Message):
    __slots__ = ("data", "size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    size: int
    def __init__(self, data: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class RecordCheckpointRequest(_message.Message):
    __slots__ = ("agent_name", "attempt_id", "node_rank", "name", "step", "files")
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_RANK_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    agent_name: str
    attempt_id: str
    node_rank: int
    name: str
    step: int
    files: _containers.RepeatedCompositeFieldContainer[_types_pb2.FileRef]
    def __init__(self, agent_name: _Optional[str] = ..., attempt_id: _Optional[str] = ..., node_rank: _Optional[int] = ..., name: _Optional[str] = ..., step: _Optional[int] = ..., files: _Optional[_Iterable[_Union[_types_pb2.FileRef, _Mapping]]] = ...) -> None: ...

class RecordCheckpointResponse(_message.Message):
    __slots__ = ("checkpoint_id",)
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    checkpoint_id: int
    def __init__(self, checkpoint_id: _Optional[int] = ...) -> None: ...

class RecordArtifactsRequest(_message.Message):
    __slots__ = ("agent_name", "attempt_id", "node_rank", "files")
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_RANK_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    agent_name: str
    attempt_id: str
    node_rank: int
    files: _containers.RepeatedCompositeFieldContainer[_types_pb2.FileRef]
    def __init__(self, agent_name: _Optional[str] = ..., attempt_id: _Optional[str] = ..., node_rank: _Optional[int] = ..., files: _Optional[_Iterable[_Union[_types_pb2.FileRef, _Mapping]]] = ...) -> None: ...

class RecordArtifactsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListArtifactsRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ListArtifactsResponse(_message.Message):
    __slots__ = ("checkpoints", "artifacts")
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[_types_pb2.Checkpoint]
    artifacts: _containers.RepeatedCompositeFieldContainer[_types_pb2.Artifact]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[_types_pb2.Checkpoint, _Mapping]]] = ..., artifacts: _Optional[_Iterable[_Union[_types_pb2.Artifact, _Mapping]]] = ...) -> None: ...
