"""Processes seen through /proc: liveness, a process tree, resident memory, CPU time. Used by the embedded server, its
watchdog, the readiness command and the load harnesses."""

import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, TypeVar

from .errors import KitError

T = TypeVar("T")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def descendants(pid: int) -> List[int]:
    """pid and every process below it (the server's python-backend stubs), from /proc."""
    children: Dict[int, List[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def rss_mb(pid: int, tree: bool = True) -> float:
    """Resident memory of a process and (tree) its descendants, MiB."""
    total = 0
    for p in descendants(pid) if tree else [pid]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """User + system CPU time of a process and (tree) its live descendants, seconds."""
    total = 0
    for p in descendants(pid) if tree else [pid]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
    return total / os.sysconf("SC_CLK_TCK")


def cpu_list(text: str) -> List[int]:
    """CPU numbers from a list in taskset's form: "0,1" or "0-3,8" (ValueError for anything else)."""
    cpus: List[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if high < low:
            raise ValueError(f"{part}: a range runs from low to high")
        cpus += range(low, high + 1)
    return cpus


def cpus_text(cpus: List[int]) -> str:
    """cpu_list's inverse: [0, 1, 2, 5] -> "0-2,5"."""
    runs: List[List[int]] = []
    for cpu in sorted(set(cpus)):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def pin_threads(cpus: List[int]) -> None:
    """Every thread of this process onto cpus (sched_setaffinity acts on one thread; processes started later by
    any of them inherit its set)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # the thread ended meanwhile
            pass


def split_cpus(server: Optional[List[int]], client: Optional[List[int]]) -> Tuple[List[int], List[int]]:
    """(server CPUs, client CPUs) among this process's: the server gets all when not given, the client the rest of
    them when not given (all when nothing is left). Pins this process's threads to the server's, so that a server
    started next inherits them; call pin_threads(client) once it runs."""
    every = sorted(os.sched_getaffinity(0))
    for role, cpus in (("server", server), ("client", client)):
        if cpus and not set(cpus) <= set(every):
            raise KitError(f"the {role}'s CPUs {sorted(set(cpus) - set(every))} are not among this process's "
                           f"{every[0]}-{every[-1]} ({len(every)} CPUs)")
    client = client or [c for c in every if c not in (server or [])] or every
    if server:
        pin_threads(server)
    return server or every, client


def cores_during(run: Callable[[], T], server_pid: int) -> Tuple[T, Dict[str, float]]:
    """run(), and the cores the server's process tree and this process (the client) used meanwhile: on a small host
    the two share the cores, and what the client takes the server does not get."""
    start, server_cpu, own_cpu = time.monotonic(), cpu_seconds(server_pid), time.process_time()
    value = run()
    wall = time.monotonic() - start
    return value, {"server": round((cpu_seconds(server_pid) - server_cpu) / wall, 2),
                   "client": round((time.process_time() - own_cpu) / wall, 2)}
