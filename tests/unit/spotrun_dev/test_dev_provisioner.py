"""The real nodes' Auto Scaling group: a replacement joins only after the provisioning
delay (provisioner.boot_due, join_due), and its settings come from the environment with errors
that name the variable."""

from __future__ import annotations

import datetime as dt

import pytest
from kubernetes import client

from spotrun_dev.provisioner import (
    BOOT_TIMEOUT_SECONDS,
    DEFAULT_DELAY_SECONDS,
    ENV_DELAY,
    ENV_IMAGES,
    SETTLE_SECONDS,
    Boot,
    CapacitySettings,
    GroupState,
    Provisioner,
    boot_due,
    join_due,
    target_size,
)
from spotrun_dev.waiting import ClusterError


def test_a_whole_group_boots_nothing_and_forgets_it_ran_short() -> None:
    g = GroupState(short_since=5.0)
    assert boot_due(g, healthy=3, wanted=3, now=100.0, delay=10) is None
    assert g.short_since is None


def test_an_instance_boots_when_the_group_runs_short_and_joins_after_the_delay() -> None:
    g = GroupState()
    assert boot_due(g, healthy=2, wanted=3, now=100.0, delay=30) == 130.0
    assert g.short_since == 100.0
    # Still short a pass later (the boot not counted yet): the join time stays put.
    assert boot_due(g, healthy=2, wanted=3, now=100.5, delay=30) == 130.0
    g.booting = Boot("spot-4", 130.0)
    assert boot_due(g, healthy=2, wanted=3, now=101.0, delay=30) is None  # one at a time
    assert not join_due(g.booting, now=129.9, ready=True)
    assert not join_due(g.booting, now=130.0, ready=False)
    assert join_due(g.booting, now=130.0, ready=True)


def test_a_boot_never_ready_fails_the_harness() -> None:
    boot = Boot("spot-4", 130.0)
    assert not join_due(boot, now=130.0 + BOOT_TIMEOUT_SECONDS, ready=False)
    with pytest.raises(ClusterError, match="spot-4 was not Ready"):
        join_due(boot, now=130.1 + BOOT_TIMEOUT_SECONDS, ready=False)


def test_no_delay_joins_as_soon_as_ready() -> None:
    assert boot_due(GroupState(), healthy=1, wanted=3, now=7.0, delay=0) == 7.0


def test_settings_from_the_environment() -> None:
    assert CapacitySettings.from_env({}) == CapacitySettings(DEFAULT_DELAY_SECONDS, "preloaded")
    got = CapacitySettings.from_env({ENV_DELAY: "12.5", ENV_IMAGES: "registry"})
    assert got == CapacitySettings(12.5, "registry")
    assert got.describe() == "provisioning delay 12.5s, images registry"
    assert CapacitySettings.from_env({ENV_IMAGES: "lazy"}).images == "lazy"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({ENV_DELAY: "soon"}, ENV_DELAY),
        ({ENV_DELAY: "-1"}, ENV_DELAY),
        ({ENV_IMAGES: "ami"}, ENV_IMAGES),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ClusterError, match=named):
        CapacitySettings.from_env(env)


# --- launching for pods the scheduler cannot place (Cluster Autoscaler's scale-up) ----------


def test_the_group_grows_for_unschedulable_pods_by_at_most_one_beyond_its_count() -> None:
    assert target_size(wanted=2, healthy=2, unschedulable=0) == 2
    # A notice's placeholder while the doomed instance still runs: one more node.
    assert target_size(wanted=2, healthy=2, unschedulable=1) == 3
    assert target_size(wanted=2, healthy=2, unschedulable=4) == 3
    # The doomed instance ended: the same placeholder is the lost node's replacement.
    assert target_size(wanted=2, healthy=1, unschedulable=1) == 2
    assert target_size(wanted=3, healthy=1, unschedulable=0) == 3


def _pod(node: str | None, reason: str | None, deleting: bool = False) -> client.V1Pod:
    conds = [client.V1PodCondition(type="PodScheduled", status="False", reason=reason)]
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name="p", deletion_timestamp=dt.datetime.now(dt.UTC)
                                     if deleting else None),
        spec=client.V1PodSpec(containers=[], node_name=node),
        status=client.V1PodStatus(phase="Pending", conditions=conds if reason else []),
    )  # fmt: skip


class _Pods:
    def __init__(self, pods: list[client.V1Pod]) -> None:
        self.pods, self.asked = pods, []  # type: ignore[var-annotated]

    def list_namespaced_pod(self, namespace: str, field_selector: str) -> client.V1PodList:
        self.asked.append((namespace, field_selector))
        return client.V1PodList(items=self.pods)


def test_only_the_served_namespaces_unplaceable_pods_count_and_not_right_after_a_launch() -> None:
    pods = [
        _pod(None, "Unschedulable"),
        _pod(None, "Unschedulable", deleting=True),  # going: asks for nothing
        _pod("n1", None),  # bound, its containers not started
        _pod(None, None),  # not judged by the scheduler yet
        _pod(None, "SchedulerError"),
    ]
    now = [100.0]
    core = _Pods(pods)
    group = Provisioner(core, 2, CapacitySettings(5, "preloaded"), lambda: now[0], "ml")
    assert group.unschedulable() == 1
    assert core.asked == [("ml", "status.phase=Pending")]
    group.group.booting = Boot("spot-3", 90.0)  # the pod's node is on its way
    assert group.unschedulable() == 0
    group.group.booting = None
    group.group.launches.append((95.0, "spot-3"))  # its node is about to take the pod
    assert group.unschedulable() == 0
    now[0] = 95.0 + SETTLE_SECONDS
    assert group.unschedulable() == 1
    blind = Provisioner(core, 2, CapacitySettings(5, "preloaded"))
    assert blind.unschedulable() == 0  # no namespace served: an ASG alone


class _Record:
    def node(self, name: str) -> str:
        return name


class _Fleet:
    def __init__(self, *names: str) -> None:
        self.nodes = {n: _Record() for n in names}


@pytest.mark.parametrize("ready", [True, False], ids=["joins", "removed"])
def test_a_stopping_group_leaves_no_half_launched_instance(
    ready: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instance still booting when the group stops joins at once (its launching taint
    goes), or is removed if it never turns Ready: a node left tainted would count as
    healthy to the next test's fleet and take no pod."""
    from spotrun_dev import provisioner, realnodes

    untainted: list[tuple[str, str]] = []
    removed: list[str] = []
    monkeypatch.setattr(realnodes.FleetState, "load", staticmethod(lambda: _Fleet("spot-4")))
    monkeypatch.setattr(realnodes, "all_ready", lambda core, nodes: ready)
    monkeypatch.setattr(realnodes, "remove_node", lambda core, state, name: removed.append(name))

    def remove_taint(core: object, name: str, key: str) -> bool:
        untainted.append((name, key))
        return True

    monkeypatch.setattr(provisioner, "remove_taint", remove_taint)
    monkeypatch.setattr(provisioner, "BOOT_TIMEOUT_SECONDS", 0.2)
    group = Provisioner(_Pods([]), 2, CapacitySettings(60, "preloaded"))
    group.settle_boot()  # nothing booting: nothing to do
    assert (untainted, removed) == ([], [])
    group.group.booting = Boot("spot-4", 1e9)  # its delay far from over
    group.settle_boot()
    assert group.group.booting is None
    if ready:
        assert (untainted, removed) == ([("spot-4", "spotrun.dev/launching")], [])
    else:
        assert (untainted, removed) == ([], ["spot-4"])
