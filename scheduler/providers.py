"""Machine providers for autoscaled pools: create N machines of a type, list them, terminate them.

A created machine runs `gridlab-agent` joined to one pool with a join token made for it alone
(the autoscaler revokes it when the machine goes). `local` starts agent processes on this
machine: the tests and the bursting demo use it. `ec2` starts EC2 instances through boto3 (an
optional dependency, `gridlab[aws]`). `command` runs the admin's shell templates, for any other
cloud or batch system (a Slurm pilot job). Each provider's options come from the pool's
`[pools.NAME.PROVIDER]` sub-table, checked by `check_options` when the config is read.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import re
import shlex
import signal
import string
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gridlab.common.atomicfile import write_atomic
from gridlab.common.auth import write_secret
from gridlab.common.config import ConfigError

GIB = 1024**3
MIB = 1024**2


class ProviderError(RuntimeError):
    """A provider could not do what it was asked (the autoscaler logs it and tries again next tick)."""


@dataclass(frozen=True)
class MachineRequest:
    """One machine to create: its agent's name and the join token it may use."""

    name: str
    token: str


class Provider(Protocol):
    def create(self, machine_type: str, machines: builtins.list[MachineRequest]) -> builtins.list[str]:
        """Start one machine per request (of `machine_type`); returns the names started."""

    def list(self) -> builtins.list[str]:
        """Names of the machines this provider holds now (starting or running)."""

    def terminate(self, names: builtins.list[str]) -> None:
        """Stop these machines (unknown names are ignored)."""


def agent_args(
    scheduler: str,
    pool: str,
    name: str,
    token_file: str,
    labels: Mapping[str, str],
    preemptible: bool = False,
    spot_notice: str = "",
) -> builtins.list[str]:
    """The `gridlab-agent` arguments every provider starts a machine's agent with (never the token itself). A
    preemptible pool's agents say so, and watch `spot_notice` (agent/spotwatch.py) for the cloud's notice."""
    args = ["--scheduler", scheduler, "--pool", pool, "--name", name, "--token-file", token_file]
    for key, value in sorted(labels.items()):
        args += ["--label", f"{key}={value}"]
    if preemptible:
        args += ["--preemptible"] + (["--spot-notice-url", spot_notice] if spot_notice else [])
    return args


