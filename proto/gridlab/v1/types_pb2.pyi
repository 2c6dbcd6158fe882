import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_QUEUED: _ClassVar[RunState]
    RUN_STATE_STARTING: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_SUCCEEDED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]
    RUN_STATE_CANCELLED: _ClassVar[RunState]

class AttemptState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ATTEMPT_STATE_UNSPECIFIED: _ClassVar[AttemptState]
    ATTEMPT_STATE_ASSIGNED: _ClassVar[AttemptState]
    ATTEMPT_STATE_PREPARING: _ClassVar[AttemptState]
    ATTEMPT_STATE_RUNNING: _ClassVar[AttemptState]
    ATTEMPT_STATE_SUCCEEDED: _ClassVar[AttemptState]
    ATTEMPT_STATE_FAILED: _ClassVar[AttemptState]
    ATTEMPT_STATE_CANCELLED: _ClassVar[AttemptState]
    ATTEMPT_STATE_LOST: _ClassVar[AttemptState]
    ATTEMPT_STATE_PREEMPTED: _ClassVar[AttemptState]

class AgentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_STATE_UNSPECIFIED: _ClassVar[AgentState]
    AGENT_STATE_READY: _ClassVar[AgentState]
    AGENT_STATE_LOST: _ClassVar[AgentState]
    AGENT_STATE_DRAINING: _ClassVar[AgentState]
    AGENT_STATE_CORDONED: _ClassVar[AgentState]
    AGENT_STATE_OFFLINE: _ClassVar[AgentState]

class LogStream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_STREAM_UNSPECIFIED: _ClassVar[LogStream]
    LOG_STREAM_STDOUT: _ClassVar[LogStream]
    LOG_STREAM_STDERR: _ClassVar[LogStream]
    LOG_STREAM_SYSTEM: _ClassVar[LogStream]
    LOG_STREAM_METRICS: _ClassVar[LogStream]
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_QUEUED: RunState
RUN_STATE_STARTING: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_SUCCEEDED: RunState
RUN_STATE_FAILED: RunState
RUN_STATE_CANCELLED: RunState
ATTEMPT_STATE_UNSPECIFIED: AttemptState
ATTEMPT_STATE_ASSIGNED: AttemptState
ATTEMPT_STATE_PREPARING: AttemptState
ATTEMPT_STATE_RUNNING: AttemptState
ATTEMPT_STATE_SUCCEEDED: AttemptState
ATTEMPT_STATE_FAILED: AttemptState
ATTEMPT_STATE_CANCELLED: AttemptState
ATTEMPT_STATE_LOST: AttemptState
ATTEMPT_STATE_PREEMPTED: AttemptState
AGENT_STATE_UNSPECIFIED: AgentState
AGENT_STATE_READY: AgentState
AGENT_STATE_LOST: AgentState
AGENT_STATE_DRAINING: AgentState
AGENT_STATE_CORDONED: AgentState
AGENT_STATE_OFFLINE: AgentState
LOG_STREAM_UNSPECIFIED: LogStream
LOG_STREAM_STDOUT: LogStream
LOG_STREAM_STDERR: LogStream
LOG_STREAM_SYSTEM: LogStream
LOG_STREAM_METRICS: LogStream

class Resources(_message.Message):
    __slots__ = ("nodes", "gpus", "gpu_types", "min_gpu_memory_bytes", "cpus", "memory_bytes", "procs_per_node")
    NODES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    GPU_TYPES_FIELD_NUMBER: _ClassVar[int]
    MIN_GPU_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROCS_PER_NODE_FIELD_NUMBER: _ClassVar[int]
    nodes: int
    gpus: int
    gpu_types: _containers.RepeatedScalarFieldContainer[str]
    min_gpu_memory_bytes: int
    cpus: float
    memory_bytes: int
    procs_per_node: int
    def __init__(self, nodes: _Optional[int] = ..., gpus: _Optional[int] = ..., gpu_types: _Optional[_Iterable[str]] = ..., min_gpu_memory_bytes: _Optional[int] = ..., cpus: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., procs_per_node: _Optional[int] = ...) -> None: ...

