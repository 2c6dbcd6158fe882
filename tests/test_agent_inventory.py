"""Inventory: the GRIDLAB_FAKE_GPUS parser, the fake path, and NVML failures."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from gridlab.agent.inventory import GIB, InventoryCollector, NvmlGpus, parse_fake_gpus
from gridlab.common.config import ConfigError


def test_parse_mixed_entries() -> None:
    gpus = parse_fake_gpus("2xA100-80GB:80, RTX-3090:24", "box")
    assert [g.model for g in gpus] == ["A100-80GB", "A100-80GB", "RTX-3090"]
    assert [g.index for g in gpus] == [0, 1, 2]
    assert [g.uuid for g in gpus] == ["GPU-fake-box-0", "GPU-fake-box-1", "GPU-fake-box-2"]
    assert gpus[0].memory_total_bytes == 80 * GIB
    assert gpus[2].memory_total_bytes == 24 * GIB
    assert len({g.pci_bus_id for g in gpus}) == 3


def test_parse_count_only_and_defaults() -> None:
    gpus = parse_fake_gpus("4", "a")
    assert len(gpus) == 4
    assert {g.model for g in gpus} == {"FakeGPU"}
    assert {g.memory_total_bytes for g in gpus} == {16 * GIB}
    assert parse_fake_gpus("0", "a") == []
    assert parse_fake_gpus("3 x T4", "a")[2].model == "T4"
    assert parse_fake_gpus("H100:79.5", "a")[0].memory_total_bytes == int(79.5 * GIB)


def test_uuids_are_stable() -> None:
    assert parse_fake_gpus("2xT4", "n") == parse_fake_gpus("2xT4", "n")


@pytest.mark.parametrize("value", ["A100:", "A100:lots", "A100:-1", "A100:0", "2x", ",", "T4,,T4"])
def test_parse_rejects_malformed(value: str) -> None:
    with pytest.raises(ConfigError, match="GRIDLAB_FAKE_GPUS"):
        parse_fake_gpus(value, "a")


def test_collector_fake_path(tmp_path: Any) -> None:
    inv = InventoryCollector(
        agent_name="n1",
        state_dir=tmp_path,
        address="10.0.0.5",
        environ={"GRIDLAB_FAKE_GPUS": "2xA100:40"},
    ).collect()
    assert inv.fake_gpus
    assert inv.address == "10.0.0.5"
    assert [g.uuid for g in inv.gpus] == ["GPU-fake-n1-0", "GPU-fake-n1-1"]
    assert inv.cpus >= 1
    assert inv.memory_bytes > 0
    assert inv.disk_free_bytes > 0
    assert inv.hostname


def test_collector_bad_fake_value_names_variable(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="GRIDLAB_FAKE_GPUS"):
        InventoryCollector(agent_name="n", state_dir=tmp_path, environ={"GRIDLAB_FAKE_GPUS": "x:y"})


def test_collector_address_fallback(tmp_path: Any) -> None:
    inv = InventoryCollector(agent_name="n", state_dir=tmp_path, environ={"GRIDLAB_FAKE_GPUS": "1"})
    assert inv.address  # the hostname's IP or 127.0.0.1, never empty


class _FlakyNvml:
    """A stand-in pynvml where some queries fail, as on consumer cards."""

    NVML_FEATURE_ENABLED = 1
    NVML_TEMPERATURE_GPU = 0
    NVML_NVLINK_MAX_LINKS = 4

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-{h}"

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"Tesla X"

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:
        if h == 1:
            raise RuntimeError("not supported")
        return (9, 0)

    def nvmlDeviceGetPciInfo(self, h: int) -> Any:
        return SimpleNamespace(busId=f"00000000:0{h}:00.0")

    def nvmlDeviceGetNvLinkState(self, h: int, link: int) -> int:
        return 1 if link == 0 else 0

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h: int, link: int) -> Any:
        return SimpleNamespace(busId=f"00000000:0{1 - h}:00.0")

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(total=80 * GIB, used=GIB)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        raise RuntimeError("driver hiccup")

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        return 41

    def nvmlDeviceGetTopologyCommonAncestor(self, a: int, b: int) -> int:
        return 10 if {a, b} <= {0, 1} else 50  # GPUs 0 and 1 share one switch; a third would cross the CPUs

    def nvmlShutdown(self) -> None:
        pass


def test_nvml_one_failing_query_does_not_kill_inventory(tmp_path: Any) -> None:
    inv = InventoryCollector(agent_name="n", state_dir=tmp_path, gpu_source=NvmlGpus(_FlakyNvml())).collect()
    assert not inv.fake_gpus
    g0, g1 = inv.gpus
    assert (g0.uuid, g0.model, g0.compute_capability) == ("GPU-0", "Tesla X", "9.0")
    assert g1.compute_capability == ""
    assert g0.memory_total_bytes == 80 * GIB
    assert g0.memory_used_bytes == GIB
    assert g0.utilization == 0
    assert g0.temperature_c == 41
    assert list(g0.nvlink_peers) == ["GPU-1"]
    assert list(g1.nvlink_peers) == ["GPU-0"]
    assert (list(g0.pcie_switch_peers), list(g1.pcie_switch_peers)) == (["GPU-1"], ["GPU-0"])
