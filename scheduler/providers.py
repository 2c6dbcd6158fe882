"""Machine providers for autoscaled pools: create N machines of a type, list them, terminate them.

A created machine runs `gridlab-agent` joined to one pool with a join token made for it alone
(the autoscaler revokes it when the machine goes). `local` starts agent processes on this
machine: the tests and the bursting demo use it. Other providers register in `PROVIDERS`.
"""

from __future__ import annotations

import builtins
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gridlab.common.auth import write_secret


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


@dataclass
class LocalProvider:
    """Agents as processes on this machine: `machine_type` is a GRIDLAB_FAKE_GPUS value ("2xA100:80")."""

    scheduler: str  # the address agents connect to
    pool: str
    state_dir: Path  # per-machine state dirs, token files and logs go under it
    labels: Mapping[str, str] = field(default_factory=dict)
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
            args = [self.python, "-m", "gridlab.agent.main", "--scheduler", self.scheduler, "--pool", self.pool]
            args += ["--name", m.name, "--state-dir", str(home / "state"), "--token-file", str(token_file)]
            args += ["--log-format", "json", "--grace-period", str(self.grace)]
            for key, value in sorted(self.labels.items()):
                args += ["--label", f"{key}={value}"]
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


ProviderFactory = Callable[..., Provider]
PROVIDERS: dict[str, ProviderFactory] = {"local": LocalProvider}
