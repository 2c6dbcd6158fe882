import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from gridlab.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AttemptStatus(_message.Message):
    __slots__ = ("attempt_id", "run_id", "state", "exit_code", "message", "time", "last_step", "last_step_time", "ranks_exited", "permanent", "prepared", "master_port", "infrastructure", "interrupted")
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_TIME_FIELD_NUMBER: _ClassVar[int]
    RANKS_EXITED_FIELD_NUMBER: _ClassVar[int]
    PERMANENT_FIELD_NUMBER: _ClassVar[int]
    PREPARED_FIELD_NUMBER: _ClassVar[int]
    MASTER_PORT_FIELD_NUMBER: _ClassVar[int]
    INFRASTRUCTURE_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    attempt_id: str
    run_id: str
    state: _types_pb2.AttemptState
    exit_code: int
    message: str
    time: _timestamp_pb2.Timestamp
    last_step: int
    last_step_time: _timestamp_pb2.Timestamp
    ranks_exited: bool
    permanent: bool
    prepared: bool
    master_port: int
    infrastructure: bool
    interrupted: bool
    def __init__(self, attempt_id: _Optional[str] = ..., run_id: _Optional[str] = ..., state: _Optional[_Union[_types_pb2.AttemptState, str]] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_step: _Optional[int] = ..., last_step_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ranks_exited: _Optional[bool] = ..., permanent: _Optional[bool] = ..., prepared: _Optional[bool] = ..., master_port: _Optional[int] = ..., infrastructure: _Optional[bool] = ..., interrupted: _Optional[bool] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("name", "pool", "labels", "inventory", "attempts", "version", "draining", "preemptible")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    PREEMPTIBLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    pool: str
    labels: _containers.ScalarMap[str, str]
    inventory: _types_pb2.Inventory
    attempts: _containers.RepeatedCompositeFieldContainer[AttemptStatus]
    version: str
    draining: bool
    preemptible: bool
    def __init__(self, name: _Optional[str] = ..., pool: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., inventory: _Optional[_Union[_types_pb2.Inventory, _Mapping]] = ..., attempts: _Optional[_Iterable[_Union[AttemptStatus, _Mapping]]] = ..., version: _Optional[str] = ..., draining: _Optional[bool] = ..., preemptible: _Optional[bool] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("inventory", "attempts", "draining")
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    inventory: _types_pb2.Inventory
    attempts: _containers.RepeatedCompositeFieldContainer[AttemptStatus]
    draining: bool
    def __init__(self, inventory: _Optional[_Union[_types_pb2.Inventory, _Mapping]] = ..., attempts: _Optional[_Iterable[_Union[AttemptStatus, _Mapping]]] = ..., draining: _Optional[bool] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "heartbeat", "update")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    heartbeat: Heartbeat
    update: AttemptStatus
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., update: _Optional[_Union[AttemptStatus, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("agent_id", "heartbeat_interval", "heartbeat_timeout")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    heartbeat_interval: _duration_pb2.Duration
    heartbeat_timeout: _duration_pb2.Duration
    def __init__(self, agent_id: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., heartbeat_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("attempt_id", "run_id", "attempt_number", "spec", "node_rank", "nodes", "procs_per_node", "gpu_uuids", "master_addr", "master_port", "resume_from", "user", "resume_name", "resume_files", "resume_attempt_number", "resume_step", "wait_for_start")
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    NODE_RANK_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    PROCS_PER_NODE_FIELD_NUMBER: _ClassVar[int]
    GPU_UUIDS_FIELD_NUMBER: _ClassVar[int]
    MASTER_ADDR_FIELD_NUMBER: _ClassVar[int]
    MASTER_PORT_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    RESUME_NAME_FIELD_NUMBER: _ClassVar[int]
    RESUME_FILES_FIELD_NUMBER: _ClassVar[int]
    RESUME_ATTEMPT_NUMBER_FIELD_NUMBER: _ClassVar[int]
    RESUME_STEP_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_START_FIELD_NUMBER: _ClassVar[int]
    attempt_id: str
    run_id: str
    attempt_number: int
    spec: _types_pb2.RunSpec
    node_rank: int
    nodes: int
    procs_per_node: int
    gpu_uuids: _containers.RepeatedScalarFieldContainer[str]
    master_addr: str
    master_port: int
    resume_from: str
    user: str
    resume_name: str
    resume_files: _containers.RepeatedCompositeFieldContainer[_types_pb2.FileRef]
    resume_attempt_number: int
    resume_step: int
    wait_for_start: bool
    def __init__(self, attempt_id: _Optional[str] = ..., run_id: _Optional[str] = ..., attempt_number: _Optional[int] = ..., spec: _Optional[_Union[_types_pb2.RunSpec, _Mapping]] = ..., node_rank: _Optional[int] = ..., nodes: _Optional[int] = ..., procs_per_node: _Optional[int] = ..., gpu_uuids: _Optional[_Iterable[str]] = ..., master_addr: _Optional[str] = ..., master_port: _Optional[int] = ..., resume_from: _Optional[str] = ..., user: _Optional[str] = ..., resume_name: _Optional[str] = ..., resume_files: _Optional[_Iterable[_Union[_types_pb2.FileRef, _Mapping]]] = ..., resume_attempt_number: _Optional[int] = ..., resume_step: _Optional[int] = ..., wait_for_start: _Optional[bool] = ...) -> None: ...

class StartAttempt(_message.Message):
    __slots__ = ("attempt_id", "master_addr", "master_port")
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    MASTER_ADDR_FIELD_NUMBER: _ClassVar[int]
    MASTER_PORT_FIELD_NUMBER: _ClassVar[int]
    attempt_id: str
    master_addr: str
    master_port: int
    def __init__(self, attempt_id: _Optional[str] = ..., master_addr: _Optional[str] = ..., master_port: _Optional[int] = ...) -> None: ...

class CancelAttempt(_message.Message):
    __slots__ = ("attempt_id", "grace", "reason", "final_state")
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FINAL_STATE_FIELD_NUMBER: _ClassVar[int]
    attempt_id: str
    grace: _duration_pb2.Duration
    reason: str
    final_state: _types_pb2.AttemptState
    def __init__(self, attempt_id: _Optional[str] = ..., grace: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., reason: _Optional[str] = ..., final_state: _Optional[_Union[_types_pb2.AttemptState, str]] = ...) -> None: ...

class ReleaseAttempt(_message.Message):
    __slots__ = ("attempt_id",)
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    attempt_id: str
    def __init__(self, attempt_id: _Optional[str] = ...) -> None: ...

class SchedulerMessage(_message.Message):
    __slots__ = ("welcome", "assign", "cancel", "release", "start", "cadence")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ASSIGN_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    CADENCE_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    assign: Assignment
    cancel: CancelAttempt
    release: ReleaseAttempt
    start: StartAttempt
    cadence: Cadence
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., assign: _Optional[_Union[Assignment, _Mapping]] = ..., cancel: _Optional[_Union[CancelAttempt, _Mapping]] = ..., release: _Optional[_Union[ReleaseAttempt, _Mapping]] = ..., start: _Optional[_Union[StartAttempt, _Mapping]] = ..., cadence: _Optional[_Union[Cadence, _Mapping]] = ...) -> None: ...

class Cadence(_message.Message):
    __slots__ = ("heartbeat_interval", "heartbeat_timeout")
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval: _duration_pb2.Duration
    heartbeat_timeout: _duration_pb2.Duration
    def __init__(self, heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., heartbeat_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class PushLogsRequest(_message.Message):
    __slots__ = ("agent_name", "lines")
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    agent_name: str
    lines: _containers.RepeatedCompositeFieldContainer[_types_pb2.LogLine]
    def __init__(self, agent_name: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[_types_pb2.LogLine, _Mapping]]] = ...) -> None: ...

class PushLogsResponse(_message.Message):
    __slots__ = ("accepted", "duplicates")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...
