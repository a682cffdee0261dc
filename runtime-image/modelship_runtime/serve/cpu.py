"""How many CPUs this container may use: the cgroup CPU quota (v2 or v1), else the affinity mask.

onnxruntime sizes its thread pool from the host's core count by default, which oversubscribes a
pod limited to one or two CPUs and turns every inference into a scheduling fight.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU limit in cores, or None when the cgroup sets no quota."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        if quota == "max":
            return None
        try:
            return int(quota) / int(period or "100000")
        except ValueError:
            return None
    for controller in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quota_text = _read(root / controller / "cpu.cfs_quota_us")
        period_text = _read(root / controller / "cpu.cfs_period_us")
        if quota_text is None or period_text is None:
            continue
        try:
            quota_us, period_us = int(quota_text), int(period_text)
        except ValueError:
            return None
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_threads(root: Path = CGROUP_ROOT) -> int:
    """Intra-op threads for serving: the quota rounded up, never above the CPUs we may run on."""
    cpus = available_cpus()
    limit = cgroup_cpu_limit(root)
    if limit is None:
        return max(1, cpus)
    return max(1, min(cpus, math.ceil(limit - 1e-9)))
