"""Machine providers for autoscaled pools. `ec2` runs boto3's real code path against moto's EC2 server on
loopback: spot requests, tags, user data, list and terminate, and the autoscaler's decisions driving it.
`command` runs real shell templates: substitution, quoting of hostile values, failures, its ledger."""

from __future__ import annotations

import base64
import json
import shlex
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer

from gridlab.client.localcluster import LocalCluster
from gridlab.common.config import ConfigError
from gridlab.scheduler.autoscaler import GIB, Action, Machine, Pool, decide, parse_pools
from gridlab.scheduler.placement import RunRequest
from gridlab.scheduler.providers import (
    PROVIDERS,
    CommandProvider,
    Ec2Provider,
    MachineRequest,
    ProviderError,
    ec2_gpus,
)

PY = sys.executable
TOKEN = "gl_" + "s3cret-token_abcdefghijklmnopqrstuvwxyz0123"
SCHED = "sched.example:7071"


# --- ec2 against moto ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Fake credentials (boto3 signs every call), a fresh moto, and the id of one of its images."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }.items():
        monkeypatch.setenv(key, value)
    requests.post(f"{moto_url}/moto-api/reset", timeout=10).raise_for_status()
    return moto_url


def ec2_client(url: str) -> Any:
    return boto3.client("ec2", region_name="us-east-1", endpoint_url=url)


def ec2_table(url: str, **extra: Any) -> dict[str, Any]:
    ami = ec2_client(url).describe_images()["Images"][0]["ImageId"]
    return {"region": "us-east-1", "endpoint_url": url, "ami": ami, **extra}


def ec2_pool(url: str, name: str = "cloud", **keys: Any) -> Pool:
    table = {"provider": "ec2", "machine": "g5.12xlarge", "max_agents": 3, "idle_seconds": 60, **keys}
    table.setdefault("ec2", ec2_table(url))
    (pool,) = parse_pools({name: table})
    return pool


def provider_for(pool: Pool, tmp_path: Path, scheduler: str = SCHED) -> Any:
    """The provider exactly as Autoscaler.from_config builds it."""
    return PROVIDERS[pool.provider](
        scheduler=scheduler,
        pool=pool.name,
        state_dir=tmp_path / "pools" / pool.name,
        labels=dict(pool.labels),
        options=pool.options,
        preemptible=pool.preemptible,
    )


def instances(url: str, **filters: list[str]) -> list[dict[str, Any]]:
    f = [{"Name": k.replace("_", "-"), "Values": v} for k, v in filters.items()]
    pages = ec2_client(url).describe_instances(Filters=f)["Reservations"]
    return [i for r in pages for i in r["Instances"]]


