"""A whole gridlab cluster on this machine: one scheduler and any number of agents, each a
real daemon process on loopback. Used by `make demo`, the benchmarks and the end-to-end
tests; handy for trying gridlab on a laptop.

    with LocalCluster(Path("/tmp/gl")) as cluster:
        cluster.start_scheduler()
        cluster.start_agent("ws1", fake_gpus="2xA100:80")
        run = cluster.client().submit(["python", "train.py"])

With `tls=TLSFiles(...)` the scheduler serves TLS, and with its `client_ca` agents connect
to a port of their own with the certificate `start_agent(..., tls_cert=, tls_key=)` gives.

Daemons are started as `python -m gridlab.scheduler.main` / `gridlab.agent.main`, so this
module imports neither (the client never depends on the daemons' code).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc

from gridlab.client.sdk import Client
from gridlab.common import auth
from gridlab.common.tls import channel_credentials
from gridlab.v1 import scheduler_pb2, scheduler_pb2_grpc, types_pb2


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for a TLS cluster: the CA that signed `cert` (what clients and agents verify
    with), the scheduler's certificate and key, and optionally the CA of agents' certificates."""

    ca: Path
    cert: Path
    key: Path
    client_ca: Path | None = None


class LocalCluster:
    def __init__(
        self,
        root: Path,
        *,
        heartbeat_interval: float = 0.5,
        heartbeat_timeout: float = 5.0,
        python: str = sys.executable,
        tls: TLSFiles | None = None,
        config_file: Path | None = None,
        web: bool = False,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs = self.root / "logs"
        self.logs.mkdir(exist_ok=True)
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.python = python
        self.scheduler_dir = self.root / "scheduler"
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.address = ""
        self.agent_address = ""  # agent_listen's, with tls.client_ca; else agents use `address`
        self.tls = tls
        self.config_file = config_file  # the scheduler's TOML file (e.g. its [pools.NAME] tables), if any
        self.web = web  # serve the web dashboard and /metrics on a free loopback port: see `web_url`
        self.web_address = ""

    # ------------------------------------------------------------ scheduler

    @property
    def admin_token(self) -> str:
        return auth.read_secret(self.scheduler_dir / "admin.token")

    @property
    def agent_token_file(self) -> Path:
        return self.scheduler_dir / "agent.token"

    def start_scheduler(self, port: int = 0, timeout: float = 30.0) -> str:
        """Start the scheduler (again, after a kill: same state dir) and return its address."""
        addr_file = self.scheduler_dir / ("scheduler.web_addr" if self.web else "scheduler.addr")
        addr_file.unlink(missing_ok=True)  # with web, the last of the addresses the scheduler publishes
        self.scheduler_dir.mkdir(parents=True, exist_ok=True)
        tls_args: list[str] = []
        if self.tls is not None:
            tls_args = ["--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key)]
            if self.tls.client_ca is not None:
                # Same port after a restart: agents keep the address they were given.
                agent_port = int(self.agent_address.rsplit(":", 1)[1]) if self.agent_address else 0
                tls_args += ["--tls-client-ca", str(self.tls.client_ca), "--agent-listen", f"127.0.0.1:{agent_port}"]
        log = (self.logs / "scheduler.log").open("ab")
        self.scheduler = subprocess.Popen(
            [
                self.python,
                "-m",
                "gridlab.scheduler.main",
                "--state-dir",
                str(self.scheduler_dir),
                "--listen",
                f"127.0.0.1:{port}",
                "--heartbeat-interval",
                str(self.heartbeat_interval),
                "--heartbeat-timeout",
                str(self.heartbeat_timeout),
                "--log-format",
                "json",
                *tls_args,
                *(["--config", str(self.config_file)] if self.config_file else []),
                *(["--web-listen", "127.0.0.1:0"] if self.web else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not addr_file.exists():
            if self.scheduler.poll() is not None:
                raise RuntimeError(
                    f"scheduler exited with {self.scheduler.returncode}: see {self.logs / 'scheduler.log'}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError("scheduler did not start listening")
            time.sleep(0.02)
        self.address = (self.scheduler_dir / "scheduler.addr").read_text().strip()
        self.web_address = addr_file.read_text().strip() if self.web else ""
        agent_addr_file = self.scheduler_dir / "scheduler.agent_addr"
        self.agent_address = agent_addr_file.read_text().strip() if agent_addr_file.exists() else ""
        return self.address

    def kill_scheduler(self, sig: int = signal.SIGKILL) -> None:
        if self.scheduler is not None:
            self.scheduler.send_signal(sig)
            self.scheduler.wait(timeout=30)
            self.scheduler = None

    @property
    def web_url(self) -> str:
        """The dashboard's base URL (`LocalCluster(web=True)`), e.g. http://127.0.0.1:41234."""
        if not self.web_address:
            raise RuntimeError("the web dashboard is off: LocalCluster(web=True), then start_scheduler()")
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.web_address}"

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    # ------------------------------------------------------------ agents

    def start_agent(
        self,
        name: str,
        *,
        fake_gpus: str | None = None,
        pool: str | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
        timeout: float = 30.0,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start an agent daemon and (by default) wait until the scheduler lists it READY.

        In a TLS cluster it verifies the scheduler with `tls.ca`, presents `tls_cert` and
        `tls_key` when given, and connects to `agent_address` when the scheduler has one."""
        child_env = dict(os.environ)
        child_env.pop("GRIDLAB_FAKE_GPUS", None)
        if fake_gpus is not None:
            child_env["GRIDLAB_FAKE_GPUS"] = fake_gpus
        child_env.setdefault("GRIDLAB_AGENT_RECONNECT_MAX", "0.5")
        child_env.update(env or {})
        args = [
            self.python,
            "-m",
            "gridlab.agent.main",
            "--scheduler",
            self.agent_address or self.address,
            "--token-file",
            str(self.agent_token_file),
            "--name",
            name,
            "--state-dir",
            str(self.root / "agents" / name),
            "--log-format",
            "json",
        ]
        if pool:
            args += ["--pool", pool]
        if self.tls is not None:
            args += ["--tls-ca", str(self.tls.ca)]
        if tls_cert is not None and tls_key is not None:
            args += ["--tls-cert", str(tls_cert), "--tls-key", str(tls_key)]
        log = (self.logs / f"agent-{name}.log").open("ab")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=child_env)
        log.close()
        self.agents[name] = proc
        if wait:
            self.wait_for_agent(name, timeout=timeout, proc=proc)
        return proc

    def wait_for_agent(self, name: str, *, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"agent {name} exited with {proc.returncode}: see {self.logs}/agent-{name}.log")
            try:
                agents = self.list_agents()
            except grpc.RpcError:
                agents = []
            if any(a.name == name and a.state == types_pb2.AGENT_STATE_READY for a in agents):
                return
            time.sleep(0.05)
        raise TimeoutError(f"agent {name} did not become ready")

    def kill_agent(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.agents.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=90)

    def list_agents(self) -> list[types_pb2.Agent]:
        with self._channel() as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            reply = stub.ListAgents(
                scheduler_pb2.ListAgentsRequest(), metadata=auth.metadata(self.admin_token), timeout=5
            )
            return list(reply.agents)

    # ------------------------------------------------------------ lifecycle

    def _channel(self) -> grpc.Channel:
        credentials = None if self.tls is None else channel_credentials(str(self.tls.ca))
        if credentials is None:
            return grpc.insecure_channel(self.address)
        return grpc.secure_channel(self.address, credentials)

    def client(self, token: str | None = None) -> Client:
        """An SDK client for `token` (default: the admin token), with the cluster's CA when TLS is on."""
        return Client(self.address, token or self.admin_token, tls_ca=None if self.tls is None else str(self.tls.ca))

    def close(self) -> None:
        """Stop every daemon: SIGTERM, then SIGKILL after a few seconds."""
        procs = list(self.agents.values()) + ([self.scheduler] if self.scheduler else [])
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 15
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.agents.clear()
        self.scheduler = None

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
