"""Which machine a number came from: fp32 results differ across CPU models (oneDNN and MKL pick other kernels,
which sum in another order), so every measured number names the CPU model, not only the architecture."""

import platform
from pathlib import Path


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name ("AMD EPYC 7B13", "Intel(R) Xeon(R) ..."); the platform's words where there is no cpuinfo."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names and names[0] else platform.processor() or platform.machine()