def test_ec2_spot_instances_are_tagged_and_boot_the_agent_with_a_token_file(aws: str, tmp_path: Path) -> None:
    group = ec2_client(aws).create_security_group(GroupName="gridlab-agents", Description="agents")["GroupId"]
    pool = ec2_pool(
        aws,
        preemptible=True,
        labels={"zone": "a b"},
        ec2=ec2_table(aws, security_groups=[group], tags={"team": "vision"}, agent_args=["--tls-ca", "/etc/ca.pem"]),
    )
    provider = provider_for(pool, tmp_path)
    names = provider.create(pool.machine, [MachineRequest("cloud-a", TOKEN), MachineRequest("cloud-b", TOKEN + "2")])
    assert names == ["cloud-a", "cloud-b"]
    made = instances(aws)
    assert len(made) == 2
    ec2 = ec2_client(aws)
    for inst in made:
        assert inst["InstanceType"] == "g5.12xlarge"
        assert [g["GroupId"] for g in inst["SecurityGroups"]] == [group]
        assert inst.get("InstanceLifecycle") == "spot"
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        name = tags["gridlab:name"]
        assert tags["Name"] == name
        assert tags["gridlab:pool"] == "cloud"
        assert tags["gridlab:scheduler"] == SCHED
        assert tags["team"] == "vision"
        attr = ec2.describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="userData")
        script = base64.b64decode(attr["UserData"]["Value"]).decode()
        token = TOKEN if name == "cloud-a" else TOKEN + "2"
        assert script.startswith("#!/bin/sh\n")
        # the token is data written to a file only root may read, never part of a command
        assert f"cat > /var/lib/gridlab/join.token <<'GRIDLAB_TOKEN'\n{token}\nGRIDLAB_TOKEN\n" in script
        assert "umask 077" in script
        assert "chmod 600 /var/lib/gridlab/join.token" in script
        commands = [line for line in script.splitlines() if "gridlab-agent " in line]
        assert len(commands) == 2  # systemd-run, or nohup without systemd
        for line in commands:
            assert token not in line
            args = shlex.split(line)
            start = args.index("gridlab-agent")
            agent = args[start + 1 :]
            assert agent[: agent.index("--label")] == [
                *("--scheduler", SCHED, "--pool", "cloud", "--name", name),
                *("--token-file", "/var/lib/gridlab/join.token"),
            ]
            assert "zone=a b" in agent
            assert agent[agent.index("--tls-ca") : agent.index("--tls-ca") + 2] == ["--tls-ca", "/etc/ca.pem"]
        assert script.count(token) == 1


def test_ec2_on_demand_pool_is_not_spot(aws: str, tmp_path: Path) -> None:
    pool = ec2_pool(aws, preemptible=False)
    provider = provider_for(pool, tmp_path)
    assert "InstanceMarketOptions" not in provider.run_request(pool.machine, MachineRequest("x", TOKEN))
    provider.create(pool.machine, [MachineRequest("cloud-x", TOKEN)])
    (inst,) = instances(aws)
    assert inst.get("InstanceLifecycle") != "spot"
    spot = provider_for(ec2_pool(aws, preemptible=True), tmp_path)
    market = spot.run_request(pool.machine, MachineRequest("y", TOKEN))["InstanceMarketOptions"]
    assert market == {
        "MarketType": "spot",
        "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
    }


def test_ec2_list_finds_this_pools_live_instances_and_terminate_maps_names_to_ids(aws: str, tmp_path: Path) -> None:
    pool = ec2_pool(aws)
    provider = provider_for(pool, tmp_path)
    other_pool = provider_for(ec2_pool(aws, name="other"), tmp_path)
    other_scheduler = provider_for(pool, tmp_path, scheduler="elsewhere:7070")
    provider.create(pool.machine, [MachineRequest("cloud-1", TOKEN), MachineRequest("cloud-2", TOKEN)])
    other_pool.create(pool.machine, [MachineRequest("other-1", TOKEN)])
    other_scheduler.create(pool.machine, [MachineRequest("cloud-9", TOKEN)])
    assert provider.list() == ["cloud-1", "cloud-2"]
    provider.terminate(["cloud-1", "never-made", "other-1"])
    assert provider.list() == ["cloud-2"]
    assert other_pool.list() == ["other-1"]
    assert other_scheduler.list() == ["cloud-9"]
    (gone,) = instances(aws, tag_key=["gridlab:name"], **{"tag:gridlab:name": ["cloud-1"]})
    assert gone["State"]["Name"] in ("shutting-down", "terminated")
    provider.terminate([])
    provider.terminate(["cloud-1"])  # already going: nothing to do, no error
    assert provider.list() == ["cloud-2"]


