"""Virtualenvs for runs' `requirements`, built once per machine and reused by later runs.

    <root>/<key>.lock     flock'd while one process builds or checks <key>
    <root>/<key>/         the virtualenv; complete only once `.ready` exists in it
    <root>/<key>.failed   the last failed build's error, shared with runs that waited on it

The key hashes the normalised requirements with the interpreter (version, platform and
prefix), so an env is never reused by a Python it was not built for. Envs see the machine's
packages (torch above all, gigabytes that must not be reinstalled per run): venv's
`--system-site-packages` exposes only the *base* interpreter's site-packages, so when the
agent itself runs in a virtualenv a `.pth` file appends the agent's site-packages too, after
the env's own, so the run's requirements win and the agent's copies stay untouched.

`ensure` blocks for the whole build: call it from a worker thread, not the event loop.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import platform
import selectors
import shutil
import site
import subprocess
import sys
import sysconfig
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import structlog

from gridlab.common.requirements import normalize_requirements

_log = structlog.get_logger("gridlab.agent.envcache")

READY = ".ready"
PARENT_PTH = "_gridlab_agent_env.pth"
ERROR_TAIL_LINES = 20  # of pip's stderr, in EnvBuildError's message
MAX_LOG_LINE_BYTES = 16 * 1024  # a longer output line is cut, not buffered without bound
KEY_FORMAT = 1  # bump when the layout of an env changes, so old ones are not reused


class EnvBuildError(RuntimeError):
    """The environment could not be built; the message ends with the tool's error lines.

    A run fails with it, without retries: the same requirements would fail the same way.
    """


class BuildCancelled(EnvBuildError):
    """The run was cancelled during its build: not a failure of the requirements (nothing is recorded)."""


def _interpreter() -> dict[str, str]:
    """What an env is tied to: its base Python and the agent env its .pth file points at."""
    return {
        "version": sys.version,
        "cache_tag": str(sys.implementation.cache_tag),
        "platform": sysconfig.get_platform(),
        "machine": platform.machine(),
        "prefix": sys.prefix,
        "base_prefix": sys.base_prefix,
    }


def _parent_site_dirs() -> list[str]:
    """The agent virtualenv's site-packages, which venv's --system-site-packages misses."""
    if sys.prefix == sys.base_prefix:
        return []
    return [d for d in site.getsitepackages() if os.path.isdir(d)]


class EnvCache:
    """A folder of virtualenvs, one per distinct requirements list (and interpreter).

    Example:
        >>> cache = EnvCache(state_dir / "envs")
        >>> python = cache.ensure(["einops==0.8"], log=print)  # builds, or reuses
        >>> subprocess.run([python, "train.py"])
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def key(self, requirements: Sequence[str]) -> str:
        """The cache key: normalised requirements plus interpreter, e.g. 'py311-3f2a...'.

        The agent's pip_args are not part of it: an env built from one index stays valid.
        Raises ValueError for requirements `normalize_requirements` refuses.
        """
        return self._key(normalize_requirements(requirements))

    def _key(self, lines: list[str]) -> str:
        blob = json.dumps({"format": KEY_FORMAT, "requirements": lines, "python": _interpreter()}, sort_keys=True)
        v = sys.version_info
        return f"py{v.major}{v.minor}-{hashlib.sha256(blob.encode()).hexdigest()[:32]}"

    def ensure(
        self,
        requirements: Sequence[str],
        *,
        log: Callable[[str], None],
        pip_args: Sequence[str] = (),
        stop: threading.Event | None = None,
    ) -> Path:
        """The python executable of an env with `requirements` installed, built if needed.

        Concurrent callers (threads or processes) with the same requirements build once:
        the others wait on the lock and reuse the result, or share its failure rather than
        repeat it. A folder left without `.ready` by a crashed build is removed and rebuilt.
        Every line of venv's and pip's output goes to `log` (the run's build log).

        Args:
            requirements: requirement lines, see `normalize_requirements`.
            log: called with each line of the build log, in this thread.
            pip_args: the agent's own pip options (index, find-links), put before `-r`.
            stop: set it to give up (the attempt was cancelled): waiting for the lock ends and
                venv or pip is killed, with EnvBuildError("cancelled"); nothing is cached.

        Raises:
            ValueError: `requirements` or `pip_args` are refused (the message says why).
            EnvBuildError: the build failed; its message carries pip's error lines. No env
                is left in the cache.
        """
        lines = normalize_requirements(requirements)
        args = _check_pip_args(pip_args)
        key = self._key(lines)
        env = self.root / key
        python = env / "bin" / "python"
        failed = self.root / f"{key}.failed"
        self.root.mkdir(parents=True, exist_ok=True)
        failure_before = _read_text(failed)
        stop = stop or threading.Event()
        with self._locked(key, log, stop):
            if (env / READY).is_file() and python.exists():
                log(f"env: reusing cached environment {env}")
                return python
            failure = _read_text(failed)
            if failure is not None and failure != failure_before:
                log("env: the build this run waited for failed; not repeating it")
                raise EnvBuildError(failure.partition("\n")[2])
            if env.exists():
                log(f"env: removing {env}, left half-built by an earlier build that did not finish")
                shutil.rmtree(env)
            log(f"env: building environment {key} for {len(lines)} requirement(s) in {env}")
            started = time.monotonic()
            try:
                self._build(env, lines, args, log, stop)
            except BaseException as exc:
                shutil.rmtree(env, ignore_errors=True)
                if isinstance(exc, EnvBuildError) and not isinstance(exc, BuildCancelled):  # shared with waiters
                    _write_atomic(failed, f"{uuid.uuid4().hex}\n{exc}")
                    _log.warning("env_build_failed", key=key, error=str(exc).splitlines()[-1:])
                raise
            seconds = time.monotonic() - started
            failed.unlink(missing_ok=True)
            ready = {"requirements": lines, "python": _interpreter(), "built_at": time.time(), "seconds": seconds}
            _write_atomic(env / READY, json.dumps(ready, indent=1) + "\n")
            log(f"env: environment ready in {seconds:.1f}s: {python}")
            _log.info("env_built", key=key, requirements=len(lines), seconds=round(seconds, 2))
            return python

    @contextmanager
    def _locked(self, key: str, log: Callable[[str], None], stop: threading.Event) -> Iterator[None]:
        """Hold an exclusive flock on <key>.lock; its own open file, so threads exclude too.

        The kernel drops the lock when the holder dies, so a crash never wedges the cache.
        The lock file is never deleted (deleting it would let two holders in at once).
        """
        fd = os.open(self.root / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"env: another run is building environment {key}; waiting for it")
                while True:  # polled, so a cancelled run stops waiting
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if stop.wait(0.2):
                            raise BuildCancelled("cancelled while waiting for another build") from None
            yield
        finally:
            os.close(fd)

    def _build(
        self, env: Path, lines: list[str], pip_args: list[str], log: Callable[[str], None], stop: threading.Event
    ) -> None:
        # pip comes from the agent's environment (through the .pth below) or the base
        # interpreter's: bootstrapping a private copy costs seconds per env, so only when neither has one.
        _stream([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(env)], log, "venv", stop)
        python = env / "bin" / "python"
        parents = _parent_site_dirs()
        if parents:
            site_dir = Path(_probe(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
            # addsitedir (not a bare path) so the agent env's own .pth files work too, such
            # as editable installs. The .pth runs after the env's own site-packages is on sys.path.
            body = "".join(f"import site; site.addsitedir({d!r})\n" for d in parents)
            (site_dir / PARENT_PTH).write_text(f"# gridlab: the agent's environment, after this env's own\n{body}")
            log(f"env: the agent's packages are visible after the env's own: {', '.join(parents)}")
        if lines:
            if _probe(python, "import importlib.util as u; print(u.find_spec('pip') is not None)") != "True":
                _stream([str(python), "-m", "ensurepip", "--default-pip"], log, "ensurepip", stop)
            req_file = env / "requirements.txt"
            req_file.write_text("".join(line + "\n" for line in lines))
            cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
            _stream([*cmd, "--progress-bar", "off", *pip_args, "-r", str(req_file)], log, "pip install", stop)
        if importlib.util.find_spec("torch") is not None:
            found = _probe(python, "import importlib.util as u; print(u.find_spec('torch') is not None)")
            if found != "True":
                raise EnvBuildError(f"the machine's torch is not importable in the new environment {env}")


def _check_pip_args(pip_args: Sequence[str]) -> list[str]:
    if isinstance(pip_args, (str, bytes)) or not all(isinstance(a, str) for a in pip_args):
        raise ValueError(f"pip_args must be a list of strings such as ['--no-index'], not {pip_args!r}")
    if any("\n" in a or "\r" in a or "\0" in a for a in pip_args):
        raise ValueError(f"pip_args has a newline or NUL inside an argument: {list(pip_args)!r}")
    return list(pip_args)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _write_atomic(path: Path, text: str) -> None:
    """Write then rename, so a reader (or a crash) never sees half a file."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _probe(python: Path, code: str) -> str:
    """Run a one-liner in the env's python and return its stripped stdout."""
    try:
        done = subprocess.run(
            [str(python), "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvBuildError(f"could not run the new environment's python {python}: {exc}") from exc
    if done.returncode != 0:
        raise EnvBuildError(f"the new environment's python {python} failed:\n{done.stderr.strip()}")
    return done.stdout.strip()


def _stream(cmd: list[str], log: Callable[[str], None], what: str, stop: threading.Event) -> None:
    """Run `cmd`, passing each stdout and stderr line to `log` as it comes.

    A non-zero exit raises EnvBuildError with the tail of stderr (where pip writes its
    ERROR lines), or of stdout when stderr was silent.
    """
    log(f"env: $ {' '.join(cmd)}")
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    except OSError as exc:
        raise EnvBuildError(f"{what} could not start: {exc}") from exc
    out, err = proc.stdout, proc.stderr
    if out is None or err is None:  # pragma: no cover (both are PIPE)
        raise RuntimeError("subprocess pipes missing")
    tails: dict[str, deque[str]] = {"out": deque(maxlen=ERROR_TAIL_LINES), "err": deque(maxlen=ERROR_TAIL_LINES)}
    pending = {"out": bytearray(), "err": bytearray()}

    def emit(name: str, raw: bytes | bytearray) -> None:
        text = bytes(raw[:MAX_LOG_LINE_BYTES]).decode("utf-8", "replace").rstrip("\r")
        log(text)
        if text.strip():
            tails[name].append(text)

    try:
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ, "out")
            sel.register(err, selectors.EVENT_READ, "err")
            while sel.get_map():
                if stop.is_set():
                    raise BuildCancelled(f"{what}: cancelled")  # the finally below kills it
                for ready, _ in sel.select(timeout=0.2):
                    name = str(ready.data)
                    chunk = os.read(ready.fd, 64 * 1024)
                    buf = pending[name]
                    if not chunk:
                        sel.unregister(ready.fileobj)
                        if buf:
                            emit(name, buf)
                            buf.clear()
                        continue
                    buf += chunk
                    while (nl := buf.find(b"\n")) >= 0:
                        emit(name, buf[:nl])
                        del buf[: nl + 1]
                    if len(buf) > MAX_LOG_LINE_BYTES:  # a line without end: pass it on in pieces
                        emit(name, buf)
                        buf.clear()
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
        err.close()
    if code != 0:
        tail = tails["err"] or tails["out"]
        detail = "\n".join(tail) if tail else "(no output)"
        raise EnvBuildError(f"{what} failed (exit code {code}):\n{detail}")
