"""deploy/: the systemd units pass `systemd-analyze verify`, the container files copy only what
the repository holds and start real console scripts, and the Kubernetes manifests parse, hold
the expected kinds and images, and pass the daemons only flags they accept."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gridlab.common.config import tomllib

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
DAEMONS = ("scheduler", "agent")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def console_scripts() -> dict[str, str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return dict(tomllib.load(f)["project"]["scripts"])


def script(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in this environment ({BIN}): run `make test`")
    return path


def accepted_flags(name: str) -> set[str]:
    """Every --flag that `NAME --help` lists."""
    done = subprocess.run([str(script(name)), "--help"], capture_output=True, text=True, timeout=60, check=True)
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", done.stdout))


# -- systemd ---------------------------------------------------------------------------


def unit_text(daemon: str) -> str:
    return (DEPLOY / "systemd" / f"gridlab-{daemon}.service").read_text()


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key -> values of a unit file, every section together."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.parametrize("daemon", DAEMONS)
def test_unit_passes_systemd_analyze_verify(daemon: str, tmp_path: Path) -> None:
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd): cannot verify the units")
    # verify insists that ExecStart's binary exists: point it at this environment's script.
    real = script(f"gridlab-{daemon}")
    text = unit_text(daemon)
    assert f"ExecStart=/usr/local/bin/gridlab-{daemon} " in text
    unit = tmp_path / f"gridlab-{daemon}.service"
    unit.write_text(text.replace(f"/usr/local/bin/gridlab-{daemon}", str(real)))
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120
    )
    # Unknown keys and bad values are only warnings (exit 0): any output at all is a failure.
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (done.stdout + done.stderr).strip()


@pytest.mark.parametrize("daemon", DAEMONS)
def test_unit_is_hardened_and_keeps_secrets_out(daemon: str) -> None:
    text = unit_text(daemon)
    s = unit_settings(text)
    assert s["User"] == ["gridlab"]
    assert s["StateDirectory"] == [f"gridlab/{daemon}"]
    assert s["Restart"] == ["on-failure"]
    assert s["NoNewPrivileges"] == ["yes"]
    assert s["ProtectSystem"] == ["strict"]
    assert any(v.lstrip("-") == f"/etc/gridlab/{daemon}.env" for v in s["EnvironmentFile"])
    assert not re.search(r"(?im)^\s*Environment\s*=.*TOKEN", text), "a token inline in the unit"
    exec_start = s["ExecStart"][0].split()
    flags = {a for a in exec_start[1:] if a.startswith("--")}
    assert flags <= accepted_flags(f"gridlab-{daemon}")
    assert exec_start[exec_start.index("--state-dir") + 1] == f"/var/lib/gridlab/{daemon}"


def test_agent_unit_lets_the_agent_stop_its_ranks() -> None:
    """SIGTERM to the agent alone (its ranks live in sessions of their own, and the agent stops
    them), and systemd's SIGKILL only after the grace period plus checkpoint upload and drain."""
    s = unit_settings(unit_text("agent"))
    assert s["KillMode"] == ["mixed"]
    from gridlab.agent.daemon import FINAL_FLUSH_TIMEOUT, SHUTDOWN_DRAIN_TIMEOUT
    from gridlab.common.config import AgentConfig

    needed = AgentConfig().grace_period + SHUTDOWN_DRAIN_TIMEOUT + 3 * FINAL_FLUSH_TIMEOUT
    assert float(s["TimeoutStopSec"][0]) > needed
    assert "3" in s["RestartPreventExitStatus"][0].split()  # a refused token: restarting cannot help


# -- container files ---------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        pending += " " + line.removesuffix("\\") if pending else line.removesuffix("\\")
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    assert not pending, f"{path}: a continuation line runs off the end"
    return out


