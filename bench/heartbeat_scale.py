"""What do thousands of heartbeating agents cost the scheduler?

A real scheduler process (LocalCluster, heartbeat_interval 1 s, timeout 10 s) and, in this
process, N simulated agents (tests/simagents.py) on their real Connect streams, each sending
Heartbeats (with its inventory and held attempts, as the real agent does) at a random phase,
at the cadence the scheduler sets: its Welcome's interval, then any Cadence message. With the
default `heartbeat_max_rate` (1,000/s) the scheduler stretches 5,000 agents' interval to 5 s
(scheduler/cadence.py, as Nomad does); `--max-rate 0` keeps every agent at one beat per second.
Over a window of `--duration` seconds after every agent is connected:

  scheduler CPU      psutil cpu_times of the scheduler process, before and after, as a
                     fraction of one core
  nobody lost        ListAgents at the end: every agent READY, none LOST or OFFLINE, and no
                     sim agent saw its stream end

Baseline, measured in the same run: the same agents against a trivial AgentGateway servicer
in its own process (answers the Hello with a Welcome at `--interval`, then reads and drops
every message), so the ratio per heartbeat says how much the scheduler adds to the
transport's own cost of the stream messages. `--busy F` first gives a fraction F of the
agents one long-running attempt, so their heartbeats carry an attempt status each.

    python bench/heartbeat_scale.py                          # 5,000 agents, 60 s, cadence scaled
    python bench/heartbeat_scale.py --max-rate 0             # every agent at 1 Hz: 5,000 beats/s
    python bench/heartbeat_scale.py --agents 500 --duration 10    # a smoke run
    python bench/heartbeat_scale.py --profile                # py-spy the scheduler

Goal (issue 6, on a 2-core machine): 5,000 agents heartbeating on under half a core. This
process (the agents) shares the machine's cores; its own CPU is printed beside the
scheduler's, with the latest a heartbeat left (a late timer means this process, not the
scheduler, was the bottleneck).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from sched_throughput import Profiler, cpu_seconds, scheduler_process, summarize_profile  # noqa: E402
from simagents import SimAgents  # noqa: E402

from gridlab.client.localcluster import LocalCluster  # noqa: E402
from gridlab.common import auth  # noqa: E402
from gridlab.common.config import SchedulerConfig  # noqa: E402
from gridlab.common.grpcopts import SERVER_OPTIONS  # noqa: E402
from gridlab.common.timeutil import duration  # noqa: E402
from gridlab.v1 import agent_pb2, agent_pb2_grpc, types_pb2  # noqa: E402

# ---------------------------------------------------------------------------- the baseline's servicer


class NullGateway(agent_pb2_grpc.AgentGatewayServicer):
    """Speaks just enough of the protocol to hold agents: a Welcome per Hello, then drops everything."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.count = 0

    async def Connect(self, request_iterator: Any, context: Any) -> Any:
        self.count += 1
        welcome = agent_pb2.Welcome(
            agent_id=f"agent-{self.count}",
            heartbeat_interval=duration(self.interval),
            heartbeat_timeout=duration(self.timeout),
        )
        await anext(request_iterator, None)
        yield agent_pb2.SchedulerMessage(welcome=welcome)
        async for _ in request_iterator:
            pass


