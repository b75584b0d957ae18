"""Processes and the machine during a benchmark: a process's RSS, peak RSS and CPU seconds
(``/proc``), the control plane's processes by name, the machine's memory, and a sampler
that follows them all through a run. Used by ``operator_scale.py``."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def proc_stats(pid: int) -> tuple[int, int, float]:
    """(RSS, peak RSS = VmHWM, CPU seconds user+system) of a live process, bytes."""
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
        elif line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, hwm, (int(fields[11]) + int(fields[12])) / ticks


def _comm(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def find_pids(names: Iterable[str]) -> dict[str, int]:
    """The pid of each named process (``/proc/<pid>/comm``), where one runs (read only)."""
    want = set(names)
    out: dict[str, int] = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit() and (c := _comm(pid)) in want and c not in out:
            out[c] = int(pid)
    return out


def mem_used_bytes() -> int:
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        info[key] = int(rest.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"]


def machine() -> dict[str, Any]:
    total = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
    return {"cpus": os.cpu_count(), "memory_gib": round(total / 2**30, 1)}


class Sampler:
    """Samples, every ``period`` seconds, the operator's RSS and CPU, the control plane's
    processes, the machine's memory and load, and this process."""

    CONTROL_PLANE = (
        "kube-apiserver",
        "etcd",
        "kwok-controller",
        "kube-controller",
        "kube-scheduler",
        "training-operat",
    )

    def __init__(self, period: float = 0.5) -> None:
        self.period = period
        self.proc: subprocess.Popen[bytes] | None = None
        self.op_rss = self.op_peak = 0
        self.op_cpu = 0.0
        self.op_rss_at: dict[str, float] = {}
        self.peaks: dict[str, int] = {}
        self.cpu_start: dict[str, float] = {}
        self.cpu_end: dict[str, float] = {}
        self.mem_peak = 0
        self.load_peak = 0.0
        self.stop = threading.Event()
        self.pids = find_pids(self.CONTROL_PLANE)
        self.pids["bench"] = os.getpid()
        for name, pid in self.pids.items():
            try:
                self.cpu_start[name] = proc_stats(pid)[2]
            except OSError:
                continue

    def start(self) -> None:
        threading.Thread(target=self._loop, daemon=True, name="sampler").start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.period)

    def sample(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                rss, hwm, cpu = proc_stats(self.proc.pid)
                self.op_rss, self.op_peak, self.op_cpu = rss, max(self.op_peak, hwm), cpu
            except OSError:
                pass
        for name, pid in self.pids.items():
            try:
                _, hwm, cpu = proc_stats(pid)
            except OSError:
                continue
            self.peaks[name] = max(self.peaks.get(name, 0), hwm)
            self.cpu_end[name] = cpu
        self.mem_peak = max(self.mem_peak, mem_used_bytes())
        self.load_peak = max(self.load_peak, os.getloadavg()[0])

    def mark(self, label: str) -> None:
        """Remember the operator's RSS now (after cold start, after the storm...)."""
        self.sample()
        self.op_rss_at[label] = round(self.op_rss / 2**20, 1)

    def report(self) -> dict[str, Any]:
        return {
            "operator_peak_rss_mib": round(self.op_peak / 2**20, 1),
            "operator_rss_mib_at": self.op_rss_at,
            "operator_cpu_seconds": round(self.op_cpu, 2),
            "processes_peak_rss_mib": {k: round(v / 2**20, 1) for k, v in self.peaks.items()},
            "processes_cpu_seconds": {
                k: round(self.cpu_end[k] - self.cpu_start.get(k, 0.0), 1) for k in self.cpu_end
            },
            "machine_memory_used_peak_gib": round(self.mem_peak / 2**30, 2),
            "loadavg_1m_peak": round(self.load_peak, 2),
        }