def test_ec2_volume_size_goes_to_the_images_root_device(aws: str, tmp_path: Path) -> None:
    pool = ec2_pool(aws, ec2=ec2_table(aws, volume_gb=200))
    provider = provider_for(pool, tmp_path)
    provider.create(pool.machine, [MachineRequest("cloud-" + "x" * 80, TOKEN)])  # a long name: ClientToken fits
    image = ec2_client(aws).describe_images(ImageIds=[pool.options["ami"]])["Images"][0]
    (inst,) = instances(aws)
    assert [b["DeviceName"] for b in inst["BlockDeviceMappings"]] == [image["RootDeviceName"]]
    volume = ec2_client(aws).describe_volumes(VolumeIds=[inst["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]])
    assert volume["Volumes"][0]["Size"] == 200


def test_ec2_create_failure_names_the_machines_and_the_reason(aws: str, tmp_path: Path) -> None:
    pool = ec2_pool(aws, ec2=ec2_table(aws, subnet="subnet-nope"))
    with pytest.raises(ProviderError, match="cloud-1.*subnet"):
        provider_for(pool, tmp_path).create(pool.machine, [MachineRequest("cloud-1", TOKEN)])


def test_ec2_the_autoscalers_decisions_create_and_terminate_instances(aws: str, tmp_path: Path) -> None:
    pool = ec2_pool(aws, preemptible=True)
    assert pool.gpus == (("NVIDIA A10G", 22_000 * 1024**2),) * 4
    provider = provider_for(pool, tmp_path)

    def apply(actions: list[Action]) -> None:
        for action in actions:
            assert action.pool == "cloud"
            provider.terminate(list(action.terminate))
            n = len(provider.list())
            provider.create(pool.machine, [MachineRequest(f"cloud-{n + i}", TOKEN) for i in range(action.create)])

    def machines(now: float, *, idle_since: float | None) -> dict[str, list[Machine]]:
        listed = provider.list()
        return {"cloud": [Machine(n, 0.0, True, False, 4, idle_since) for n in listed]}

    a10g = ("NVIDIA A10G",)
    waiting = [RunRequest(run_id=f"r{i}", gpus=4, cpus=1, gpu_types=a10g) for i in range(2)]
    waiting.append(RunRequest(run_id="h100", gpus=1, cpus=1, gpu_types=("NVIDIA H100 80GB HBM3",)))
    waiting.append(RunRequest(run_id="big", gpus=1, cpus=1, min_gpu_memory_bytes=40 * GIB))
    apply(decide([pool], {}, waiting, now=0))
    assert len(provider.list()) == 2  # one g5.12xlarge per 4-GPU A10G run; nothing for the H100 or 40 GB runs
    assert len(instances(aws, instance_state_name=["pending", "running"])) == 2
    # both joined and busy: nothing changes; then idle past idle_seconds: both go
    busy = {"cloud": [Machine(n, 0.0, True, True, 0, None) for n in provider.list()]}
    assert decide([pool], busy, [], now=30) == []
    assert decide([pool], machines(30, idle_since=30), [], now=60) == []
    apply(decide([pool], machines(100, idle_since=30), [], now=100))
    assert provider.list() == []
    assert instances(aws, instance_state_name=["pending", "running"]) == []


@pytest.mark.slow
def test_a_scheduler_with_an_ec2_pool_starts_instances_for_queued_runs_and_releases_them(
    aws: str, tmp_path: Path
) -> None:
    """The real loop: a run only the ec2 pool could serve starts an instance in moto; moto's instances never run
    an agent, so each is released after boot_seconds; once the run is cancelled the pool goes back to zero."""
    table = ec2_table(aws)
    config = tmp_path / "scheduler.toml"
    config.write_text(
        "[pools.cloud]\n"
        'provider = "ec2"\nmachine = "g5.xlarge"\nmax_agents = 1\nboot_seconds = 2\npreemptible = true\n'
        "[pools.cloud.ec2]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
    )
    with LocalCluster(tmp_path / "c", config_file=config) as cluster:
        cluster.start_scheduler()
        client = cluster.client()
        run = client.submit([PY, "-c", "pass"], gpus=1, gpu_type="NVIDIA A10G")
        seen: set[str] = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(seen) < 2:
            for inst in instances(aws, **{"tag:gridlab:pool": ["cloud"]}):
                seen.add(inst["InstanceId"])
            time.sleep(0.2)
        assert len(seen) >= 2, "an instance that never joined was not replaced after boot_seconds"
        live = instances(aws, instance_state_name=["pending", "running"])
        assert len(live) <= 1  # max_agents
        run.cancel()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and instances(aws, instance_state_name=["pending", "running"]):
            time.sleep(0.2)
        assert instances(aws, instance_state_name=["pending", "running"]) == []


def test_ec2_without_boto3_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ConfigError, match=r"pip install 'gridlab\[aws\]'"):
        Ec2Provider(scheduler=SCHED, pool="cloud", state_dir=tmp_path, options={"ami": "ami-1"})


def test_ec2_instance_types_give_the_pools_gpus() -> None:
    assert ec2_gpus("p5.48xlarge") == (("NVIDIA H100 80GB HBM3", 79_000 * 1024**2),) * 8
    assert ec2_gpus("p4d.24xlarge") == (("NVIDIA A100-SXM4-40GB", 39_000 * 1024**2),) * 8
    assert len(ec2_gpus("p4de.24xlarge") or ()) == 8
    assert [len(ec2_gpus(f"g5.{s}") or ()) for s in ("xlarge", "12xlarge", "48xlarge")] == [1, 4, 8]
    assert (ec2_gpus("g6.xlarge") or ())[0][0] == "NVIDIA L4"
    assert (ec2_gpus("g4dn.xlarge") or ())[0][0] == "Tesla T4"
    assert len(ec2_gpus("p3.16xlarge") or ()) == 8
    assert ec2_gpus("m5.large") is None
    table = {"provider": "ec2", "ec2": {"ami": "ami-1"}}
    (pool,) = parse_pools({"p": {**table, "machine": "m5.large", "gpus": "0"}})
    assert pool.gpus == ()
    (pool,) = parse_pools({"p": {**table, "machine": "x9.huge", "gpus": "2xNVIDIA B200:180"}})
    assert pool.gpus == (("NVIDIA B200", 180 * GIB),) * 2


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"machine": "g5.xlarge"}, r"pools\.p\.ec2\]? table|needs a \[pools\.p\.ec2\]"),
        ({"machine": "g5.xlarge", "ec2": {}}, r"pools\.p\.ec2\.ami is required"),
        ({"machine": "g5.xlarge", "ec2": {"ami": "ami-1", "regoin": "x"}}, r"unknown key\(s\) regoin"),
        ({"machine": "g5.xlarge", "ec2": {"ami": "ami-1", "security_groups": "sg-1"}}, "list of strings"),
        ({"machine": "g5.xlarge", "ec2": {"ami": "ami-1", "tags": {"a": 1}}}, "table of strings"),
        ({"machine": "g5.xlarge", "ec2": {"ami": "ami-1", "volume_gb": 0}}, "volume_gb"),
        ({"machine": "g5.xlarge", "ec2": "ami-1"}, r"pools\.p\.ec2 must be a table"),
        ({"machine": "m5.weird", "ec2": {"ami": "ami-1"}}, "not in gridlab's GPU table"),
        ({"ec2": {"ami": "ami-1"}}, r"machine is required"),
        ({"machine": "g5.xlarge", "gpus": 4, "ec2": {"ami": "ami-1"}}, r"gpus must be a string"),
        ({"machine": "g5.xlarge", "ec2": {"ami": "ami-1"}, "command": {}}, r"pools\.p\.command is for command pools"),
    ],
)
def test_ec2_pool_config_errors(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_pools({"p": {"provider": "ec2", **table}})


# --- command ---------------------------------------------------------------------------------------------

RECORD = """
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
out.mkdir(exist_ok=True)
(out / (sys.argv[2] + ".json")).write_text(json.dumps(sys.argv[2:]))
"""


def command_setup(tmp_path: Path, **extra: Any) -> tuple[dict[str, Any], Path]:
    """create records its arguments in made/NAME.json; delete removes that file."""
    script = tmp_path / "record.py"
    script.write_text(RECORD)
    made = tmp_path / "made"
    q = shlex.quote
    table = {
        "create": f"{q(PY)} {q(str(script))} {q(str(made))} {{name}} {{pool}} {{scheduler}} {{machine}} "
        "{token_file} {agent_args}",
        "delete": f"rm {q(str(made))}/{{name}}.json && echo deleted {{name}} {{token_file}}",
        **extra,
    }
    return table, made


def command_pool(table: dict[str, Any], name: str = "slurm", **keys: Any) -> Pool:
    (pool,) = parse_pools(
        {name: {"provider": "command", "gpus": "4xNVIDIA A100-SXM4-80GB:79", "command": table, **keys}}
    )
    return pool


def test_command_create_substitutes_quoted_values_and_keeps_the_token_in_a_private_file(tmp_path: Path) -> None:
    table, made = command_setup(tmp_path)
    hostile = "p;touch PWNED1;'$(touch PWNED2)`touch PWNED3`"
    pool = command_pool(table, name=hostile, machine="gpu partition", labels={"k": 'v" && touch PWNED4 #'})
    assert pool.gpus == (("NVIDIA A100-SXM4-80GB", 79 * GIB),) * 4
    provider = provider_for(pool, tmp_path, scheduler="h:1 && touch PWNED5")
    name = hostile + "-1"
    assert provider.create(pool.machine, [MachineRequest(name, TOKEN)]) == [name]
    assert not list(tmp_path.rglob("PWNED*"))
    assert not list(Path.cwd().glob("PWNED*"))
    args = json.loads((made / f"{name}.json").read_text())
    token_file = tmp_path / "pools" / hostile / "tokens" / f"{name}.token"
    assert args[:5] == [name, hostile, "h:1 && touch PWNED5", "gpu partition", str(token_file)]
    assert args[5:] == [
        *("--scheduler", "h:1 && touch PWNED5", "--pool", hostile, "--name", name),
        *("--token-file", str(token_file), "--label", 'k=v" && touch PWNED4 #'),
    ]
    assert TOKEN not in json.dumps(args)
    assert token_file.read_text().strip() == TOKEN
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert provider.list() == [name]
    provider.terminate([name])
    assert not (made / f"{name}.json").exists()
    assert not token_file.exists()
    assert provider.list() == []


def test_command_machines_survive_a_new_provider_and_unknown_names_are_ignored(tmp_path: Path) -> None:
    table, made = command_setup(tmp_path)
    pool = command_pool(table)
    first = provider_for(pool, tmp_path)
    first.create("m", [MachineRequest("slurm-1", TOKEN), MachineRequest("slurm-2", TOKEN)])
    ledger = json.loads((tmp_path / "pools" / "slurm" / "machines.json").read_text())
    assert sorted(ledger) == ["slurm-1", "slurm-2"]
    assert ledger["slurm-1"]["machine"] == "m"
    assert TOKEN not in json.dumps(ledger)
    again = provider_for(pool, tmp_path)  # the scheduler restarted
    assert again.list() == ["slurm-1", "slurm-2"]
    again.terminate(["slurm-1", "never-made"])  # no delete is run for a name it never made
    assert sorted(p.name for p in made.iterdir()) == ["slurm-2.json"]
    assert provider_for(pool, tmp_path).list() == ["slurm-2"]


def test_command_failures_raise_with_stderr_and_leave_nothing_behind(tmp_path: Path) -> None:
    table, made = command_setup(tmp_path, create="echo quota exceeded for {name} >&2; exit 3")
    provider = provider_for(command_pool(table), tmp_path)
    with pytest.raises(ProviderError, match=r"create exited 3: .*quota exceeded for slurm-1"):
        provider.create("m", [MachineRequest("slurm-1", TOKEN)])
    assert provider.list() == []
    assert not list((tmp_path / "pools" / "slurm" / "tokens").iterdir())

    table, made = command_setup(tmp_path, delete="echo no such job >&2; false")
    provider = provider_for(command_pool(table), tmp_path)
    provider.create("m", [MachineRequest("slurm-2", TOKEN)])
    with pytest.raises(ProviderError, match="delete exited 1: .*no such job"):
        provider.terminate(["slurm-2"])
    assert provider.list() == ["slurm-2"]  # still held: the next tick tries again

    table, _ = command_setup(tmp_path, create="sleep 5", timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ProviderError, match=r"create took over 0.3s"):
        provider_for(command_pool(table), tmp_path).create("m", [MachineRequest("slurm-3", TOKEN)])
    assert time.monotonic() - started < 4


def test_command_list_template_is_the_truth_when_given(tmp_path: Path) -> None:
    table, made = command_setup(tmp_path)
    # Only names as the autoscaler makes them for this pool (POOL-8 hex digits) are its machines: not another
    # job, not a pool whose name starts the same ("slurm-spot"), whose machines this pool must never delete.
    others = "echo; echo {pool}-0000abcd; echo other-job; echo slurmx-00000001; echo slurm-spot-1234abcd"
    table["list"] = f"ls {shlex.quote(str(made))} | sed -n 's/[.]json$//p'; {others}"
    provider = provider_for(command_pool(table), tmp_path)
    provider.create("m", [MachineRequest("slurm-0000beef", TOKEN)])
    assert not (tmp_path / "pools" / "slurm" / "machines.json").exists()
    assert provider.list() == ["slurm-0000abcd", "slurm-0000beef"]
    provider.terminate(["slurm-0000beef"])
    assert provider.list() == ["slurm-0000abcd"]


def test_command_provider_is_registered_and_built_from_config(tmp_path: Path) -> None:
    table, _ = command_setup(tmp_path)
    provider = provider_for(command_pool(table), tmp_path)
    assert isinstance(provider, CommandProvider)
    assert provider.options["create"] == table["create"]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (None, r"needs a \[pools\.p\.command\] table"),
        ({"create": "x {name}"}, r"pools\.p\.command\.delete is required"),
        ({"create": "x {name}", "delete": "y", "crate": "z"}, r"unknown key\(s\) crate"),
        ({"create": "x {token}", "delete": "y"}, r"unknown field\(s\) \{token\}"),
        ({"create": "x", "delete": "y {machine}"}, r"delete: unknown field\(s\) \{machine\}"),
        ({"create": "x {name.__class__}", "delete": "y"}, "only plain"),
        ({"create": "x {name!r}", "delete": "y"}, "only plain"),
        ({"create": "x {name", "delete": "y"}, "literal brace"),
        ({"create": "", "delete": "y"}, "non-empty string"),
        ({"create": "x", "delete": "y", "timeout": 0}, "timeout"),
    ],
)
def test_command_pool_config_errors(table: dict[str, Any] | None, message: str) -> None:
    pool: dict[str, Any] = {"provider": "command", "gpus": "1"}
    if table is not None:
        pool["command"] = table
    with pytest.raises(ConfigError, match=message):
        parse_pools({"p": pool})


def test_command_pool_needs_gpus_and_local_pools_take_no_options() -> None:
    with pytest.raises(ConfigError, match=r"pools\.p\.gpus is required"):
        parse_pools({"p": {"provider": "command", "command": {"create": "x", "delete": "y"}}})
    with pytest.raises(ConfigError, match=r"pools\.p\.ec2 is for ec2 pools"):
        parse_pools({"p": {"provider": "local", "ec2": {"ami": "a"}}})
    with pytest.raises(ConfigError, match="drop gpus"):
        parse_pools({"p": {"provider": "local", "gpus": "1"}})
    (pool,) = parse_pools({"p": {"provider": "command", "gpus": "2", "command": {"create": "{{x}}", "delete": "y"}}})
    assert pool.options == {"create": "{{x}}", "delete": "y"}
    assert pool.machine == ""
