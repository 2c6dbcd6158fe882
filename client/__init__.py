"""The Python SDK (`submit`, `Run`) and the `schedctl` CLI.

Example:
    >>> from gridlab.client import submit
    >>> run = submit("python train.py", gpus=1)  # address and token from the environment
    >>> run.wait().state
    'SUCCEEDED'
"""

from gridlab.client.errors import (
    AlreadyExists,
    ClientConfigError,
    DeadlineExceeded,
    FailedPrecondition,
    GridlabError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)
from gridlab.client.sdk import (
    STATES,
    Client,
    Run,
    RunStatus,
    build_spec,
    default_client,
    submit,
)

__all__ = [
    "STATES",
    "AlreadyExists",
    "Client",
    "ClientConfigError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "GridlabError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Run",
    "RunStatus",
    "Unauthenticated",
    "Unavailable",
    "build_spec",
    "default_client",
    "from_rpc_error",
    "submit",
]
