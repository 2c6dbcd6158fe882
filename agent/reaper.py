"""No process of an attempt outlives it, wherever it went.

A rank's descendants may leave its process group and session (setsid, a daemonizing
double fork), and once their parent exits they are re-parented: killpg on the rank's
group misses them. So they are found by what they cannot shed unknowingly, the
environment they inherited (GRIDLAB_ATTEMPT_ID and GRIDLAB_NODE_RANK: the nodes of a gang
may share a machine, and one node's end must not sweep another's ranks), killed, and reaped.

The agent makes itself a child subreaper (Linux), so such orphans re-parent to the
agent rather than to init, and their exit is collected here. Reaping is always by pid,
never waitpid(-1): the ranks themselves are reaped by asyncio's child watcher, which
waits for each of its pids and would be robbed of their exit status otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Collection
from pathlib import Path

import psutil
import structlog

log = structlog.get_logger("gridlab.agent.reaper")

PR_SET_CHILD_SUBREAPER = 36
ATTEMPT_ENV = "GRIDLAB_ATTEMPT_ID"
NODE_ENV = "GRIDLAB_NODE_RANK"

# Pids of the ranks asyncio spawned and has not reaped yet: its child watcher owns them.
asyncio_children: set[int] = set()
_subreaper = False


def become_subreaper() -> bool:
    """Make this process a child subreaper (Linux only): orphaned descendants re-parent
    to it instead of to init. True when it is one."""
    global _subreaper
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:
        log.warning("cannot become a child subreaper; orphans of ranks go to init", error=str(exc))
        return False
    _subreaper = True
    return True


def is_subreaper() -> bool:
    return _subreaper


def attempt_processes(attempt_id: str, node_rank: int | None = None) -> list[psutil.Process]:
    """Live processes whose environment says they belong to `attempt_id` (and its node `node_rank`, when
    given); those of other users, unreadable, are not ours anyway."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            env = proc.environ()
            if env.get(ATTEMPT_ENV) == attempt_id and (node_rank is None or env.get(NODE_ENV) == str(node_rank)):
                found.append(proc)
        except (psutil.Error, OSError):  # gone, a zombie, or not ours to read
            continue
    return found


def kill_attempt_processes(
    attempt_id: str, node_rank: int | None = None, *, rounds: int = 10, reap_timeout: float = 2.0
) -> int:
    """SIGKILL every process carrying `attempt_id` (and `node_rank`), again while new ones show up (one may
    fork between the scan and the kill), then reap those that became our children.
    Returns how many were killed."""
    killed: dict[int, psutil.Process] = {}
    for _ in range(rounds):
        found = attempt_processes(attempt_id, node_rank)
        if not found:
            break
        for proc in found:
            with contextlib.suppress(psutil.Error, OSError):
                proc.send_signal(signal.SIGKILL)
                killed.setdefault(proc.pid, proc)
        time.sleep(0.01)
    if killed:
        log.info("killed leftover processes of the attempt", attempt=attempt_id, count=len(killed))
    reap(killed.values(), timeout=reap_timeout)
    reap_orphans()
    return len(killed)


def kill_leftovers(state_dir: Path) -> int:
    """At start: kill what a previous agent on this state directory left running. Its ranks died with it
    (parent-death signal), but a descendant that left their process group outlives them; it still carries
    the id of an attempt whose folder is here. Returns how many were killed."""
    try:
        known = {p.name for p in (Path(state_dir) / "attempts").iterdir()}
    except OSError:
        return 0
    me, killed = os.getpid(), 0
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if proc.environ().get(ATTEMPT_ENV) in known:
                proc.send_signal(signal.SIGKILL)
                killed += 1
    if killed:
        log.warning("killed processes a previous agent left behind", count=killed)
    return killed


def reap(procs: Collection[psutil.Process], timeout: float) -> None:
    """Wait (bounded) for `procs` to exit, collecting the exit of those that are our
    children. One that is the child of another of `procs` is looked at again: when that
    parent dies, it re-parents to us (as a subreaper)."""
    me = os.getpid()
    pending = {p.pid: p for p in procs if p.pid not in asyncio_children}
    deadline = time.monotonic() + timeout
    while pending:
        for pid, proc in list(pending.items()):
            try:
                # is_running() also checks the start time, so a reused pid reads as gone.
                if not proc.is_running() or pid in asyncio_children:
                    del pending[pid]
                    continue
                parent = proc.ppid()
                if parent != me:
                    # Dead, and its parent is not one that is dying too (whose orphan it
                    # would become ours): collecting it is that parent's business.
                    if parent not in pending and proc.status() == psutil.STATUS_ZOMBIE:
                        del pending[pid]
                    continue
                reaped, _ = os.waitpid(pid, os.WNOHANG)
            except (psutil.NoSuchProcess, ChildProcessError):
                reaped = pid  # gone, or collected by someone else
            except psutil.Error:
                continue
            if reaped:
                del pending[pid]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    if pending:
        log.warning("leftover processes not reaped in time", pids=sorted(pending))


def reap_orphans() -> int:
    """Collect the exit of every zombie child that asyncio does not own: orphans that
    re-parented to the agent and ended by themselves. Only as a subreaper (otherwise
    such children could be some other code's, as in tests running the agent in-process)."""
    if not _subreaper:
        return 0
    count = 0
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children():
            if child.pid in asyncio_children:
                continue
            with contextlib.suppress(psutil.Error, ChildProcessError):
                if child.status() == psutil.STATUS_ZOMBIE and os.waitpid(child.pid, os.WNOHANG)[0]:
                    count += 1
    return count