async def null_gateway_main(out: str, interval: float, timeout: float) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    agent_pb2_grpc.add_AgentGatewayServicer_to_server(NullGateway(interval, timeout), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    Path(out).write_text(f"127.0.0.1:{port}\n")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(grace=None)


# ---------------------------------------------------------------------------- one measurement


async def measure(
    args: argparse.Namespace,
    address: str,
    token: str,
    server: psutil.Process,
    seconds: float,
    *,
    before_window: Any = None,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Connect the agents to `address`, let them settle, then measure `server`'s CPU over `seconds`."""
    sim = SimAgents(
        address,
        token,
        args.agents,
        heartbeat_interval=None,  # the server's cadence: its Welcome, then any Cadence message
        heartbeat_inventory=not args.no_inventory,
        run_time=lambda a: math.inf if a.spec.name.startswith("hold") else 0.0,
        streams_per_channel=args.streams_per_channel,
        seed=args.seed,
    )
    me = psutil.Process()
    t0 = time.monotonic()
    await sim.start(timeout=900)
    connect_s = time.monotonic() - t0
    gc.freeze()  # thousands of agents' objects: keep them out of full collections (pauses of 0.1-0.5 s)
    if before_window is not None:
        await before_window(sim)
    await asyncio.sleep(args.warmup)
    profiler = Profiler(server.pid, profile) if profile is not None else None
    if profiler is not None:
        profiler.start()
    sim.heartbeat_lag_max = 0.0
    beats0 = sim.heartbeats_sent
    cpu0, me0, w0 = cpu_seconds(server), cpu_seconds(me), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, me1, w1 = cpu_seconds(server), cpu_seconds(me), time.monotonic()
    beats = sim.heartbeats_sent - beats0
    if profiler is not None:
        profiler.stop()
    return {
        "connect_s": connect_s,
        "wall": w1 - w0,
        "server_cpu": cpu1 - cpu0,
        "sim_cpu": me1 - me0,
        "beats": beats,
        "lag_max": sim.heartbeat_lag_max,
        "stream_ends": sum(len(a.failures) for a in sim.agents),
        "reconnects": sum(max(0, a.connects - 1) for a in sim.agents),
        "held": sum(len(a.held) for a in sim.agents),
        "intervals": sorted(a.interval for a in sim.agents),
        "load": os.getloadavg()[0],
        "sim": sim,
    }


async def hold_runs(cluster: LocalCluster, sim: SimAgents, count: int) -> None:
    """Submit `count` one-GPU runs that never end (their agents report them in every heartbeat)."""
    if count <= 0:
        return
    client = cluster.client()
    t0 = time.monotonic()
    await asyncio.to_thread(lambda: [client.submit(["sleep", "inf"], gpus=1, name=f"hold-{i}") for i in range(count)])
    await sim.wait_assigned(count, timeout=3600)
    print(f"{count} long runs submitted and placed in {time.monotonic() - t0:.1f} s", flush=True)


def agent_states(cluster: LocalCluster) -> Counter[str]:
    return Counter(types_pb2.AgentState.Name(a.state).removeprefix("AGENT_STATE_") for a in cluster.list_agents())


async def baseline(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    addr_file = tmp / "null.addr"
    server = subprocess.Popen(
        [sys.executable, __file__, "--_null-gateway", str(addr_file), "--interval", str(args.interval)]
    )
    try:
        deadline = time.monotonic() + 30
        while not addr_file.exists() or not addr_file.read_text().strip():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the null gateway did not start")
            await asyncio.sleep(0.02)
        address = addr_file.read_text().strip()
        result = await measure(args, address, "unused", psutil.Process(server.pid), args.baseline_duration)
        await result.pop("sim").stop()
        return result
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


async def against_scheduler(
    args: argparse.Namespace, cluster: LocalCluster, profile: Path | None
) -> tuple[dict[str, Any], Counter[str]]:
    os.environ["GRIDLAB_SCHEDULER_HEARTBEAT_MAX_RATE"] = str(args.max_rate)
    cluster.start_scheduler()
    token = auth.read_secret(cluster.agent_token_file)
    busy = int(args.busy * args.agents)
    result = await measure(
        args,
        cluster.address,
        token,
        scheduler_process(cluster),
        args.duration,
        before_window=lambda sim: hold_runs(cluster, sim, busy),
        profile=profile,
    )
    states = await asyncio.to_thread(agent_states, cluster)
    await result.pop("sim").stop()
    return result, states


async def both(args: argparse.Namespace, tmp: Path, profile: Path | None) -> tuple[Any, dict[str, Any], Counter[str]]:
    """The baseline, then the scheduler, on one event loop (grpc.aio wants one loop per process)."""
    base = await baseline(args, tmp) if args.baseline_duration > 0 else None
    if base is not None:
        print(
            f"baseline (null gateway): {base['server_cpu'] / base['wall']:.3f} cores for "
            f"{base['beats'] / base['wall']:.0f} heartbeats/s",
            flush=True,
        )
    with LocalCluster(tmp / "cluster", heartbeat_interval=args.interval, heartbeat_timeout=args.timeout) as cluster:
        r, states = await against_scheduler(args, cluster, profile)
    return base, r, states


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=5000)
    p.add_argument("--duration", type=float, default=60.0, help="seconds measured")
    p.add_argument("--interval", type=float, default=1.0, help="heartbeat interval (the scheduler's)")
    p.add_argument("--timeout", type=float, default=10.0, help="the scheduler's heartbeat timeout")
    p.add_argument(
        "--max-rate",
        type=float,
        default=SchedulerConfig.heartbeat_max_rate,
        help="the scheduler's heartbeat_max_rate (0: never stretch the cadence; every agent beats at --interval)",
    )
    p.add_argument("--warmup", type=float, default=3.0, help="seconds after connecting, before measuring")
    p.add_argument("--no-inventory", action="store_true", help="heartbeats without the inventory (smaller)")
    p.add_argument("--busy", type=float, default=0.0, help="fraction of agents holding one long attempt")
    p.add_argument("--baseline-duration", type=float, default=15.0, help="0: no baseline")
    p.add_argument(
        "--streams-per-channel",
        type=int,
        default=1,
        help="agents per gRPC channel (TCP connection); 1, as real agents, costs the server most",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="record the scheduler with py-spy (adds its own CPU)")
    p.add_argument("--profile-out", default="")
    p.add_argument("--_null-gateway", metavar="ADDR_FILE", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._null_gateway:
        asyncio.run(null_gateway_main(args._null_gateway, args.interval, args.timeout))
        return

    with tempfile.TemporaryDirectory(prefix="gridlab-hb-bench-") as tmp_name:
        tmp = Path(tmp_name)
        profile = None
        if args.profile:
            profile = Path(args.profile_out).resolve() if args.profile_out else tmp / "profile.txt"
        base, r, states = asyncio.run(both(args, tmp, profile))
        wall = r["wall"]
        cores = r["server_cpu"] / wall
        rate = r["beats"] / wall
        print()
        iv = r["intervals"]
        print(
            f"agents {args.agents}, heartbeat_interval {args.interval:g} s (timeout {args.timeout:g} s), "
            f"heartbeat_max_rate {args.max_rate:g}/s: the agents beat every {iv[0]:g} to {iv[-1]:g} s "
            f"(median {iv[len(iv) // 2]:g} s); "
            f"{r['held']} attempts held, inventory in heartbeats: {not args.no_inventory}, measured {wall:.1f} s; "
            f"connected in {r['connect_s']:.1f} s"
        )
        print(f"{'':46} {'value':>10}")
        print(f"{'heartbeats/s sent':46} {rate:10.0f}")
        print(f"{'scheduler CPU, cores (fraction of one)':46} {cores:10.3f}")
        print(f"{'scheduler CPU per heartbeat, us':46} {1e6 * r['server_cpu'] / max(1, r['beats']):10.1f}")
        if base is not None:
            base_cores = base["server_cpu"] / base["wall"]
            base_rate = base["beats"] / base["wall"]
            print(f"{'null gateway CPU, cores (baseline)':46} {base_cores:10.3f}")
            print(f"{'null gateway CPU per heartbeat, us':46} {1e6 * base['server_cpu'] / max(1, base['beats']):10.1f}")
            per = (r["server_cpu"] / max(1, r["beats"])) / (base["server_cpu"] / max(1, base["beats"]))
            print(f"ratio scheduler : null gateway CPU per heartbeat = {per:.2f} (at {base_rate:.0f} heartbeats/s)")
        print(
            f"sim agents' CPU {r['sim_cpu'] / wall:.2f} cores; latest heartbeat {r['lag_max'] * 1000:.0f} ms late; "
            f"streams ended {r['stream_ends']}, reconnects {r['reconnects']}; load average {r['load']:.2f} "
            f"(on {os.cpu_count()} cores)"
        )
        print(f"ListAgents states at the end: {dict(states)}")
        lost = args.agents - states.get("READY", 0)
        print(f"agents wrongly not READY: {lost}")
        print(
            f"goals: under half a core: {'met' if cores < 0.5 else 'NOT met'}; "
            f"no agent lost: {'met' if lost == 0 and r['stream_ends'] == 0 else 'NOT met'}"
        )
        if profile is not None:
            print()
            print("scheduler profile during the window (py-spy, wall time of its Python threads, idle included):")
            print(summarize_profile(profile, per=max(1, r["beats"]), unit="heartbeat"))


if __name__ == "__main__":
    main()
