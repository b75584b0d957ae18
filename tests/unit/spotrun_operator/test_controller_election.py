"""Leader election: client-go's rules on a Lease (pure), and the elector that runs them
against an in-memory Lease store with compare-and-swap, on a fake clock."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from spotrun_operator.kubeio.election import (
    Create,
    ElectionConfig,
    LeaseRecord,
    Seen,
    Update,
    Wait,
    lease_body,
    next_step,
    note_read,
    released,
    renew_lost,
)
from spotrun_operator.kubeio.leader import Elector, identity
from spotrun_operator.main import parse_args
from spotrun_operator.telemetry.metrics import Metrics

CFG = ElectionConfig()  # 15 / 10 / 2
T0, T1 = "2030-01-01T00:00:00.000000Z", "2030-01-01T00:00:05.000000Z"


def seen(holder: str, at: float, *, transitions: int = 3, lease: int = 15) -> Seen:
    return Seen(LeaseRecord(holder, lease, T0, T0, transitions), "41", at)


# --- the rules ---------------------------------------------------------------------
def test_no_lease_is_created_holding_it() -> None:
    step = next_step(None, "me", 100.0, T1, CFG)
    assert step == Create(LeaseRecord("me", 15, T1, T1, 0))


def test_a_live_lease_of_another_is_respected_until_it_expires() -> None:
    current = seen("other", at=100.0)
    assert next_step(current, "me", 100.0, T1, CFG) == Wait("other", 115.0)
    assert next_step(current, "me", 114.9, T1, CFG) == Wait("other", 115.0)


def test_an_expired_lease_is_taken_over_and_transitions_count_it() -> None:
    step = next_step(seen("other", at=100.0), "me", 115.0, T1, CFG)
    assert step == Update(LeaseRecord("me", 15, T1, T1, 4), "41", acquired=True)


def test_a_released_lease_is_taken_at_once() -> None:
    free = Seen(released(LeaseRecord("other", 15, T0, T0, 3), T0), "42", 100.0)
    assert free.record == LeaseRecord("", 1, T0, T0, 3)
    step = next_step(free, "me", 100.0, T1, CFG)
    assert step == Update(LeaseRecord("me", 15, T1, T1, 4), "42", acquired=True)


def test_the_holder_renews_keeping_acquire_time_and_transitions() -> None:
    step = next_step(seen("me", at=100.0), "me", 101.0, T1, CFG)
    assert step == Update(LeaseRecord("me", 15, T0, T1, 3), "41", acquired=False)
    # Even when its own lease looks expired: nobody took it, so it is still ours.
    step = next_step(seen("me", at=100.0), "me", 200.0, T1, CFG)
    assert isinstance(step, Update) and not step.acquired


def test_expiry_is_measured_from_when_the_record_last_changed_on_our_clock() -> None:
    # The Lease's own timestamps are another host's clock: only a change counts.
    first = note_read(None, LeaseRecord("other", 15, T0, T0, 3), "1", now=100.0)
    again = note_read(first, LeaseRecord("other", 15, T0, T0, 3), "1", now=110.0)
    assert again.at == 100.0 and not again.live(115.0)
    renewed = note_read(again, LeaseRecord("other", 15, T0, T1, 3), "2", now=112.0)
    assert renewed.at == 112.0 and renewed.live(126.9) and not renewed.live(127.0)
    # The holder's own lease duration counts, not ours (a release writes 1 s).
    short = note_read(None, LeaseRecord("other", 1, T0, T0, 3), "3", now=100.0)
    assert next_step(short, "me", 101.0, T1, CFG) == Update(
        LeaseRecord("me", 15, T1, T1, 4), "3", acquired=True
    )


def test_a_renewal_round_is_lost_after_the_renew_deadline() -> None:
    assert not renew_lost(100.0, 109.9, CFG)
    assert renew_lost(100.0, 110.0, CFG)


@pytest.mark.parametrize(
    ("cfg", "problem"),
    [
        (ElectionConfig(10, 10, 2), "greater than the renew deadline"),
        (ElectionConfig(15, 2.2, 2), "retry period * 1.2"),
        (ElectionConfig(15, 10, 0), "greater than zero"),
    ],
)
def test_configurations_client_go_refuses(cfg: ElectionConfig, problem: str) -> None:
    assert problem in (cfg.problem() or "")
    assert ElectionConfig().problem() is None


def test_lease_body_keeps_metadata_and_other_spec_fields_for_the_cas() -> None:
    base = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "l", "namespace": "ns", "resourceVersion": "7", "labels": {"a": "b"}},
        "spec": {"holderIdentity": "x", "strategy": "OldestEmulationVersion"},
    }
    body = lease_body("ns", "l", LeaseRecord("me", 15, T0, T1, 2), base)
    assert body["metadata"] == base["metadata"]
    assert body["spec"] == {
        "holderIdentity": "me",
        "leaseDurationSeconds": 15,
        "leaseTransitions": 2,
        "acquireTime": T0,
        "renewTime": T1,
        "strategy": "OldestEmulationVersion",
    }
    assert "resourceVersion" not in lease_body("ns", "l", LeaseRecord("me"))["metadata"]


# --- the elector against an in-memory apiserver -------------------------------------
class FakeLeases:
    """One namespace's Leases with the apiserver's compare-and-swap on resourceVersion."""

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.rv = 0
        self.down = False

    def _stored(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj = copy.deepcopy(dict(body))
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.leases[obj["metadata"]["name"]] = obj
        return copy.deepcopy(obj)

    def get_lease(self, namespace: str, name: str, timeout: float) -> dict[str, Any] | None:
        if self.down:
            raise ConnectionError("apiserver unreachable")
        found = self.leases.get(name)
        return copy.deepcopy(found) if found else None

    def create_lease(self, body: Mapping[str, Any], timeout: float) -> dict[str, Any] | None:
        if self.down:
            raise ConnectionError("apiserver unreachable")
        if body["metadata"]["name"] in self.leases:
            return None
        return self._stored(body)

    def replace_lease(self, body: Mapping[str, Any], timeout: float) -> dict[str, Any] | None:
        if self.down:
            raise ConnectionError("apiserver unreachable")
        old = self.leases[body["metadata"]["name"]]
        if body["metadata"].get("resourceVersion") != old["metadata"]["resourceVersion"]:
            return None
        return self._stored(body)

    def spec(self, name: str = "lease") -> dict[str, Any]:
        return dict(self.leases[name]["spec"])


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def elector(store: FakeLeases, ident: str, clock: Clock, lost: list[str]) -> Elector:
    return Elector(
        store,
        "ns",
        "lease",
        ident,
        CFG,
        asyncio.Event(),
        on_lost=lambda: lost.append(ident),
        clock=clock,
        wall=lambda: f"2030-01-01T00:00:{int(clock.t) % 60:02d}.000000Z",
    )


def test_two_candidates_one_leader_then_takeover_after_the_lease_duration() -> None:
    store, clock, lost = FakeLeases(), Clock(), list[str]()
    a, b = elector(store, "a", clock, lost), elector(store, "b", clock, lost)
    assert a.try_acquire_or_renew(1) and a.is_leader()
    assert store.spec()["holderIdentity"] == "a" and store.spec()["leaseTransitions"] == 0
    assert not b.try_acquire_or_renew(1) and not b.is_leader()
    for _ in range(10):  # a renews every 2 s; b keeps seeing it change
        clock.t += 2
        assert a.try_acquire_or_renew(1)
        assert not b.try_acquire_or_renew(1)
    # a dies; b takes over one lease duration after it last saw a renewal, not before.
    clock.t += 14.9
    assert not b.try_acquire_or_renew(1)
    clock.t += 0.1
    assert b.try_acquire_or_renew(1) and b.is_leader()
    spec = store.spec()
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("b", 1)
    # a, back from a pause, cannot renew (its fast path conflicts, the slow path sees b).
    assert not a.try_acquire_or_renew(1) and not a.is_leader()


def test_release_lets_the_standby_take_over_at_once() -> None:
    store, clock, lost = FakeLeases(), Clock(), list[str]()
    a, b = elector(store, "a", clock, lost), elector(store, "b", clock, lost)
    assert a.try_acquire_or_renew(1)
    assert not b.try_acquire_or_renew(1)
    assert a.release(1)
    assert (store.spec()["holderIdentity"], store.spec()["leaseDurationSeconds"]) == ("", 1)
    assert b.try_acquire_or_renew(1)
    assert (store.spec()["holderIdentity"], store.spec()["leaseTransitions"]) == ("b", 1)
    assert a.release(1)  # not the holder: nothing to do
    assert store.spec()["holderIdentity"] == "b"


def test_racing_standbys_one_wins_the_compare_and_swap() -> None:
    store, clock, lost = FakeLeases(), Clock(), list[str]()
    a, b, c = (elector(store, n, clock, lost) for n in "abc")
    assert a.try_acquire_or_renew(1)
    assert not b.try_acquire_or_renew(1) and not c.try_acquire_or_renew(1)
    clock.t += 15
    # Both read the expired lease; b writes first; c's write carries the old version.
    lease = store.get_lease("ns", "lease", 1)
    assert b.try_acquire_or_renew(1)
    stale = lease_body("ns", "lease", LeaseRecord("c", 15), lease)
    assert store.replace_lease(stale, 1) is None
    assert not c.try_acquire_or_renew(1)
    assert store.spec()["holderIdentity"] == "b"


def test_elector_runs_sets_leading_and_exits_when_renewal_fails() -> None:
    async def scenario() -> tuple[list[str], list[bool], bool]:
        store, lost, status = FakeLeases(), list[str](), list[bool]()
        fast = ElectionConfig(lease_seconds=2, renew_deadline_seconds=0.6, retry_period_seconds=0.2)
        leading = asyncio.Event()
        e = Elector(
            store, "ns", "lease", "me", fast, leading,
            on_status=status.append, on_lost=lambda: lost.append("me"),
        )  # fmt: skip
        e.start()
        await asyncio.wait_for(leading.wait(), timeout=5)
        await asyncio.sleep(0.5)  # renewing
        assert not lost and store.spec()["holderIdentity"] == "me"
        store.down = True  # the apiserver is gone: the renew deadline passes
        for _ in range(50):
            await asyncio.sleep(0.1)
            if lost:
                break
        return lost, status, leading.is_set()

    lost, status, still_leading = asyncio.run(scenario())
    assert lost == ["me"] and not still_leading
    assert status == [False, True, False]


def test_stop_drains_then_releases() -> None:
    async def scenario() -> tuple[FakeLeases, list[str]]:
        store, order = FakeLeases(), list[str]()
        fast = ElectionConfig(lease_seconds=2, renew_deadline_seconds=0.6, retry_period_seconds=0.2)
        leading = asyncio.Event()
        e = Elector(store, "ns", "lease", "me", fast, leading, on_lost=lambda: order.append("lost"))
        e.start()
        await asyncio.wait_for(leading.wait(), timeout=5)
        await e.stop(lambda: order.append("drained"), timeout=5)
        assert not leading.is_set()
        return store, order

    store, order = asyncio.run(scenario())
    assert order == ["drained"]
    assert (store.spec()["holderIdentity"], store.spec()["leaseDurationSeconds"]) == ("", 1)


def test_identities_differ_between_processes_on_one_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "spotrun-7d9f-abcde")
    one, two = identity(), identity()
    assert one != two and one.startswith("spotrun-7d9f-abcde_")


def test_flags_and_the_metric() -> None:
    args = parse_args(["--leader-elect", "--leader-election-id", "x"])
    assert (args.leader_election_id, args.leader_election_lease_seconds) == ("x", 15)
    assert args.leader_election_renew_deadline_seconds == 10.0
    assert args.leader_election_retry_period_seconds == 2.0
    with pytest.raises(SystemExit):
        parse_args(["--leader-elect", "--leader-election-lease-seconds=5"])
    reg = CollectorRegistry()
    m = Metrics(reg)
    assert "leader_election_master_status{" not in generate_latest(reg).decode()
    m.leading("spotrun-operator", True)
    assert 'leader_election_master_status{name="spotrun-operator"} 1.0' in (
        generate_latest(reg).decode()
    )