class RunSpec(_message.Message):
    __slots__ = ("name", "command", "env", "resources", "pool", "labels", "priority", "preemptible", "time_limit", "max_retries", "code_digest", "requirements", "hang_timeout", "workdir", "sweep")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PREEMPTIBLE_FIELD_NUMBER: _ClassVar[int]
    TIME_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    CODE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    HANG_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    SWEEP_FIELD_NUMBER: _ClassVar[int]
    name: str
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    resources: Resources
    pool: str
    labels: _containers.ScalarMap[str, str]
    priority: int
    preemptible: bool
    time_limit: _duration_pb2.Duration
    max_retries: int
    code_digest: str
    requirements: _containers.RepeatedScalarFieldContainer[str]
    hang_timeout: _duration_pb2.Duration
    workdir: str
    sweep: SweepTrial
    def __init__(self, name: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., pool: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., priority: _Optional[int] = ..., preemptible: _Optional[bool] = ..., time_limit: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_retries: _Optional[int] = ..., code_digest: _Optional[str] = ..., requirements: _Optional[_Iterable[str]] = ..., hang_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., workdir: _Optional[str] = ..., sweep: _Optional[_Union[SweepTrial, _Mapping]] = ...) -> None: ...

class SweepTrial(_message.Message):
    __slots__ = ("name", "index", "params", "size", "metric", "maximize")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MAXIMIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    index: int
    params: _containers.ScalarMap[str, str]
    size: int
    metric: str
    maximize: bool
    def __init__(self, name: _Optional[str] = ..., index: _Optional[int] = ..., params: _Optional[_Mapping[str, str]] = ..., size: _Optional[int] = ..., metric: _Optional[str] = ..., maximize: _Optional[bool] = ...) -> None: ...

class NodeAssignment(_message.Message):
    __slots__ = ("node_rank", "agent_id", "agent_name", "gpu_uuids", "cpus", "memory_bytes")
    NODE_RANK_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    GPU_UUIDS_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    node_rank: int
    agent_id: str
    agent_name: str
    gpu_uuids: _containers.RepeatedScalarFieldContainer[str]
    cpus: float
    memory_bytes: int
    def __init__(self, node_rank: _Optional[int] = ..., agent_id: _Optional[str] = ..., agent_name: _Optional[str] = ..., gpu_uuids: _Optional[_Iterable[str]] = ..., cpus: _Optional[float] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("id", "run_id", "number", "state", "nodes", "exit_code", "reason", "created_at", "started_at", "finished_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    run_id: str
    number: int
    state: AttemptState
    nodes: _containers.RepeatedCompositeFieldContainer[NodeAssignment]
    exit_code: int
    reason: str
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., run_id: _Optional[str] = ..., number: _Optional[int] = ..., state: _Optional[_Union[AttemptState, str]] = ..., nodes: _Optional[_Iterable[_Union[NodeAssignment, _Mapping]]] = ..., exit_code: _Optional[int] = ..., reason: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("id", "spec", "state", "user", "team", "pending_reason", "exit_code", "message", "retries_used", "attempts", "created_at", "started_at", "finished_at", "idempotency_key", "queue_position", "interruptions")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    PENDING_REASON_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRIES_USED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTIONS_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: RunSpec
    state: RunState
    user: str
    team: str
    pending_reason: str
    exit_code: int
    message: str
    retries_used: int
    attempts: _containers.RepeatedCompositeFieldContainer[Attempt]
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    idempotency_key: str
    queue_position: int
    interruptions: int
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[RunSpec, _Mapping]] = ..., state: _Optional[_Union[RunState, str]] = ..., user: _Optional[str] = ..., team: _Optional[str] = ..., pending_reason: _Optional[str] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., retries_used: _Optional[int] = ..., attempts: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., queue_position: _Optional[int] = ..., interruptions: _Optional[int] = ...) -> None: ...

class Gpu(_message.Message):
    __slots__ = ("index", "uuid", "model", "memory_total_bytes", "memory_used_bytes", "utilization", "temperature_c", "compute_capability", "nvlink_peers", "pci_bus_id", "pcie_switch_peers")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    NVLINK_PEERS_FIELD_NUMBER: _ClassVar[int]
    PCI_BUS_ID_FIELD_NUMBER: _ClassVar[int]
    PCIE_SWITCH_PEERS_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    model: str
    memory_total_bytes: int
    memory_used_bytes: int
    utilization: float
    temperature_c: float
    compute_capability: str
    nvlink_peers: _containers.RepeatedScalarFieldContainer[str]
    pci_bus_id: str
    pcie_switch_peers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., model: _Optional[str] = ..., memory_total_bytes: _Optional[int] = ..., memory_used_bytes: _Optional[int] = ..., utilization: _Optional[float] = ..., temperature_c: _Optional[float] = ..., compute_capability: _Optional[str] = ..., nvlink_peers: _Optional[_Iterable[str]] = ..., pci_bus_id: _Optional[str] = ..., pcie_switch_peers: _Optional[_Iterable[str]] = ...) -> None: ...

