"""What this machine offers: GPUs (NVML, or simulated), CPUs, memory, disk, address.

`GRIDLAB_FAKE_GPUS` swaps only the GPU source; everything after it (the Inventory
message, placement, CUDA_VISIBLE_DEVICES) is the same code as on a real GPU machine, so
heterogeneous clusters can be tested on laptops and CI runners.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import psutil
import structlog

from gridlab.common.config import ConfigError
from gridlab.v1 import types_pb2

log = structlog.get_logger("gridlab.agent.inventory")

FAKE_GPUS_VAR = "GRIDLAB_FAKE_GPUS"
FAKE_DEFAULT_MODEL = "FakeGPU"
FAKE_DEFAULT_MEMORY_GB = 16.0
GIB = 1024**3  # NVML reports an "80GB" card as 80 GiB; fake cards follow suit

_ENTRY = re.compile(r"^(?:(?P<count>\d+)\s*[xX]\s*)?(?P<model>[^:]+?)(?::(?P<mem>[^:]*))?$")
_FORMAT_HELP = (
    "expected comma-separated [N x]MODEL[:MEMORY_GB] entries, e.g. "
    "'2xA100-80GB:80,RTX-3090:24', or a GPU count such as '4'"
)


def parse_fake_gpus(value: str, agent_name: str) -> list[types_pb2.Gpu]:
    """Simulated GPUs from a `GRIDLAB_FAKE_GPUS` value. UUIDs are stable per agent name
    and index (`GPU-fake-<agent>-<index>`), so a restarted agent reports the same GPUs.

    Raises ConfigError naming the variable when the value is malformed.
    """
    gpus: list[types_pb2.Gpu] = []

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{FAKE_GPUS_VAR}={value!r}: {why}; {_FORMAT_HELP}")

    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            raise bad("empty entry")
        if entry.isdigit():
            count, model, mem_gb = int(entry), FAKE_DEFAULT_MODEL, FAKE_DEFAULT_MEMORY_GB
        else:
            m = _ENTRY.match(entry)
            if m is None or not m["model"].strip() or re.fullmatch(r"\d+\s*[xX]", entry):
                raise bad(f"cannot read entry {entry!r}")
            count = int(m["count"]) if m["count"] else 1
            model = m["model"].strip()
            mem_gb = FAKE_DEFAULT_MEMORY_GB
            if m["mem"] is not None:
                try:
                    mem_gb = float(m["mem"])
                except ValueError:
                    raise bad(f"memory {m['mem']!r} in {entry!r} is not a number") from None
                if not mem_gb > 0:
                    raise bad(f"memory in {entry!r} must be positive")
        for _ in range(count):
            index = len(gpus)
            gpus.append(
                types_pb2.Gpu(
                    index=index,
                    uuid=f"GPU-fake-{agent_name}-{index}",
                    model=model,
                    memory_total_bytes=int(mem_gb * GIB),
                    pci_bus_id=f"00000000:{index + 1:02X}:00.0",
                )
            )
    return gpus


class GpuSource(Protocol):
    """Where GPU facts come from; refreshed on every heartbeat."""

    def gpus(self) -> list[types_pb2.Gpu]: ...

    def close(self) -> None: ...


class FakeGpus:
    """GPUs from GRIDLAB_FAKE_GPUS: fixed, idle."""

    def __init__(self, gpus: list[types_pb2.Gpu]) -> None:
        self._gpus = gpus

    def gpus(self) -> list[types_pb2.Gpu]:
        return [_copy(g) for g in self._gpus]

    def close(self) -> None:
        pass


class NoGpus:
    def gpus(self) -> list[types_pb2.Gpu]:
        return []

    def close(self) -> None:
        pass


def _copy(gpu: types_pb2.Gpu) -> types_pb2.Gpu:
    out = types_pb2.Gpu()
    out.CopyFrom(gpu)
    return out


def _query(nvml: Any, function: str, *args: Any) -> Any:
    """One NVML call, None when it fails: one failing query (unsupported on this card,
    a driver hiccup) must not cost the whole inventory."""
    try:
        return getattr(nvml, function)(*args)
    except Exception as exc:  # NVMLError and anything odd alike
        log.debug("nvml query failed", query=function, error=str(exc))
        return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class NvmlGpus:
    """GPUs from NVIDIA's management library. Static facts (uuid, model, topology) are
    read once; memory use, utilization and temperature on every call."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._static: list[types_pb2.Gpu] | None = None

    @classmethod
    def open(cls) -> NvmlGpus | None:
        """None when the library or the driver is missing (a CPU-only machine)."""
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, ...
            log.info("no NVIDIA driver, reporting no GPUs", reason=str(exc))
            return None
        return cls(pynvml)

    def _read_static(self) -> list[types_pb2.Gpu]:
        nv = self._nvml
        out: list[types_pb2.Gpu] = []
        bus_links: list[list[str]] = []
        for i in range(_query(nv, "nvmlDeviceGetCount") or 0):
            h = _query(nv, "nvmlDeviceGetHandleByIndex", i)
            if h is None:
                continue
            cc = _query(nv, "nvmlDeviceGetCudaComputeCapability", h)
            pci = _query(nv, "nvmlDeviceGetPciInfo", h)
            out.append(
                types_pb2.Gpu(
                    index=i,
                    uuid=_text(_query(nv, "nvmlDeviceGetUUID", h)),
                    model=_text(_query(nv, "nvmlDeviceGetName", h)),
                    compute_capability=f"{cc[0]}.{cc[1]}" if cc else "",
                    pci_bus_id=_text(getattr(pci, "busId", "")),
                )
            )
            bus_links.append(self._nvlink_buses(h))
        by_bus = {g.pci_bus_id.lower(): g.uuid for g in out if g.pci_bus_id}
        for gpu, buses in zip(out, bus_links, strict=True):
            peers = {by_bus[b.lower()] for b in buses if b.lower() in by_bus}
            gpu.nvlink_peers.extend(sorted(peers - {gpu.uuid}))
        self._add_switch_peers(out)
        return out

    def _add_switch_peers(self, gpus: list[types_pb2.Gpu]) -> None:
        """Pairs whose closest common PCIe ancestor is a switch (one or several), not a host bridge or the CPU
        interconnect: they talk peer to peer, so a run's GPUs are best taken from one such group."""
        nv = self._nvml
        switch = getattr(nv, "NVML_TOPOLOGY_MULTIPLE", 20)
        handles = [_query(nv, "nvmlDeviceGetHandleByIndex", g.index) for g in gpus]
        for i, j in itertools.combinations(range(len(gpus)), 2):
            if handles[i] is None or handles[j] is None:
                continue
            level = _query(nv, "nvmlDeviceGetTopologyCommonAncestor", handles[i], handles[j])
            if level is not None and level <= switch:
                gpus[i].pcie_switch_peers.append(gpus[j].uuid)
                gpus[j].pcie_switch_peers.append(gpus[i].uuid)

    def _nvlink_buses(self, handle: Any) -> list[str]:
        """PCI bus ids at the far end of this GPU's active NVLinks (best effort)."""
        nv = self._nvml
        buses: list[str] = []
        for link in range(getattr(nv, "NVML_NVLINK_MAX_LINKS", 18)):
            try:
                if nv.nvmlDeviceGetNvLinkState(handle, link) != nv.NVML_FEATURE_ENABLED:
                    continue
                buses.append(_text(nv.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId))
            except Exception:  # no such link, or no NVLink on this card at all
                if link == 0:
                    break
        return buses

    def gpus(self) -> list[types_pb2.Gpu]:
        nv = self._nvml
        if self._static is None:
            self._static = self._read_static()
        out = []
        for static in self._static:
            gpu = _copy(static)
            h = _query(nv, "nvmlDeviceGetHandleByIndex", gpu.index)
            if h is not None:
                mem = _query(nv, "nvmlDeviceGetMemoryInfo", h)
                if mem is not None:
                    gpu.memory_total_bytes = int(mem.total)
                    gpu.memory_used_bytes = int(mem.used)
                util = _query(nv, "nvmlDeviceGetUtilizationRates", h)
                if util is not None:
                    gpu.utilization = float(util.gpu)
                temp = _query(nv, "nvmlDeviceGetTemperature", h, nv.NVML_TEMPERATURE_GPU)
                gpu.temperature_c = float(temp or 0)
            out.append(gpu)
        return out

    def close(self) -> None:
        _query(self._nvml, "nvmlShutdown")


