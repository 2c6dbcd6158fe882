"""How many run lifecycles per second does the scheduler carry, and how soon is a run placed?

A real scheduler process (LocalCluster) and, in this process, N simulated agents with
mixed GPUs speaking the real protocol (tests/simagents.py); a separate client process
submits the runs with raw grpc.aio stubs and the SDK's `build_spec` (as `Client.submit`
builds them), `--concurrency` calls in flight, or paced at `--rate` per second.

  lifecycle          submit -> the scheduler has recorded SUCCEEDED, seen as the sim agent
                     receiving ReleaseAttempt for the run's (every node's) end, which the
                     scheduler sends only after committing it; checked at the end against
                     ListRuns(states=SUCCEEDED)
  submit-to-assign   time the Assignment reached the sim agent - time just before the
                     SubmitRun call (wall clocks of two processes on one machine)

Baseline, measured in the same run: bare gRPC unary round trips per second from the same
kind of client process (same concurrency, same request bytes) against a trivial grpc.aio
servicer in its own process that echoes them. Reported as lifecycles/s, p50 and p99
assign latency, and the ratio lifecycles/s : unary round trips/s.

    python bench/sched_throughput.py                      # 1,000 agents, 20,000 runs, 1% gangs
    python bench/sched_throughput.py --agents 100 --runs 2000    # a smoke run, under a minute
    python bench/sched_throughput.py --rate 500          # open loop: latency at a given load
    python bench/sched_throughput.py --profile           # py-spy the scheduler (pip install py-spy)

Goals (issue 6, on a 2-core machine): >= 1,000 lifecycles/s, p99 assign latency < 100 ms.
Every process here shares the machine's cores: the sim agents and the submitter cost CPU
too (their own CPU time is printed beside the scheduler's).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
import grpc.aio
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from simagents import AttemptRecord, SimAgents  # noqa: E402

from gridlab.client.localcluster import LocalCluster  # noqa: E402
from gridlab.client.sdk import build_spec  # noqa: E402
from gridlab.common import auth  # noqa: E402
from gridlab.common.grpcopts import CLIENT_CHANNEL_OPTIONS, SERVER_OPTIONS  # noqa: E402
from gridlab.v1 import scheduler_pb2, scheduler_pb2_grpc, types_pb2  # noqa: E402

ECHO_METHOD = "/bench.Echo/Echo"


# ---------------------------------------------------------------------------- small helpers


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def main_thread_cpu(proc: psutil.Process) -> float:
    """CPU seconds of the process's main thread (its event loop; the rest is gRPC's own threads)."""
    return next((t.user_time + t.system_time for t in proc.threads() if t.id == proc.pid), 0.0)


def request_for(kind: str, i: int, gang_nodes: int, gang_gpus: int) -> scheduler_pb2.SubmitRunRequest:
    if kind == "gang":
        spec = build_spec(["true"], gpus=gang_gpus, nodes=gang_nodes, name=f"gang-{i}")
    else:
        spec = build_spec(["true"], gpus=1, name=f"run-{i}")
    return scheduler_pb2.SubmitRunRequest(spec=spec)


def kinds(runs: int, gang_every: int) -> list[str]:
    return ["gang" if gang_every and i % gang_every == gang_every - 1 else "single" for i in range(runs)]


# ---------------------------------------------------------------------------- scheduler, profiled or not


class Profiler:
    """`py-spy record` attached to a process for a window: `start()`, then `stop()` writes raw stacks."""

    def __init__(self, pid: int, path: Path, rate: int = 100) -> None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            raise SystemExit("--profile needs py-spy: pip install py-spy (not a gridlab dependency)")
        self.path = path
        self.rate = rate
        # --idle: wall time, so that a blocking call on the event loop's thread (an fsync) shows up too.
        self.command = [spy, "record", "--pid", str(pid), "--nonblocking", "--idle", "--function"]
        self.command += ["-r", str(rate), "-f", "raw", "-o", str(path)]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # py-spy needs a moment to attach
        if self.proc.poll() is not None:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise SystemExit(f"py-spy could not attach: {err.strip()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def scheduler_process(cluster: LocalCluster) -> psutil.Process:
    assert cluster.scheduler is not None
    return psutil.Process(cluster.scheduler.pid)


# Scaffolding every stack of the event loop's thread passes through: left out of the inclusive table.
_SCAFFOLD = ("(<frozen runpy>", "(asyncio/", "(threading.py", "(scheduler/main.py", "(contextlib.py")


def summarize_profile(path: Path, *, per: int, unit: str, rate: int = 100, top: int = 25) -> str:
    """py-spy's raw (collapsed) stacks of the scheduler's main thread (its event loop): the functions with the
    most samples under them (inclusive, `cumulative`) and on top (self), in ms of wall time per `unit`, and
    the share of samples spent waiting in select (the loop idle). Other threads are only counted."""
    if not path.exists():
        return f"(no profile at {path})"
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = idle = others = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        if not frames[0].startswith("_run_module_as_main"):  # an executor or other helper thread
            others += count
            continue
        total += count
        leaf = frames[-1]
        if "select (selectors.py" in leaf or "poll (selectors.py" in leaf:
            idle += count
        for frame in set(frames):
            if not any(mark in frame for mark in _SCAFFOLD):
                inclusive[frame] += count
        own[leaf] += count
    if not total:
        return "(empty profile)"
    rate_ms = 1000.0 / rate

    def row(frame: str, n: int) -> str:
        short = frame if len(frame) < 100 else frame[:97] + "..."
        return f"  {n / total:6.1%} {n * rate_ms / max(1, per):8.3f} ms/{unit}  {short}"

    out = [
        f"main thread: {total} samples ({total * rate_ms / 1000:.1f} s of wall time), "
        f"{idle / total:.1%} of them idle in select; other Python threads: {others} samples (mostly idle)",
        f"top {top} by inclusive (cumulative) samples, event-loop scaffolding left out:",
    ]
    out += [row(f, n) for f, n in inclusive.most_common(top)]
    out.append(f"top {top} by self samples:")
    out += [row(f, n) for f, n in own.most_common(top)]
    return "\n".join(out)


# ---------------------------------------------------------------------------- client side (child process)


async def client_main(args: argparse.Namespace) -> None:
    """The submitting process: SubmitRun (or the echo baseline's method), `concurrency` in flight or paced
    at `rate`; writes [run_id, t_before_call, t_after_reply, kind] rows as JSON."""
    token = auth.read_secret(args.token_file) if args.token_file else ""
    metadata = auth.metadata(token) if token else ()
    channel = grpc.aio.insecure_channel(args.address, options=CLIENT_CHANNEL_OPTIONS)
    if args.mode == "echo":
        call = channel.unary_unary(
            ECHO_METHOD,
            request_serializer=scheduler_pb2.SubmitRunRequest.SerializeToString,
            response_deserializer=scheduler_pb2.SubmitRunRequest.FromString,
        )
    else:
        call = scheduler_pb2_grpc.SchedulerStub(channel).SubmitRun
    plan = kinds(args.runs, args.gang_every)
    requests = [request_for(k, i, args.gang_nodes, args.gang_gpus) for i, k in enumerate(plan)]
    rows: list[list[object]] = [[] for _ in plan]
    errors: Counter[str] = Counter()
    await channel.channel_ready()

    async def one(i: int) -> None:
        t0 = time.time()
        try:
            reply = await call(requests[i], metadata=metadata, timeout=120)
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] += 1
            return
        t1 = time.time()
        run_id = reply.run.id if args.mode == "submit" else str(i)
        rows[i] = [run_id, t0, t1, plan[i]]

    started = time.time()
    if args.rate > 0:
        gate = asyncio.Semaphore(args.concurrency)
        tasks = []

        async def paced(i: int) -> None:
            async with gate:
                await one(i)

        for i in range(len(plan)):
            delay = started + i / args.rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(paced(i)))
        await asyncio.gather(*tasks)
    else:
        counter = iter(range(len(plan)))

        async def worker() -> None:
            for i in counter:
                await one(i)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    finished = time.time()
    await channel.close()
    Path(args.out).write_text(
        json.dumps(
            {
                "rows": [r for r in rows if r],
                "errors": dict(errors),
                "started": started,
                "finished": finished,
                "cpu": time.process_time(),
            }
        )
    )


async def echo_server_main(args: argparse.Namespace) -> None:
    """The baseline's trivial servicer: echoes the request bytes."""

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    server = grpc.aio.server(options=SERVER_OPTIONS)
    handler = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    Path(args.out).write_text(f"127.0.0.1:{port}\n")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(grace=None)


def client_command(
    args: argparse.Namespace,
    mode: str,
    address: str,
    out: Path,
    runs: int,
    token_file: str,
    gang_every: int | None = None,
) -> list[str]:
    if gang_every is None:
        gang_every = args.gang_every if mode == "submit" else 0
    return [
        sys.executable,
        __file__,
        "--_client",
        mode,
        "--_address",
        address,
        "--_out",
        str(out),
        "--_token-file",
        token_file,
        "--runs",
        str(runs),
        "--concurrency",
        str(args.concurrency),
        "--rate",
        str(args.rate if mode == "submit" else 0),
        "--gang-every",
        str(gang_every),
        "--gang-nodes",
        str(args.gang_nodes),
        "--gang-gpus",
        str(args.gang_gpus),
    ]


# ---------------------------------------------------------------------------- the two measurements


def transport_baseline(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    addr_file = tmp / "echo.addr"
    server = subprocess.Popen([sys.executable, __file__, "--_echo-server", "--_out", str(addr_file)])
    try:
        deadline = time.monotonic() + 30
        while not addr_file.exists() or not addr_file.read_text().strip():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the echo server did not start")
            time.sleep(0.02)
        address = addr_file.read_text().strip()
        proc = psutil.Process(server.pid)
        cpu0 = cpu_seconds(proc)
        out = tmp / "echo.json"
        subprocess.run(client_command(args, "echo", address, out, args.baseline_calls, ""), check=True)
        cpu1 = cpu_seconds(proc)
        result = json.loads(out.read_text())
        wall = result["finished"] - result["started"]
        n = len(result["rows"])
        lat = [(r[2] - r[1]) * 1000 for r in result["rows"]]
        return {
            "calls": n,
            "per_s": n / wall,
            "p50_ms": pct(lat, 0.5),
            "p99_ms": pct(lat, 0.99),
            "server_cpu": cpu1 - cpu0,
        }
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


async def wait_released(sim: SimAgents, target: int, client: asyncio.subprocess.Process, stall: float) -> bool:
    """Until the agents have seen `target` releases in all and the client has exited; True if no release
    came for `stall` seconds first."""
    last_progress, last_count = time.monotonic(), -1
    while sim.released < target or client.returncode is None:
        if sim.released != last_count:
            last_progress, last_count = time.monotonic(), sim.released
        elif time.monotonic() - last_progress > stall:
            return True
        await asyncio.sleep(0.05)
    return False


async def drive(
    args: argparse.Namespace, cluster: LocalCluster, sched: psutil.Process, tmp: Path, profile: Path | None
) -> dict:
    token = auth.read_secret(cluster.agent_token_file)
    plan = kinds(args.runs, args.gang_every)
    expected_nodes = sum(args.gang_nodes if k == "gang" else 1 for k in plan)
    first_assign: dict[str, float] = {}
    released_nodes: Counter[str] = Counter()
    done_at: dict[str, float] = {}
    not_succeeded: Counter[str] = Counter()

    def on_assign(record: AttemptRecord) -> None:
        first_assign.setdefault(record.run_id, record.assigned_at)

    def on_release(record: AttemptRecord) -> None:
        if record.state != types_pb2.ATTEMPT_STATE_SUCCEEDED:
            not_succeeded[record.state_name] += 1
        released_nodes[record.attempt_id] += 1
        if released_nodes[record.attempt_id] == record.nodes:
            done_at[record.run_id] = time.time()

    sim = SimAgents(
        cluster.address,
        token,
        args.agents,
        run_time=args.run_time,
        streams_per_channel=args.streams_per_channel,
        seed=args.seed,
    )
    sim.on_assign = on_assign
    sim.on_release = on_release
    me = psutil.Process()
    t0 = time.monotonic()
    await sim.start(timeout=600)
    connect_s = time.monotonic() - t0
    gc.freeze()  # the agents' objects: keep them out of full collections (pauses of 0.1-0.5 s)
    gpus = sum(len(a.gpu_uuids) for a in sim.agents)
    models = Counter(g.model for a in sim.agents for g in a.inventory.gpus)
    print(f"{args.agents} sim agents connected in {connect_s:.1f} s: {gpus} GPUs {dict(models)}", flush=True)
    await asyncio.sleep(1.0)  # let the Hellos' placement passes settle

    admin_token = str(cluster.scheduler_dir / "admin.token")
    if args.warmup_runs > 0:  # first calls warm up both sides (caches, lazy imports): not measured
        target = sim.released + args.warmup_runs
        warm_out = tmp / "warmup.json"
        warm = await asyncio.create_subprocess_exec(
            *client_command(args, "submit", cluster.address, warm_out, args.warmup_runs, admin_token, gang_every=0)
        )
        if await wait_released(sim, target, warm, args.stall_timeout):
            raise SystemExit("the warm-up runs did not all complete")
        await warm.wait()
        for table in (first_assign, done_at, released_nodes, not_succeeded):
            table.clear()

    out = tmp / "submit.json"
    profiler = Profiler(sched.pid, profile) if profile is not None else None
    if profiler is not None:
        profiler.start()
    sched_cpu0, me_cpu0, loop_cpu0 = cpu_seconds(sched), cpu_seconds(me), main_thread_cpu(sched)
    wall0 = time.time()
    target = sim.released + expected_nodes
    client = await asyncio.create_subprocess_exec(
        *client_command(args, "submit", cluster.address, out, args.runs, admin_token)
    )
    stalled = await wait_released(sim, target, client, args.stall_timeout)
    wall1 = max(done_at.values(), default=time.time())
    sched_cpu1, me_cpu1, loop_cpu1 = cpu_seconds(sched), cpu_seconds(me), main_thread_cpu(sched)
    if profiler is not None:
        profiler.stop()
    if client.returncode is None:
        await client.wait()
    submitted = json.loads(out.read_text()) if out.exists() else {"rows": [], "errors": {}, "started": wall0}
    stats = sim.stats()
    overlaps = sim.gpu_overlaps()
    await sim.stop()
    return {
        "submitted": submitted,
        "first_assign": first_assign,
        "done_at": done_at,
        "not_succeeded": dict(not_succeeded),
        "stalled": stalled,
        "sched_cpu": sched_cpu1 - sched_cpu0,
        "loop_cpu": loop_cpu1 - loop_cpu0,
        "sim_cpu": me_cpu1 - me_cpu0,
        "client_cpu": submitted.get("cpu", 0.0),
        "wall": (wall1 - submitted["started"]),
        "stats": stats,
        "overlaps": overlaps,
        "gpus": gpus,
    }


def count_succeeded(cluster: LocalCluster) -> int:
    channel = grpc.insecure_channel(cluster.address)
    stub = scheduler_pb2_grpc.SchedulerStub(channel)
    metadata = auth.metadata(cluster.admin_token)
    n, page = 0, ""
    while True:
        reply = stub.ListRuns(
            scheduler_pb2.ListRunsRequest(states=[types_pb2.RUN_STATE_SUCCEEDED], limit=1000, page_token=page),
            metadata=metadata,
            timeout=120,
        )
        n += len(reply.runs)
        page = reply.next_page_token
        if not page:
            channel.close()
            return n


def report(args: argparse.Namespace, base: dict[str, float], r: dict) -> None:
    rows = r["submitted"]["rows"]
    submit_at = {row[0]: row[1] for row in rows}
    kind_of = {row[0]: row[3] for row in rows}
    acks = [(row[2] - row[1]) * 1000 for row in rows]
    lat = {"single": [], "gang": []}
    for run_id, t in submit_at.items():
        if run_id in r["first_assign"]:
            lat[kind_of[run_id]].append((r["first_assign"][run_id] - t) * 1000)
    done = r["done_at"]
    completed = len(done)
    wall = r["wall"]
    rate = completed / wall if wall > 0 else 0.0
    # Steady state: completions between the 10th and the 90th percentile of completion times.
    times = sorted(done.values())
    steady = float("nan")
    if len(times) >= 20:
        a, b = times[len(times) // 10], times[(len(times) * 9) // 10]
        steady = (len(times) * 8 // 10) / (b - a) if b > a else float("nan")
    sub = r["submitted"]
    submit_rate = len(rows) / max(1e-9, sub.get("finished", sub["started"]) - sub["started"])
    singles = lat["single"]
    print()
    print(
        f"agents {args.agents} ({r['gpus']} GPUs), runs {args.runs} "
        f"({sum(1 for k in kind_of.values() if k == 'gang')} gangs of {args.gang_nodes}x{args.gang_gpus} GPUs), "
        f"run time {args.run_time:g} s, concurrency {args.concurrency}, rate {args.rate or 'max'}"
    )
    print(
        f"submitted {len(rows)} (errors {sub['errors'] or 0}); completed {completed}; "
        f"not SUCCEEDED at release: {r['not_succeeded'] or 0}; stalled: {r['stalled']}"
    )
    print(f"{'':44} {'value':>10}")
    print(f"{'lifecycles/s (first submit -> last end)':44} {rate:10.1f}")
    print(f"{'lifecycles/s (steady: 10%..90% of ends)':44} {steady:10.1f}")
    print(f"{'SubmitRun calls/s (client side)':44} {submit_rate:10.1f}")
    print(f"{'SubmitRun round trip p50 / p99 ms':44} {pct(acks, 0.5):10.1f} / {pct(acks, 0.99):.1f}")
    print(f"{'submit-to-assign p50 ms (single-GPU runs)':44} {pct(singles, 0.5):10.1f}")
    print(f"{'submit-to-assign p99 ms (single-GPU runs)':44} {pct(singles, 0.99):10.1f}")
    print(f"{'submit-to-assign max ms (single-GPU runs)':44} {max(singles, default=float('nan')):10.1f}")
    if lat["gang"]:
        print(f"{'submit-to-assign p50 / max ms (gangs)':44} {pct(lat['gang'], 0.5):10.1f} / {max(lat['gang']):.1f}")
    print(f"{'bare gRPC unary round trips/s (baseline)':44} {base['per_s']:10.1f}")
    print(f"{'  its p50 / p99 ms':44} {base['p50_ms']:10.2f} / {base['p99_ms']:.2f}")
    print(
        f"ratio lifecycles/s : unary round trips/s = {rate / base['per_s']:.3f} "
        f"(steady {steady / base['per_s']:.3f}); SubmitRun/s : unary = {submit_rate / base['per_s']:.3f}"
    )
    cpu = r["sched_cpu"]
    print(
        f"CPU during the run ({wall:.1f} s): scheduler {cpu:.1f} s ({cpu / wall:.2f} cores, "
        f"{1000 * cpu / max(1, completed):.2f} ms per lifecycle; its event loop's thread {r['loop_cpu']:.1f} s, "
        f"gRPC's threads the rest), sim agents {r['sim_cpu']:.1f} s, "
        f"submitter {r['client_cpu']:.1f} s"
    )
    print(f"sim: {r['stats']}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (on {os.cpu_count()} cores)")
    print(f"GPU double-bookings seen by the agents: {len(r['overlaps'])}")
    print(
        f"goals: >= 1000 lifecycles/s: {'met' if rate >= 1000 else 'NOT met'}; "
        f"p99 assign < 100 ms: {'met' if pct(singles, 0.99) < 100 else 'NOT met'}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--runs", type=int, default=20_000)
    p.add_argument("--gang-every", type=int, default=100, help="every Nth run is a gang (0: none); default 1%%")
    p.add_argument("--gang-nodes", type=int, default=2)
    p.add_argument("--gang-gpus", type=int, default=2, help="GPUs per node of a gang")
    p.add_argument("--run-time", type=float, default=0.0, help="seconds each run stays RUNNING")
    p.add_argument("--concurrency", type=int, default=32, help="SubmitRun calls in flight")
    p.add_argument("--rate", type=float, default=0.0, help="submits per second (0: as fast as they complete)")
    p.add_argument("--warmup-runs", type=int, default=100, help="single-GPU runs first, not measured")
    p.add_argument("--baseline-calls", type=int, default=10_000)
    p.add_argument("--heartbeat-interval", type=float, default=5.0)
    p.add_argument("--heartbeat-timeout", type=float, default=30.0)
    p.add_argument("--streams-per-channel", type=int, default=500)
    p.add_argument("--stall-timeout", type=float, default=60.0, help="give up after this long without an end")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="record the scheduler with py-spy (adds its own CPU)")
    p.add_argument("--profile-out", default="", help="keep py-spy's raw stacks here")
    p.add_argument("--no-verify", action="store_true", help="skip counting SUCCEEDED runs with ListRuns")
    p.add_argument("--_client", choices=["submit", "echo"], help=argparse.SUPPRESS)
    p.add_argument("--_echo-server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_address", help=argparse.SUPPRESS)
    p.add_argument("--_out", help=argparse.SUPPRESS)
    p.add_argument("--_token-file", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._echo_server:
        args.out = args._out
        asyncio.run(echo_server_main(args))
        return
    if args._client:
        args.mode, args.address, args.out, args.token_file = args._client, args._address, args._out, args._token_file
        asyncio.run(client_main(args))
        return

    with tempfile.TemporaryDirectory(prefix="gridlab-sched-bench-") as tmp_name:
        tmp = Path(tmp_name)
        base = transport_baseline(args, tmp)
        print(f"transport baseline: {base['per_s']:.0f} unary round trips/s ({int(base['calls'])} calls)", flush=True)
        profile = (
            (Path(args.profile_out).resolve() if args.profile_out else tmp / "profile.txt") if args.profile else None
        )
        with LocalCluster(
            tmp / "cluster", heartbeat_interval=args.heartbeat_interval, heartbeat_timeout=args.heartbeat_timeout
        ) as cluster:
            cluster.start_scheduler()
            result = asyncio.run(drive(args, cluster, scheduler_process(cluster), tmp, profile))
            if not args.no_verify:
                result["verified"] = count_succeeded(cluster)
        report(args, base, result)
        if "verified" in result:
            print(f"ListRuns(states=SUCCEEDED) counts {result['verified']} runs ({args.warmup_runs} of them warm-up)")
        if profile is not None:
            print()
            print("scheduler profile during the run (py-spy, wall time of its Python threads, idle included):")
            print(summarize_profile(profile, per=max(1, len(result["done_at"])), unit="lifecycle"))


if __name__ == "__main__":
    main()