class Inventory(_message.Message):
    __slots__ = ("hostname", "address", "gpus", "cpus", "memory_bytes", "disk_free_bytes", "fake_gpus")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FAKE_GPUS_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    address: str
    gpus: _containers.RepeatedCompositeFieldContainer[Gpu]
    cpus: float
    memory_bytes: int
    disk_free_bytes: int
    fake_gpus: bool
    def __init__(self, hostname: _Optional[str] = ..., address: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[Gpu, _Mapping]]] = ..., cpus: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., disk_free_bytes: _Optional[int] = ..., fake_gpus: _Optional[bool] = ...) -> None: ...

class Agent(_message.Message):
    __slots__ = ("id", "name", "pool", "labels", "state", "inventory", "connected_at", "last_heartbeat", "attempt_ids", "gpus_free", "cpus_free", "preemptible")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FREE_FIELD_NUMBER: _ClassVar[int]
    CPUS_FREE_FIELD_NUMBER: _ClassVar[int]
    PREEMPTIBLE_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    pool: str
    labels: _containers.ScalarMap[str, str]
    state: AgentState
    inventory: Inventory
    connected_at: _timestamp_pb2.Timestamp
    last_heartbeat: _timestamp_pb2.Timestamp
    attempt_ids: _containers.RepeatedScalarFieldContainer[str]
    gpus_free: int
    cpus_free: float
    preemptible: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., pool: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[AgentState, str]] = ..., inventory: _Optional[_Union[Inventory, _Mapping]] = ..., connected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_heartbeat: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempt_ids: _Optional[_Iterable[str]] = ..., gpus_free: _Optional[int] = ..., cpus_free: _Optional[float] = ..., preemptible: _Optional[bool] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("attempt_id", "rank", "stream", "seq", "text", "time", "cursor", "attempt_number", "count")
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_NUMBER_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    attempt_id: str
    rank: int
    stream: LogStream
    seq: int
    text: str
    time: _timestamp_pb2.Timestamp
    cursor: int
    attempt_number: int
    count: int
    def __init__(self, attempt_id: _Optional[str] = ..., rank: _Optional[int] = ..., stream: _Optional[_Union[LogStream, str]] = ..., seq: _Optional[int] = ..., text: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cursor: _Optional[int] = ..., attempt_number: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("id", "run_id", "attempt_id", "kind", "state", "message", "time")
    ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    id: int
    run_id: str
    attempt_id: str
    kind: str
    state: RunState
    message: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., run_id: _Optional[str] = ..., attempt_id: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., message: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class FileRef(_message.Message):
    __slots__ = ("path", "digest", "size")
    PATH_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    path: str
    digest: str
    size: int
    def __init__(self, path: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("id", "run_id", "attempt_id", "attempt_number", "node_rank", "name", "step", "files", "time")
    ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_NUMBER_FIELD_NUMBER: _ClassVar[int]
    NODE_RANK_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    id: int
    run_id: str
    attempt_id: str
    attempt_number: int
    node_rank: int
    name: str
    step: int
    files: _containers.RepeatedCompositeFieldContainer[FileRef]
    time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., run_id: _Optional[str] = ..., attempt_id: _Optional[str] = ..., attempt_number: _Optional[int] = ..., node_rank: _Optional[int] = ..., name: _Optional[str] = ..., step: _Optional[int] = ..., files: _Optional[_Iterable[_Union[FileRef, _Mapping]]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("run_id", "attempt_id", "attempt_number", "node_rank", "file", "time")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_NUMBER_FIELD_NUMBER: _ClassVar[int]
    NODE_RANK_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    attempt_id: str
    attempt_number: int
    node_rank: int
    file: FileRef
    time: _timestamp_pb2.Timestamp
    def __init__(self, run_id: _Optional[str] = ..., attempt_id: _Optional[str] = ..., attempt_number: _Optional[int] = ..., node_rank: _Optional[int] = ..., file: _Optional[_Union[FileRef, _Mapping]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