def local_address(hostname: str) -> str:
    """The hostname's IP, which peers use as MASTER_ADDR; 127.0.0.1 when it has none."""
    try:
        return socket.gethostbyname(hostname)
    except OSError:
        return "127.0.0.1"


class InventoryCollector:
    """Builds the Inventory message; the GPU source is chosen once, at start."""

    def __init__(
        self,
        *,
        agent_name: str,
        state_dir: str | Path,
        address: str = "",
        environ: Mapping[str, str] | None = None,
        gpu_source: GpuSource | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        self.state_dir = Path(state_dir)
        self.hostname = socket.gethostname()
        self.address = address or local_address(self.hostname)
        fake = environ.get(FAKE_GPUS_VAR, "").strip()
        self.fake_gpus = gpu_source is None and bool(fake)
        if gpu_source is not None:
            self._source: GpuSource = gpu_source
        elif fake:
            self._source = FakeGpus(parse_fake_gpus(fake, agent_name))
        else:
            self._source = NvmlGpus.open() or NoGpus()

    def collect(self) -> types_pb2.Inventory:
        """A fresh snapshot (blocking: NVML and disk calls; run it in a thread)."""
        try:
            disk_free = psutil.disk_usage(str(self.state_dir)).free
        except OSError:
            disk_free = 0
        return types_pb2.Inventory(
            hostname=self.hostname,
            address=self.address,
            gpus=self._source.gpus(),
            cpus=float(psutil.cpu_count(logical=True) or os.cpu_count() or 1),
            memory_bytes=psutil.virtual_memory().total,
            disk_free_bytes=disk_free,
            fake_gpus=self.fake_gpus,
        )

    def close(self) -> None:
        self._source.close()
