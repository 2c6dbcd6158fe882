"""`gridlab-scheduler`: start the central daemon.

    gridlab-scheduler [--config F] [--state-dir D] [--listen HOST:PORT]
                      [--tls-cert F --tls-key F [--tls-client-ca F --agent-listen HOST:PORT]]
                      [--web-listen HOST:PORT]

On first start it writes an admin token and an agent join token (0600 files) into the
state directory and logs where. The bound address is written to `scheduler.addr` there,
which is how tools find a server started on port 0 (and `scheduler.agent_addr`, agent_listen's; and
`scheduler.web_addr`, the web dashboard's, with --web-listen).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from pathlib import Path

import grpc
import structlog

from gridlab.common import logs, tls
from gridlab.common.atomicfile import write_atomic
from gridlab.common.config import ConfigError, SchedulerConfig, load
from gridlab.common.grpcopts import SERVER_OPTIONS
from gridlab.v1 import agent_pb2_grpc, artifacts_pb2_grpc, scheduler_pb2_grpc

from .api import DecodeGuard, SchedulerService
from .artifacts_api import ArtifactsService
from .auth import AuthInterceptor
from .autoscaler import Autoscaler, burst_pools, parse_pools
from .engine import Engine
from .gateway import AgentGatewayService
from .store import Store

log = structlog.get_logger("gridlab.scheduler")
ADDRESS_FILE = "scheduler.addr"
AGENT_ADDRESS_FILE = "scheduler.agent_addr"  # the bound agent_listen address, when there is one
WEB_ADDRESS_FILE = "scheduler.web_addr"  # the dashboard's bound address, with web_listen


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """The port bound at `address` (TLS with `credentials`), 0 if it could not be."""
    try:
        if credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, credentials)
    except RuntimeError:
        return 0


async def serve(config: SchedulerConfig, stop: asyncio.Event | None = None) -> None:
    """Run the scheduler until `stop` is set (or SIGTERM / SIGINT)."""
    # Read first: a bad certificate file stops the start before anything is opened.
    creds, agent_creds = tls.server_credentials(
        config.tls_cert, config.tls_key, config.tls_client_ca, agent_listen=config.agent_listen
    )
    parse_pools(config.pools)  # a bad [pools.NAME] table stops the start too
    config.burst_pools = burst_pools(config)  # autoscaled pools are placed after on-prem ones
    state_dir = Path(config.state_dir).expanduser()
    state_dir.mkdir(parents=True, exist_ok=True)
    store = Store(state_dir / "scheduler.db")
    engine = Engine(store, config)
    engine.bootstrap_tokens(state_dir)
    interceptors: list[grpc.aio.ServerInterceptor] = [AuthInterceptor(engine.lookup_token), DecodeGuard()]
    registry, web_target = None, ""
    if config.web_listen:  # the dashboard: /metrics (RPCs counted from here on), and its channel to this API
        from . import prommetrics, web  # aiohttp and prometheus-client: imported only when it is on (~0.2 s)

        registry, rpc_metrics = prommetrics.make_registry(engine)
        interceptors.insert(0, prommetrics.RpcMetricsInterceptor(rpc_metrics))
        web_target = web.internal_target(state_dir)
    (state_dir / WEB_ADDRESS_FILE).unlink(missing_ok=True)
    server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(SchedulerService(engine), server)
    agent_pb2_grpc.add_AgentGatewayServicer_to_server(AgentGatewayService(engine), server)
    artifacts_pb2_grpc.add_ArtifactsServicer_to_server(ArtifactsService(engine), server)
    binds = [(config.listen, creds)] + ([(config.agent_listen, agent_creds)] if config.agent_listen else [])
    ports = [_bind(server, address, credentials) for address, credentials in binds]
    for (address, _), bound in zip(binds, ports, strict=True):
        if bound == 0:
            store.close()
            hint = " (or are tls_cert and tls_key not a certificate and its key?)" if creds is not None else ""
            raise ConfigError(f"cannot listen on {address}: is the port in use or the host wrong?{hint}")
    if web_target and server.add_insecure_port(web_target) == 0:
        store.close()
        raise ConfigError(f"cannot listen on {web_target} (the web dashboard's channel to the API)")
    port = ports[0]
    await server.start()
    if web_target:
        web.secure_socket(web_target)
    # Long-lived state is built by now: keep the collector from walking it again and again (full collections
    # of a scheduler holding thousands of agents took hundreds of ms), and collect young objects less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    host = config.listen.rsplit(":", 1)[0]
    address = f"{host}:{port}"
    agent_address = ""
    if config.agent_listen:
        agent_address = f"{config.agent_listen.rsplit(':', 1)[0]}:{ports[1]}"
        write_atomic(state_dir / AGENT_ADDRESS_FILE, agent_address + "\n")
    else:
        (state_dir / AGENT_ADDRESS_FILE).unlink(missing_ok=True)
    write_atomic(state_dir / ADDRESS_FILE, address + "\n")
    dashboard = None
    if config.web_listen:
        try:
            dashboard, web_address = await web.serve_web(config, web_target, registry)
        except ConfigError:
            await server.stop(grace=None)
            store.close()
            raise
        write_atomic(state_dir / WEB_ADDRESS_FILE, web_address + "\n")
    security = "mtls for agents" if config.tls_client_ca else "tls" if creds is not None else "plaintext"
    log.info(
        "listening", address=address, agent_address=agent_address or None, security=security, state_dir=str(state_dir)
    )

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    batcher = asyncio.create_task(engine.batcher.run(), name="batcher")
    loops = [
        asyncio.create_task(engine.placement_loop(), name="placement_loop"),
        asyncio.create_task(engine.liveness_loop(), name="liveness_loop"),
    ]
    autoscaler = Autoscaler.from_config(engine, config, agent_address or address, state_dir) if config.pools else None
    if autoscaler is not None:
        loops.append(asyncio.create_task(autoscaler.run(), name="autoscaler"))

    def died(task: asyncio.Task[None]) -> None:
        """None of them ever returns: one that does leaves nothing committed or placed, so stop (a supervisor
        restarts the scheduler; agents reconnect and reconcile) rather than hang every call."""
        if not task.cancelled():
            log.critical("scheduler_task_ended", task=task.get_name(), error=repr(task.exception()))
            stop.set()

    for task in (batcher, *loops):
        task.add_done_callback(died)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        for task in (batcher, *loops):
            task.remove_done_callback(died)
        for task in loops:
            task.cancel()
        for session in list(engine.sessions.values()):
            session.close()
        if autoscaler is not None:
            await asyncio.to_thread(autoscaler.close)  # `local` machines are this scheduler's children
        if dashboard is not None:
            await dashboard.stop()
        await server.stop(grace=1.0)  # calls in flight still get their batch committed
        batcher.cancel()
        store.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gridlab-scheduler", description="gridlab's central scheduler daemon.")
    p.add_argument("--config", help="TOML file (keys: see README 'Scheduler configuration')")
    p.add_argument("--state-dir", help="where the SQLite file and tokens live")
    p.add_argument("--listen", help="HOST:PORT to serve on (port 0 picks a free one)")
    p.add_argument("--agent-listen", help="a second HOST:PORT for agents (required with --tls-client-ca)")
    p.add_argument("--tls-cert", help="PEM certificate chain; with --tls-key the scheduler serves TLS")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", help="PEM CA bundle agents' client certificates must come from (mTLS)")
    p.add_argument("--heartbeat-interval", type=float, help="seconds between agent heartbeats")
    p.add_argument("--heartbeat-timeout", type=float, help="seconds of silence before an agent is lost")
    p.add_argument(
        "--web-listen", help="HOST:PORT of the web dashboard and /metrics (port 0 picks one; off by default)"
    )
    p.add_argument("--log-format", choices=["auto", "json", "console"])
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load(
            SchedulerConfig,
            config_file=args.config,
            env_prefix="GRIDLAB_SCHEDULER_",
            overrides={
                "state_dir": args.state_dir,
                "listen": args.listen,
                "agent_listen": args.agent_listen,
                "tls_cert": args.tls_cert,
                "tls_key": args.tls_key,
                "tls_client_ca": args.tls_client_ca,
                "heartbeat_interval": args.heartbeat_interval,
                "heartbeat_timeout": args.heartbeat_timeout,
                "web_listen": args.web_listen,
                "log_format": args.log_format,
                "log_level": args.log_level,
            },
        )
        if config.heartbeat_interval <= 0 or config.heartbeat_timeout <= config.heartbeat_interval:
            raise ConfigError("heartbeat_timeout must be greater than heartbeat_interval, both positive")
        logs.configure(config.log_format, config.log_level)
        asyncio.run(serve(config))
    except ConfigError as exc:
        print(f"gridlab-scheduler: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
