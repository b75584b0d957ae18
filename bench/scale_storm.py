"""The scale benchmark's measurements on spotrun (``operator_scale.py``): the cold start of
every TrainingRun, and the storms of interruptions with the ASG's replacement nodes, each
recovery cut into phases (``recovery_phases``)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import audit_log
import operator_metrics as om
import recovery_phases as rp
from scale_cluster import ScaleCluster, say
from scale_objects import GROUP, NS, VERSION, ZONE_LABEL, ZONES, PeerJob, bench_node, run_manifest
from scale_report import api_table, apiserver_clients, rates

from spotrun_api.naming import job_name
from spotrun_dev import inject, paths


# mypy names bench's files by their folder (``bench.scale_cluster``), so it cannot resolve a
# sibling's plain import and sees the base class as Any; at run time it is ScaleCluster.
class Bench(ScaleCluster):  # type: ignore[misc]
    """The benchmark's steps on spotrun's TrainingRuns; the peers' are in ``scale_peers``."""

    # 1. cold start
    def create_runs(self) -> list[str]:
        a = self.args
        names = [(f"s-{i:04d}", a.run_size) for i in range(a.runs)]
        names += [(f"b-{i:03d}", a.big_size) for i in range(a.big_runs)]
        with self.obs.lock:
            self.obs.sizes.update(dict(names))
        t0 = time.time()

        def create(nm: tuple[str, int]) -> None:
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, NS, "trainingruns", run_manifest(*nm)
            )

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, names))
        say(f"{len(names)} TrainingRuns created in {time.time() - t0:.1f}s")
        return [n for n, _ in names]

    def cold_start(self, runs: list[str]) -> dict[str, Any]:
        self.start_operator()
        t0 = self.obs.t_op_start or time.time()

        def all_running() -> bool:
            with self.obs.lock:
                return len(self.obs.first_running) >= len(runs)

        self.wait("every first attempt Running", all_running)
        with self.obs.lock:
            created = sorted(self.obs.first_created.values())
            running = sorted(self.obs.first_running.values())
            first = self.obs.t_first_decision
        self.sampler.mark("after_cold_start")
        out = {
            "runs": len(runs),
            "operator_start_to_first_decision_s": round(first - t0, 3) if first else None,
            "operator_start_to_all_first_attempts_created_s": round(created[-1] - t0, 3)
            if len(created) >= len(runs)
            else None,
            "operator_start_to_all_first_attempts_running_s": round(running[-1] - t0, 3)
            if len(running) >= len(runs)
            else None,
            "first_attempts_created": len(created),
            "first_attempts_running": len(running),
        }
        say(f"cold start: {json.dumps(out)}")
        return out

    # 2. the storm
    def pick_victims(
        self, runs: list[str], count: int, signals: tuple[str, ...], group: str
    ) -> list[tuple[str, str, str]]:
        """(run, node, signal): one node each of ``count`` runs not interrupted yet, the
        signals in turn; only nodes of this bench."""
        for n in self._list_nodes().items:
            self.zone_of[n.metadata.name] = n.metadata.labels.get(ZONE_LABEL, "")
        own = set(self.zone_of)
        with self.obs.lock:
            fresh = [r for r in runs if r not in self.obs.recs]
        chosen = self.rng.sample(fresh, min(count, len(fresh)))
        out: list[tuple[str, str, str]] = []
        with self.obs.lock:
            for run in chosen:
                pods = self.obs.pods_by_job.get(f"{run}-a1") or {}
                nodes = sorted(p["node"] for p in pods.values() if p["node"] in own)
                if not nodes:
                    continue
                sig = signals[len(out) % len(signals)]
                node = self.rng.choice(nodes)
                out.append((run, node, sig))
                rec = rp.Recovery(run=run, size=self.obs.sizes[run], node=node, group=group)
                rec.old_pods = set(pods)
                self.obs.recs[run] = rec
                self.obs.victim_nodes[node] = run
        return out

    def storm(self, victims: list[tuple[str, str, str]], spread: float) -> tuple[float, float]:
        """Interrupt each victim in turn, paced over ``spread`` seconds (0: all at once)."""
        gap = spread / max(1, len(victims))
        workers: list[threading.Thread] = []
        t_start = time.time()
        for run, node, sig in victims:
            th = threading.Thread(target=self._hit, args=(run, node, sig), daemon=True)
            th.start()
            workers.append(th)
            if gap:
                time.sleep(gap)  # the storm's pacing, not a wait for a condition
        t_last = time.time()
        for th in workers:
            th.join(self.args.timeout)
        say(f"{len(victims)} interruptions in {t_last - t_start:.1f}s")
        return t_start, t_last

    def interrupt(self, node: str, sig: str, on_start: Callable[[], None]) -> None:
        """One interruption, then the ASG's replacement instance in the same zone.
        ``on_start`` stamps the signal: just before the plan's first write, after the
        injector's own reads (on a loaded apiserver they took most of a second)."""
        zone = (self.core.read_node(node).metadata.labels or {}).get(
            "topology.kubernetes.io/zone", ZONES[0]
        )
        try:
            inject.interrupt(self.core, node, sig, drain_timeout=300, on_start=on_start)
        except Exception as exc:
            with self.fail_lock:
                self.failures.append(f"{sig} on {node}: {exc!r}"[:300])
        with self.fail_lock:
            self.replacements += 1
            name = f"{self.node_prefix}r{self.replacements}"
        self.core.create_node(bench_node(name, zone))

    def stamp(self, target: rp.Recovery | PeerJob) -> Callable[[], None]:
        """The injector's ``on_start``: the signal's time on ``target``."""

        def started() -> None:
            with self.obs.lock:
                target.t_signal = time.time()

        return started

    def _hit(self, run: str, node: str, sig: str) -> None:
        with self.obs.lock:
            rec = self.obs.recs[run]
            rec.signal = sig
        self.interrupt(node, sig, self.stamp(rec))

    def wait_recovered(self, group: str) -> float:
        """Until every interrupted run's next attempt runs, or was itself lost before it
        ran (it landed on a node the same storm took next; ``unprovoked_outcomes``)."""

        def done() -> bool:
            with self.obs.lock:
                return all(
                    r.t_running is not None or (r.run, r.attempt + 1) in self.obs.unprovoked
                    for r in self.obs.recs.values()
                    if r.group == group
                )

        self.wait("every interrupted run's next attempt Running", done)
        return time.time()


