"""Facts about the machine that decide how fast things run: the CPUs a process may use, and what those CPUs are.

The inference engines and the service size their threads from :func:`available_cpus`; the backend choice is cached
per :func:`cpu_description` (a choice measured on another CPU is not this one's); every benchmark prints it beside
its figures, as timings mean nothing without the machine. Standard library only.
"""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

# The instruction-set flags that change which kernels engines pick (AVX-512, VNNI, bf16, AMX).
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (v2 ``cpu.max`` or v1 CFS)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_cpu_quota() -> float | None:
    """The CPU quota in CPUs (quota / period), or None where there is none."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def cpu_description() -> dict[str, str]:
    """The CPU model, its vector/matrix flags (``avx*`` and ``amx*``) and its core count."""
    model, flags = platform.processor(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model.strip():
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = " ".join(f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx")))
    except OSError:
        pass
    return {"cpu": model, "flags": flags, "cores": str(os.cpu_count())}


def describe_cpu_line() -> str:
    """One line for a benchmark's header: model, cores, and which of the speed-relevant flags it has."""
    info = cpu_description()
    present = set(info["flags"].split())
    marks = ", ".join(flag for flag in SPEED_FLAGS if flag in present) or "none of AVX2/AVX-512/AMX"
    return f"CPU: {info['cpu']} ({info['cores']} cores; {marks}); all flags: {info['flags']}"
