"""The real nodes' Auto Scaling group: a replacement joins only after the provisioning
delay (provisioner.launch_due), and its settings come from the environment with errors
that name the variable."""

from __future__ import annotations

import pytest

from spotrun_dev.provisioner import (
    DEFAULT_DELAY_SECONDS,
    ENV_DELAY,
    ENV_IMAGES,
    CapacitySettings,
    GroupState,
    launch_due,
)
from spotrun_dev.waiting import ClusterError


def test_a_whole_group_launches_nothing_and_forgets_it_ran_short() -> None:
    g = GroupState(short_since=5.0)
    assert not launch_due(g, healthy=3, wanted=3, now=100.0, delay=10)
    assert g.short_since is None


def test_a_replacement_is_due_only_after_the_delay() -> None:
    g = GroupState()
    assert not launch_due(g, healthy=2, wanted=3, now=100.0, delay=30)
    assert g.short_since == 100.0
    assert not launch_due(g, healthy=2, wanted=3, now=129.9, delay=30)
    assert launch_due(g, healthy=2, wanted=3, now=130.0, delay=30)


def test_no_delay_replaces_at_once() -> None:
    assert launch_due(GroupState(), healthy=1, wanted=3, now=0.0, delay=0)


def test_settings_from_the_environment() -> None:
    assert CapacitySettings.from_env({}) == CapacitySettings(DEFAULT_DELAY_SECONDS, "preloaded")
    got = CapacitySettings.from_env({ENV_DELAY: "12.5", ENV_IMAGES: "registry"})
    assert got == CapacitySettings(12.5, "registry")
    assert got.describe() == "provisioning delay 12.5s, images registry"


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
