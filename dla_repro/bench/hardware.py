"""What a benchmark ran on: the device (checked), a readable hardware name, a GPU's peak DRAM bandwidth."""

from __future__ import annotations

import math
import platform
import re
from pathlib import Path
from typing import List, Tuple, Union

import torch

__all__ = ["PEAK_BANDWIDTH_GBPS", "bench_device", "gpu_slug", "hardware_slug", "hardware_string", "peak_bandwidth_gbps"]

#: Peak DRAM bandwidth (GB/s, vendor data sheets), matched in order against
#: ``torch.cuda.get_device_name``; the first pattern that matches wins.
PEAK_BANDWIDTH_GBPS: List[Tuple[str, float, str]] = [
    (r"H100.*PCIe", 2000.0, "H100 PCIe"),
    (r"H100 NVL", 3900.0, "H100 NVL"),
    (r"H100", 3350.0, "H100 SXM"),
    (r"(?<!G)H200", 4800.0, "H200"),
    (r"A100.*SXM4-80GB", 2039.0, "A100 SXM 80GB"),
    (r"A100.*80GB.*PCIe|A100.*PCIE-80GB", 1935.0, "A100 PCIe 80GB"),
    (r"A100", 1555.0, "A100 40GB"),
    (r"L40S", 864.0, "L40S"),
    (r"A10G", 600.0, "A10G"),
    (r"\bL4\b", 300.0, "L4"),
    (r"V100", 900.0, "V100"),
    (r"\bT4\b", 320.0, "T4"),
    (r"RTX 4090", 1008.0, "RTX 4090"),
]


def bench_device(device: Union[str, torch.device], who: str) -> torch.device:
    """``device`` as a ``torch.device``; a clear error when it is CUDA and none is available."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{who}(device='cuda'): no CUDA device is available")
    return device


def hardware_string(device: Union[str, torch.device] = "cpu") -> str:
    """A readable name of the hardware: the GPU's name on CUDA, else the CPU model and thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    return f"{name} ({torch.get_num_threads()} threads)"


def peak_bandwidth_gbps(device_name: str) -> float:
    """The peak DRAM bandwidth (GB/s) of a GPU by its name; NaN when it is not in the table."""
    for pattern, gbps, _ in PEAK_BANDWIDTH_GBPS:
        if re.search(pattern, device_name):
            return gbps
    return math.nan


def hardware_slug(device: Union[str, torch.device] = "cpu") -> str:
    """The short name in a benchmark's file name (``models_<slug>.csv``): ``cpu``, or the GPU's model.

    A GPU of :data:`PEAK_BANDWIDTH_GBPS` gets its label (``NVIDIA H100 80GB HBM3`` ->
    ``h100-sxm``, ``NVIDIA H200`` -> ``h200``); another GPU its name, lower case, words
    joined by ``-``.  All CPUs share ``cpu`` (the CPU model is in each row).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return "cpu"
    return gpu_slug(torch.cuda.get_device_name(device))


def gpu_slug(device_name: str) -> str:
    """:func:`hardware_slug` of a GPU by its name (``torch.cuda.get_device_name``)."""
    label = next((label for pattern, _, label in PEAK_BANDWIDTH_GBPS if re.search(pattern, device_name)), None)
    name = label or re.sub(r"^nvidia\s+", "", device_name, flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"
