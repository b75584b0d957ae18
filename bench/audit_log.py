"""The apiserver's audit log, read by the operator benchmarks: requests counted by user
agent and verb, and when an object was created on the apiserver's own clock.

One audit event per request (the policy omits the RequestReceived stage); its
``requestReceivedTimestamp`` and ``stageTimestamp`` have microseconds, where the API's
object timestamps have whole seconds.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recovery_phases import parse_time

# The operator's own client and kopf's watch/event client.
OPERATOR_AGENTS: tuple[str, ...] = ("spotrun-operator/", "kopf/")
WRITE_VERBS = frozenset(("create", "update", "patch", "delete", "deletecollection"))
READ_VERBS = frozenset(("get", "list", "watch"))


def offset(log: Path) -> int:
    """Where the audit log ends now (read from there later)."""
    return log.stat().st_size if log.exists() else 0


def files(log: Path, since: float, start: int) -> list[tuple[Path, int]]:
    """(file, where to start) to read for requests since ``since``: the log from
    ``start``; when the apiserver rotated it since (``--audit-log-maxsize``: the log is
    shorter than the offset, or was renamed ``audit-<time>.log``), the rotated files
    written after ``since`` and the new log, whole (the time window picks the requests)."""
    rotated = sorted(
        (p for p in log.parent.glob(f"{log.stem}-*{log.suffix}") if p.stat().st_mtime >= since),
        key=lambda p: p.stat().st_mtime,
    )
    if not rotated and log.stat().st_size >= start:
        return [(log, start)]
    return [*((p, 0) for p in rotated), (log, 0)]


def events(
    log: Path, since: float, until: float, start: int = 0, needles: tuple[str, ...] = ()
) -> Iterator[tuple[float, dict[str, Any]]]:
    """(received, event) of every request received between two wall-clock times; with
    ``needles``, only lines holding one of them are parsed (the log is large)."""
    if not log.exists():
        return
    for path, at in files(log, since, start):
        with path.open("rb") as fh:
            fh.seek(at)
            for raw in fh:
                line = raw.decode("utf-8", "replace")
                if needles and not any(n in line for n in needles):
                    continue
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                t = parse_time(ev.get("requestReceivedTimestamp"))
                if t is not None and since <= t <= until:
                    yield t, ev


def requests(
    log: Path,
    since: float,
    until: float,
    agents: tuple[str, ...] = OPERATOR_AGENTS,
    start: int = 0,
) -> Counter[str]:
    """Requests of the given user agents between two wall-clock times, by
    ``"<verb> <resource>[/<subresource>]"``."""
    counts: Counter[str] = Counter()
    needles = tuple(f'"userAgent":"{a}' for a in agents)
    for _, ev in events(log, since, until, start, needles):
        if not str(ev.get("userAgent", "")).startswith(agents):
            continue
        res = ev.get("objectRef") or {}
        sub = f"/{res['subresource']}" if res.get("subresource") else ""
        counts[f"{ev.get('verb')} {res.get('resource', '?')}{sub}"] += 1
    return counts


def writes(counts: Counter[str]) -> Counter[str]:
    """The write requests of ``counts`` (as :func:`requests` counts them)."""
    return Counter({k: v for k, v in counts.items() if k.split(" ", 1)[0] in WRITE_VERBS})


def split_reads_writes(counts: Counter[str]) -> tuple[int, int]:
    reads = sum(v for k, v in counts.items() if k.split(" ", 1)[0] in READ_VERBS)
    return reads, sum(writes(counts).values())


def created_at(
    log: Path,
    since: float,
    until: float,
    resource: str,
    agents: tuple[str, ...] = OPERATOR_AGENTS,
    start: int = 0,
) -> dict[str, float]:
    """When each ``resource`` object the agents created was stored, by name: the
    ``stageTimestamp`` of its successful create (the apiserver answered 201 at that
    moment; its watchers hear of it after)."""
    out: dict[str, float] = {}
    needles = tuple(f'"userAgent":"{a}' for a in agents)
    for _, ev in events(log, since, until, start, needles):
        ref = ev.get("objectRef") or {}
        code = (ev.get("responseStatus") or {}).get("code")
        if ev.get("verb") != "create" or ref.get("resource") != resource or code != 201:
            continue
        if not str(ev.get("userAgent", "")).startswith(agents):
            continue
        stored = parse_time(ev.get("stageTimestamp"))
        if stored is not None and ref.get("name"):
            out[ref["name"]] = stored
    return out