@pytest.mark.parametrize("daemon", DAEMONS)
def test_containerfile_copies_what_exists_and_starts_a_console_script(daemon: str) -> None:
    path = DEPLOY / "container" / f"{daemon}.Containerfile"
    steps = instructions(path)
    assert steps[0] == ("FROM", "python:3.11-slim")
    copies = [rest.split() for word, rest in steps if word in ("COPY", "ADD")]
    assert copies
    for args in copies:
        assert not any(a.startswith("--from") for a in args)
        for source in args[:-1]:
            assert (ROOT / source).exists(), f"{path.name}: COPY {source}: not in the repository"
    # Every package folder pyproject maps must be copied, or the install misses modules.
    with (ROOT / "pyproject.toml").open("rb") as f:
        folders = {d.split("/")[0] for d in tomllib.load(f)["tool"]["setuptools"]["package-dir"].values()}
    copied = {s.rstrip("/").split("/")[0] for args in copies for s in args[:-1]}
    assert folders <= copied, folders - copied
    assert {"pyproject.toml", "constraints.txt", "README.md"} <= copied
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert "-c constraints.txt" in runs
    assert "pip install" in runs
    users = [rest for word, rest in steps if word == "USER"]
    assert users
    assert users[-1] not in ("root", "0")
    assert any(word == "VOLUME" and f"/var/lib/gridlab/{daemon}" in rest for word, rest in steps)
    (entry,) = [json.loads(rest) for word, rest in steps if word == "ENTRYPOINT"]
    assert entry == [f"gridlab-{daemon}"]
    assert entry[0] in console_scripts()
    cmd = [json.loads(rest) for word, rest in steps if word == "CMD"]
    flags = {a for args in cmd for a in args if a.startswith("--")}
    assert flags <= accepted_flags(entry[0])
    if daemon == "scheduler":
        assert any(word == "EXPOSE" and "7070" in rest.split() for word, rest in steps)


# -- Kubernetes --------------------------------------------------------------------------


def load_yaml(path: Path) -> list[dict[str, Any]]:
    """The documents of a YAML file: with PyYAML when this environment has it (it is not a
    dependency), else through a system python3 that has it, else skip."""
    try:
        import yaml  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        pass
    else:
        return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for python in ("/usr/bin/python3", shutil.which("python3")):
        if python and Path(python).exists():
            code = "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))"
            done = subprocess.run([python, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
            if done.returncode == 0:
                return list(json.loads(done.stdout))
            if "No module named 'yaml'" not in done.stderr:
                pytest.fail(f"{path.name} is not valid YAML: {done.stderr}")
    pytest.skip("PyYAML is not importable here (it is not a gridlab dependency): cannot parse the manifests")


def manifest(name: str) -> dict[str, dict[str, Any]]:
    docs = load_yaml(DEPLOY / "k8s" / name)
    return {d["kind"]: d for d in docs}


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def commented_flags(name: str) -> set[str]:
    """Flags in the manifest's argument lists, the commented-out (TLS) ones included."""
    text = (DEPLOY / "k8s" / name).read_text()
    return set(re.findall(r"(?m)^\s*#?\s*-\s+(--[a-z][a-z-]*)\s*$", text))


def test_scheduler_statefulset() -> None:
    docs = manifest("scheduler-statefulset.yaml")
    assert set(docs) == {"StatefulSet", "Service"}
    sts = docs["StatefulSet"]
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["serviceName"] == docs["Service"]["metadata"]["name"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    (main,) = containers(sts)
    assert main["image"].startswith("gridlab-scheduler:")
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/var/lib/gridlab/scheduler"
    args = main["args"]
    assert args[args.index("--state-dir") + 1] == "/var/lib/gridlab/scheduler"
    secrets = {v["secret"]["secretName"] for v in sts["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    assert "gridlab-scheduler-tls" in secrets
    ports = {p["containerPort"] for p in main["ports"]}
    assert {p["port"] for p in docs["Service"]["spec"]["ports"]} <= ports
    flags = {a for a in args if a.startswith("--")} | commented_flags("scheduler-statefulset.yaml")
    assert flags <= accepted_flags("gridlab-scheduler"), flags - accepted_flags("gridlab-scheduler")


def test_agent_daemonset() -> None:
    docs = manifest("agent-daemonset.yaml")
    assert set(docs) == {"DaemonSet"}
    ds = docs["DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is False
    assert pod["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert all(c["image"].startswith("gridlab-agent:") for c in containers(ds))
    main = pod["containers"][0]
    gpu = pod.get("runtimeClassName") == "nvidia" or "nvidia.com/gpu" in main.get("resources", {}).get("limits", {})
    assert gpu
    env = {e["name"]: e for e in main["env"]}
    assert env["GRIDLAB_AGENT_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "gridlab-agent-token"
    assert "value" not in env["GRIDLAB_AGENT_TOKEN"]
    args = main["args"]
    assert args[args.index("--name") + 1] == "$(NODE_NAME)"
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # The pod must outlive the agent's own stop: the grace period, then uploads and drains.
    assert pod["terminationGracePeriodSeconds"] > 60
    flags = {a for a in args if a.startswith("--")} | commented_flags("agent-daemonset.yaml")
    assert flags <= accepted_flags("gridlab-agent"), flags - accepted_flags("gridlab-agent")