def interruption_step(
    bench: Bench, runs: list[str], count: int, signals: tuple[str, ...], group: str, spread: float
) -> dict[str, Any]:
    """One storm (paced) or burst (spread 0): phases, rates, API requests."""
    victims = bench.pick_victims(runs, count, signals, group)
    say(f"{group}: {len(victims)} interruptions over {spread} s")
    offset = audit_log.offset(paths.AUDIT_LOG)
    scraped = om.scrape(bench.metrics_port)
    t0, _ = bench.storm(victims, spread)
    t_end = bench.wait_recovered(group)
    inside = om.inside_operator(scraped, om.scrape(bench.metrics_port))
    bench.sampler.mark(f"after_{group}")
    recs = [r for r in bench.obs.recs.values() if r.group == group]
    counts = audit_log.requests(paths.AUDIT_LOG, t0, t_end, start=offset)
    stored = audit_log.created_at(paths.AUDIT_LOG, t0, t_end, "pytorchjobs", start=offset)
    with bench.obs.lock:
        for r in recs:
            r.t_created_stored = stored.get(job_name(r.run, r.attempt + 1))
    return {
        "interruptions": len(victims),
        "spread_seconds": spread,
        "zones": dict(Counter(bench.zone_of.get(n, "?") for _, n, _ in victims)),
        "phases": rp.phase_table(recs, signals),
        "first_visible_as": {
            sig: dict(Counter(r.visible_by for r in recs if r.signal == sig)) for sig in signals
        },
        "operator_reason": {
            sig: dict(Counter(r.reason for r in recs if r.signal == sig)) for sig in signals
        },
        "throughput": rates(recs, t0),
        "api_requests": api_table(counts, t_end - t0, sum(1 for r in recs if r.t_created)),
        "status_writes": rp.status_write_table(recs),
        "inside_operator": inside,
        "apiserver_clients": apiserver_clients(paths.AUDIT_LOG, t0, t_end, offset),
    }
