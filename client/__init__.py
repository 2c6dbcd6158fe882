"""The Python SDK (`submit`, `Run`) and the `schedctl` CLI.

Example:
    >>> from gridlab.client import submit
    >>> run = submit("python train.py", gpus=1)  # address and token from the environment
    >>> run.wait().state  # raises RunFailed if the run fails
    'SUCCEEDED'
    >>> sweep = submit(entrypoint="train.py", resources="4xA100", sweep={"lr": "[0.1,0.01]"}, metric="val_loss")
    >>> sweep.wait(); sweep.best()
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
    RunCancelled,
    RunEndedBadly,
    RunFailed,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)
from gridlab.client.resources import Resources, parse_resources
from gridlab.client.sdk import (
    STATES,
    Client,
    Metric,
    Run,
    RunStatus,
    build_spec,
    default_client,
    submit,
)
from gridlab.client.sweep_sdk import Sweep
from gridlab.client.sweeps import SweepError

__all__ = [
    "STATES",
    "AlreadyExists",
    "Client",
    "ClientConfigError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "GridlabError",
    "InvalidArgument",
    "Metric",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Resources",
    "Run",
    "RunCancelled",
    "RunEndedBadly",
    "RunFailed",
    "RunStatus",
    "Sweep",
    "SweepError",
    "Unauthenticated",
    "Unavailable",
    "build_spec",
    "default_client",
    "from_rpc_error",
    "parse_resources",
    "submit",
]
