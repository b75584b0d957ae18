"""What warm spares cost (pure): each spare pod bills its node's hourly price from its
binding (``PodScheduled``) until it ends, at the node's capacity type (spot or on-demand).

:func:`track` turns what was observed (the spare pods alive now, the last state of those
seen deleted) into the next ``status.spares``: a newly bound spare is listed with its
node's price key; a listed spare that is gone or ended is priced once and folded into the
``ended*`` totals. :func:`spares_cost` is the spend so far (ended + the bound ones up to
``now``) and :func:`spares_burn_usd_per_second` what the bound ones burn (the budget's
projection).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from spotrun_api.spares import SparePod, SparesStatus
from spotrun_operator.facts.common import (
    LABEL_EKS_CAPACITY,
    LABEL_KARPENTER_CAPACITY,
    fmt_time,
    name_of,
    parse_time,
    pod_meta,
    pod_node,
    pod_uid,
)
from spotrun_operator.facts.signals import NodeInfo
from spotrun_operator.money.cost import SECONDS_PER_HOUR, Cost, Price, Prices, as_prices

PriceSource = Mapping[str, Price] | Prices


def capacity_of(node: NodeInfo | None, default: str) -> str:
    """spot or on-demand, from the node's Karpenter or EKS capacity label (``default``, the
    run's capacity type, when it has neither)."""
    labels = node.labels if node is not None else {}
    karpenter = labels.get(LABEL_KARPENTER_CAPACITY)
    if karpenter in ("spot", "on-demand"):
        return karpenter
    eks = labels.get(LABEL_EKS_CAPACITY)
    if eks in ("SPOT", "ON_DEMAND"):
        return "spot" if eks == "SPOT" else "on-demand"
    return default


def bound_since(pod: Mapping[str, Any], now: dt.datetime) -> dt.datetime:
    """When the pod was bound: its PodScheduled condition's transition (creation, or now,
    when the condition is not there)."""
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "True":
            t = parse_time(c.get("lastTransitionTime"))
            if t is not None:
                return min(t, now)
    t = parse_time(pod_meta(pod).get("creationTimestamp"))
    return min(t, now) if t is not None else now


def _ended(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _hourly(p: SparePod, prices: Prices) -> float | None:
    if p.capacity_type == "on-demand":
        return prices.on_demand_usd_per_hour(p.instance_type or "")
    return prices.spot_usd_per_hour(p.instance_type or "", p.zone or None)


def pod_seconds(p: SparePod, end: dt.datetime) -> float:
    start = parse_time(p.since)
    return max(0.0, (end - start).total_seconds()) if start is not None else 0.0


def pod_usd(p: SparePod, end: dt.datetime, prices: PriceSource) -> float:
    """Dollars of spare ``p``'s node from its binding to ``end`` ($0 when unpriced)."""
    rate = _hourly(p, as_prices(prices)) or 0.0
    return pod_seconds(p, end) * rate / SECONDS_PER_HOUR


def _ended_at(last: Mapping[str, Any] | None, now: dt.datetime) -> dt.datetime:
    """When a spare that is no longer bound stopped billing: its deletion time when the
    last state seen has one, else now (the first look that finds it gone)."""
    t = parse_time(pod_meta(last).get("deletionTimestamp")) if last is not None else None
    return min(t, now) if t is not None else now


def track(
    old: SparesStatus | None,
    pods: Sequence[Mapping[str, Any]],
    deleted: Sequence[Mapping[str, Any]],
    nodes: Mapping[str, NodeInfo],
    now: dt.datetime,
    prices: PriceSource,
    default_capacity: str,
) -> SparesStatus:
    """The next status.spares: the bound spares now, and the totals of those that ended."""
    base = old or SparesStatus()
    listed = {p.uid: p for p in base.pods or ()}
    bound: dict[str, SparePod] = {}
    for pod in pods:
        node = pod_node(pod)
        info = nodes.get(node) if node is not None else None
        # A node that is gone bills no more, whatever its pod still shows.
        if node is None or _ended(pod) or (info is not None and not info.exists):
            continue
        uid = pod_uid(pod)
        bound[uid] = listed.get(uid) or SparePod(
            name=name_of(pod),
            uid=uid,
            node=node,
            instance_type=(info.instance_type or None) if info else None,
            zone=(info.zone or None) if info else None,
            capacity_type=capacity_of(info, default_capacity),
            since=fmt_time(bound_since(pod, now)),
        )
    last = {pod_uid(p): p for p in [*deleted, *pods]}
    seconds, usd = base.ended_node_seconds or 0.0, base.ended_usd or 0.0
    for uid, p in listed.items():
        if uid not in bound:
            end = _ended_at(last.get(uid), now)
            seconds += pod_seconds(p, end)
            usd += pod_usd(p, end, prices)
    return base.model_copy(
        update={
            # Emptied as [], not None: the status is written as a JSON merge patch, in
            # which an absent key keeps the old list, and its ended spares would be
            # priced again at every reconcile. None only when there was nothing to empty.
            "pods": sorted(bound.values(), key=lambda p: p.name) if bound or listed else None,
            "ended_node_seconds": round(seconds, 3) or None,
            "ended_usd": round(usd, 6) or None,
        }
    )


def spares_cost(spares: SparesStatus | None, now: dt.datetime, prices: PriceSource) -> Cost:
    """The spares' spend so far: the ended ones' totals plus the bound ones up to ``now``."""
    if spares is None:
        return Cost()
    pods = spares.pods or ()
    return Cost(
        spares_usd=(spares.ended_usd or 0.0) + sum(pod_usd(p, now, prices) for p in pods),
        spare_node_seconds=(spares.ended_node_seconds or 0.0)
        + sum(pod_seconds(p, now) for p in pods),
    )


def spares_burn_usd_per_second(spares: SparesStatus | None, prices: PriceSource) -> float:
    """What the bound spares burn (USD/s)."""
    p = as_prices(prices)
    pods = spares.pods if spares is not None else None
    return sum((_hourly(s, p) or 0.0) for s in pods or ()) / SECONDS_PER_HOUR