@dataclass
class LocalProvider:
    """Agents as processes on this machine: `machine_type` is a GRIDLAB_FAKE_GPUS value ("2xA100:80")."""

    scheduler: str  # the address agents connect to
    pool: str
    state_dir: Path  # per-machine state dirs, token files and logs go under it
    labels: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)  # none: a local pool has no sub-table
    preemptible: bool = False  # its agents say they are spot machines (a test stops them as a reclaim would)
    grace: float = 10.0  # SIGTERM to SIGKILL
    python: str = sys.executable
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def create(self, machine_type: str, machines: builtins.list[MachineRequest]) -> builtins.list[str]:
        started = []
        for m in machines:
            home = self.state_dir / m.name
            home.mkdir(parents=True, exist_ok=True)
            token_file = home / "join.token"
            write_secret(token_file, m.token)
            env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDLAB_AGENT_")}
            env["GRIDLAB_FAKE_GPUS"] = machine_type
            args = [self.python, "-m", "gridlab.agent.main"]
            args += agent_args(self.scheduler, self.pool, m.name, str(token_file), self.labels, self.preemptible)
            args += ["--state-dir", str(home / "state"), "--log-format", "json", "--grace-period", str(self.grace)]
            with (home / "agent.log").open("ab") as log:
                self.procs[m.name] = subprocess.Popen(
                    args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
            started.append(m.name)
        return started

    def list(self) -> builtins.list[str]:
        for name in [n for n, p in self.procs.items() if p.poll() is not None]:
            del self.procs[name]  # exited by itself: gone
        return sorted(self.procs)

    def terminate(self, names: builtins.list[str]) -> None:
        procs = [(n, self.procs.pop(n)) for n in names if n in self.procs]
        for _, proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for _, proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- ec2 ------------------------------------------------------------------------------------------------

# One instance's GPUs: (count, model as NVML names it, memory in MiB). The model is what the instance's agent
# will report (placement matches a run's gpu_types against it exactly), and the memory is rounded down to what
# the driver reports, so the autoscaler never opens a machine for a run that the machine could not then hold.
_A10G = ("NVIDIA A10G", 22_000)
_L4 = ("NVIDIA L4", 22_000)
_L40S = ("NVIDIA L40S", 44_000)
_T4 = ("Tesla T4", 15_000)
EC2_GPUS: dict[str, tuple[int, str, int]] = {
    "p5.48xlarge": (8, "NVIDIA H100 80GB HBM3", 79_000),
    "p5e.48xlarge": (8, "NVIDIA H200", 139_000),
    "p5en.48xlarge": (8, "NVIDIA H200", 139_000),
    "p4d.24xlarge": (8, "NVIDIA A100-SXM4-40GB", 39_000),
    "p4de.24xlarge": (8, "NVIDIA A100-SXM4-80GB", 79_000),
    "p3.2xlarge": (1, "Tesla V100-SXM2-16GB", 15_000),
    "p3.8xlarge": (4, "Tesla V100-SXM2-16GB", 15_000),
    "p3.16xlarge": (8, "Tesla V100-SXM2-16GB", 15_000),
    "p3dn.24xlarge": (8, "Tesla V100-SXM2-32GB", 31_000),
    **{f"g5.{size}": (1, *_A10G) for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g5.12xlarge": (4, *_A10G),
    "g5.24xlarge": (4, *_A10G),
    "g5.48xlarge": (8, *_A10G),
    **{f"g6.{size}": (1, *_L4) for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g6.12xlarge": (4, *_L4),
    "g6.24xlarge": (4, *_L4),
    "g6.48xlarge": (8, *_L4),
    **{f"g6e.{size}": (1, *_L40S) for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g6e.12xlarge": (4, *_L40S),
    "g6e.24xlarge": (4, *_L40S),
    "g6e.48xlarge": (8, *_L40S),
    **{f"g4dn.{size}": (1, *_T4) for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g4dn.12xlarge": (4, *_T4),
    "g4dn.metal": (8, *_T4),
}

EC2_KEYS = {
    "region",  # AWS region (default: boto3's own: AWS_DEFAULT_REGION, ~/.aws/config)
    "ami",  # image id; required. The image has gridlab-agent installed (see agent_command)
    "subnet",  # subnet id (default: the default VPC's)
    "security_groups",  # list of security group ids
    "key_name",  # EC2 key pair, for ssh
    "instance_profile",  # IAM instance profile, a name or an ARN
    "endpoint_url",  # a private or test endpoint for the EC2 API
    "agent_command",  # the agent's path on the image (default "gridlab-agent")
    "agent_args",  # more agent arguments, e.g. ["--tls-ca", "/etc/gridlab/ca.pem"]
    "volume_gb",  # root volume size in GiB (default: the image's)
    "tags",  # more tags for each instance, e.g. { team = "vision" }
}
AGENT_DIR = "/var/lib/gridlab"  # on an instance: the token file and the agent's state
TAG_POOL = "gridlab:pool"
TAG_NAME = "gridlab:name"
TAG_SCHEDULER = "gridlab:scheduler"
HELD = ["pending", "running", "stopping", "stopped"]  # held (and some billed); not shutting-down or terminated


def ec2_gpus(instance_type: str) -> tuple[tuple[str, int], ...] | None:
    """One instance's GPUs as (model, memory bytes), or None for a type the table does not know."""
    entry = EC2_GPUS.get(instance_type)
    if entry is None:
        return None
    count, model, mib = entry
    return ((model, mib * MIB),) * count


def user_data(command: str, args: builtins.list[str], token: str) -> str:
    """The instance's boot script (cloud-init runs it as root): the token into a file only root can read, then the
    agent as a service. The token is in the script's text (the machine needs it), never on a command line."""
    if not token or any(c.isspace() or c in "'\\" for c in token):
        raise ProviderError("a join token must be one word without quotes or backslashes")
    token_file = f"{AGENT_DIR}/join.token"
    agent = " ".join(shlex.quote(a) for a in [command, *args, "--state-dir", f"{AGENT_DIR}/agent"])
    return f"""#!/bin/sh
# gridlab: join this machine to its pool (written by the scheduler's ec2 provider)
set -eu
umask 077
mkdir -p {AGENT_DIR}
cat > {token_file} <<'GRIDLAB_TOKEN'
{token}
GRIDLAB_TOKEN
chmod 600 {token_file}
if command -v systemd-run >/dev/null 2>&1; then
  systemd-run --unit=gridlab-agent --property=Restart=on-failure -- {agent}
else
  nohup {agent} >>/var/log/gridlab-agent.log 2>&1 &
fi
"""


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise ConfigError("the ec2 provider needs boto3: pip install 'gridlab[aws]'") from None
    return boto3


@dataclass
class Ec2Provider:
    """EC2 instances tagged with the pool, its scheduler and each machine's name; spot for a preemptible pool."""

    scheduler: str
    pool: str
    state_dir: Path  # unused: EC2's tags are the provider's whole state
    labels: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)  # the checked [pools.NAME.ec2] table
    preemptible: bool = False
    client: Any = None  # boto3's EC2 client, made on first use
    root_device: str = ""  # the image's root device name, looked up once when volume_gb is given

    def __post_init__(self) -> None:
        _boto3()  # a missing boto3 is a config error at the scheduler's start, not a log line every tick

    def _ec2(self) -> Any:
        if self.client is None:
            session = _boto3().session.Session()
            self.client = session.client(
                "ec2", region_name=self.options.get("region"), endpoint_url=self.options.get("endpoint_url")
            )
        return self.client

    def _tags(self, name: str) -> builtins.list[dict[str, str]]:
        tags = {str(k): str(v) for k, v in self.options.get("tags", {}).items()}
        tags |= {"Name": name, TAG_NAME: name, TAG_POOL: self.pool, TAG_SCHEDULER: self.scheduler}
        return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]

    def run_request(self, machine_type: str, m: MachineRequest) -> dict[str, Any]:
        """The RunInstances arguments for one machine (the tests read them; nothing is sent)."""
        o = self.options
        token_file = f"{AGENT_DIR}/join.token"
        args = agent_args(self.scheduler, self.pool, m.name, token_file, self.labels, self.preemptible, "ec2")
        args += [str(a) for a in o.get("agent_args", [])]
        req: dict[str, Any] = {
            "ImageId": o["ami"],
            "InstanceType": machine_type,
            "MinCount": 1,
            "MaxCount": 1,
            # a retried call does not start a second machine (at most 64 characters, unique per account and region)
            "ClientToken": hashlib.sha256(f"{self.scheduler}/{m.name}".encode()).hexdigest()[:48],
            "UserData": user_data(str(o.get("agent_command", "gridlab-agent")), args, m.token),
            "InstanceInitiatedShutdownBehavior": "terminate",  # a machine that powers off stops billing
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": self._tags(m.name)},
                {"ResourceType": "volume", "Tags": self._tags(m.name)},
            ],
        }
        if self.preemptible:
            req["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
            }
        if "subnet" in o:
            req["SubnetId"] = o["subnet"]
        if "security_groups" in o:
            req["SecurityGroupIds"] = list(o["security_groups"])
        if "key_name" in o:
            req["KeyName"] = o["key_name"]
        if "instance_profile" in o:
            profile = str(o["instance_profile"])
            req["IamInstanceProfile"] = {"Arn": profile} if profile.startswith("arn:") else {"Name": profile}
        if "volume_gb" in o:
            device = self.root_device or "/dev/sda1"
            req["BlockDeviceMappings"] = [{"DeviceName": device, "Ebs": {"VolumeSize": int(o["volume_gb"])}}]
        return req

    def create(self, machine_type: str, machines: builtins.list[MachineRequest]) -> builtins.list[str]:
        ec2 = self._ec2()
        if "volume_gb" in self.options and not self.root_device:  # /dev/xvda or /dev/sda1: the image says which
            try:
                (image,) = ec2.describe_images(ImageIds=[self.options["ami"]])["Images"]
            except Exception as exc:
                raise ProviderError(f"ec2 pool {self.pool}: cannot read image {self.options['ami']}: {exc}") from exc
            self.root_device = str(image.get("RootDeviceName") or "/dev/sda1")
        started, failed = [], []
        for m in machines:  # one call each: each machine's user data holds its own token
            try:
                ec2.run_instances(**self.run_request(machine_type, m))
            except Exception as exc:  # botocore's ClientError, EndpointConnectionError, ...
                failed.append(f"{m.name}: {exc}")
            else:
                started.append(m.name)
        if failed:
            raise ProviderError(f"ec2 pool {self.pool}: could not start {'; '.join(failed)}")
        return started

    def _instances(self) -> dict[str, builtins.list[str]]:
        """This pool's held instances: machine name -> instance ids."""
        filters = [
            {"Name": f"tag:{TAG_POOL}", "Values": [self.pool]},
            {"Name": f"tag:{TAG_SCHEDULER}", "Values": [self.scheduler]},
            {"Name": "instance-state-name", "Values": HELD},
        ]
        out: dict[str, builtins.list[str]] = {}
        for page in self._ec2().get_paginator("describe_instances").paginate(Filters=filters):
            for reservation in page["Reservations"]:
                for inst in reservation["Instances"]:
                    tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                    if TAG_NAME in tags:
                        out.setdefault(tags[TAG_NAME], []).append(inst["InstanceId"])
        return out

    def list(self) -> builtins.list[str]:
        return sorted(self._instances())

    def terminate(self, names: builtins.list[str]) -> None:
        held = self._instances()
        ids = sorted(i for n in names for i in held.get(n, []))
        if ids:
            self._ec2().terminate_instances(InstanceIds=ids)


# --- command --------------------------------------------------------------------------------------------

COMMAND_KEYS = {"create", "delete", "list", "timeout"}
FIELDS = {
    "create": {"name", "pool", "scheduler", "machine", "token_file", "agent_args"},
    "delete": {"name", "pool", "scheduler", "token_file"},
    "list": {"pool", "scheduler"},
}


def template_fields(where: str, template: str) -> set[str]:
    """The {fields} a template uses; a malformed one, or {x.attr}, {x[0]}, {x!r}, {x:>9}, is a ConfigError."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc} (write a literal brace as {{{{ or }}}})") from None
    out = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ConfigError(f"{where}: {{{name}}}: only plain {{field}} substitutions are allowed")
        out.add(name)
    return out


@dataclass
class CommandProvider:
    """Machines made by the admin's shell templates (another cloud's CLI, `sbatch` for a Slurm pilot job).

    Every substituted value is shell-quoted. The agent reads its token from {token_file}, a file only this user can
    read under state_dir (on a shared filesystem when the agent runs elsewhere); the token is never in a command.
    Without a `list` template the provider remembers the machines it made in state_dir/machines.json; with one,
    the lines it prints that start with "POOL-" (the autoscaler's names for this pool's machines) are the machines."""

    scheduler: str
    pool: str
    state_dir: Path
    labels: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)  # the checked [pools.NAME.command] table
    preemptible: bool = False

    @property
    def _ledger(self) -> Path:
        return self.state_dir / "machines.json"

    def _token_file(self, name: str) -> Path:
        return self.state_dir / "tokens" / f"{name}.token"

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            return dict(json.loads(self._ledger.read_text()))
        except FileNotFoundError:
            return {}

    def _save(self, machines: Mapping[str, Any]) -> None:
        write_atomic(self._ledger, json.dumps(machines, indent=1, sort_keys=True))

    def _run(self, what: str, values: Mapping[str, str], quoted: Mapping[str, str] | None = None) -> str:
        """Run the `what` template with `values` shell-quoted (and `quoted`, already quoted, as they are)."""
        quoted = {k: shlex.quote(v) for k, v in values.items()} | dict(quoted or {})
        command = str(self.options[what]).format_map(quoted)
        timeout = float(self.options.get("timeout", 300))
        try:
            done = subprocess.run(  # noqa: S602 - the admin's template; every substituted value is quoted
                command,
                shell=True,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ProviderError(f"command pool {self.pool}: {what} took over {timeout:g}s: {command}") from None
        if done.returncode != 0:
            err = done.stderr.strip()[-2000:] or done.stdout.strip()[-2000:] or "(no output)"
            raise ProviderError(f"command pool {self.pool}: {what} exited {done.returncode}: {command}: {err}")
        return done.stdout

    def create(self, machine_type: str, machines: builtins.list[MachineRequest]) -> builtins.list[str]:
        started = []
        for m in machines:
            token_file = self._token_file(m.name)
            write_secret(token_file, m.token)
            args = agent_args(self.scheduler, self.pool, m.name, str(token_file), self.labels, self.preemptible)
            values = {"name": m.name, "pool": self.pool, "scheduler": self.scheduler, "machine": machine_type}
            values["token_file"] = str(token_file)
            try:
                self._run("create", values, {"agent_args": " ".join(shlex.quote(a) for a in args)})
            except ProviderError:
                token_file.unlink(missing_ok=True)
                raise
            if "list" not in self.options:
                self._save(self._load() | {m.name: {"machine": machine_type, "created": time.time()}})
            started.append(m.name)
        return started

    def list(self) -> builtins.list[str]:
        if "list" not in self.options:
            return sorted(self._load())
        out = self._run("list", {"pool": self.pool, "scheduler": self.scheduler})
        # Only this pool's names (the autoscaler names machines POOL-xxxx): a job of someone else's that the
        # template happens to print is never taken for a stuck machine and deleted.
        mine = re.compile(re.escape(self.pool) + r"-[0-9a-f]{8}")  # not another pool's "POOL-spot-..." machines
        return sorted({n for n in (line.strip() for line in out.splitlines()) if mine.fullmatch(n)})

    def terminate(self, names: builtins.list[str]) -> None:
        known = None if "list" in self.options else self._load()
        for name in names:
            if known is not None and name not in known:
                continue
            token_file = self._token_file(name)
            self._run(
                "delete", {"name": name, "pool": self.pool, "scheduler": self.scheduler, "token_file": str(token_file)}
            )
            token_file.unlink(missing_ok=True)
            if known is not None:
                known.pop(name, None)
                self._save(known)


# --- the registry ---------------------------------------------------------------------------------------


def _check_ec2(where: str, table: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(table) - EC2_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(EC2_KEYS))}")
    if not isinstance(table.get("ami"), str) or not table["ami"]:
        raise ConfigError(f"{where}.ami is required: the image id (ami-...) of an image with gridlab-agent installed")
    for key in ("region", "subnet", "key_name", "instance_profile", "endpoint_url", "agent_command"):
        if key in table and (not isinstance(table[key], str) or not table[key]):
            raise ConfigError(f"{where}.{key} must be a non-empty string")
    for key in ("security_groups", "agent_args"):
        if key in table and (not isinstance(table[key], list) or not all(isinstance(v, str) for v in table[key])):
            raise ConfigError(f"{where}.{key} must be a list of strings")
    if "tags" in table and (
        not isinstance(table["tags"], Mapping) or not all(isinstance(v, str) for v in table["tags"].values())
    ):
        raise ConfigError(f"{where}.tags must be a table of strings")
    volume = table.get("volume_gb", 1)
    if isinstance(volume, bool) or not isinstance(volume, int) or volume <= 0:
        raise ConfigError(f"{where}.volume_gb must be a positive whole number of GiB")
    return dict(table)


def _check_command(where: str, table: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(table) - COMMAND_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(COMMAND_KEYS))}")
    for key in ("create", "delete"):
        if key not in table:
            raise ConfigError(f"{where}.{key} is required: a shell command template")
    for key, allowed in FIELDS.items():
        if key not in table:
            continue
        if not isinstance(table[key], str) or not table[key].strip():
            raise ConfigError(f"{where}.{key} must be a non-empty string")
        extra = sorted(template_fields(f"{where}.{key}", table[key]) - allowed)
        if extra:
            raise ConfigError(
                f"{where}.{key}: unknown field(s) {', '.join('{' + f + '}' for f in extra)}; "
                f"known: {', '.join('{' + f + '}' for f in sorted(allowed))}"
            )
    timeout = table.get("timeout", 300)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"{where}.timeout must be a positive number of seconds")
    return dict(table)


ProviderFactory = Callable[..., Provider]
PROVIDERS: dict[str, ProviderFactory] = {"local": LocalProvider, "ec2": Ec2Provider, "command": CommandProvider}
# Providers that take options from a `[pools.NAME.PROVIDER]` sub-table: its checker, and whether it is required.
OPTIONS: dict[str, tuple[Callable[[str, Mapping[str, Any]], dict[str, Any]], bool]] = {
    "ec2": (_check_ec2, True),
    "command": (_check_command, True),
}


def check_options(provider: str, where: str, table: Any) -> dict[str, Any]:
    """The checked `[pools.NAME.PROVIDER]` table (`where` names it in errors); {} for a provider without options."""
    if provider not in OPTIONS:
        return {}
    check, required = OPTIONS[provider]
    if table is None:
        if required:
            raise ConfigError(f"{where}: a {provider} pool needs a [{where}] table")
        table = {}
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table")
    return check(where, table)
