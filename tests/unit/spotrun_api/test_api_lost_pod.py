"""The words of a peer-lost message that name the lost pod: written by the trainer, read
by the operator (which then need not wait for that pod before the next attempt)."""

from __future__ import annotations

import pytest

from spotrun_api import contract


def test_the_words_round_trip() -> None:
    said = (
        "peer lost: rank 8 (llm-a1-worker-0) sent no heartbeat for 5.2s (limit 5.0s); "
        f"rank 0 exits 86 [{contract.lost_pod_words('llm-a1-worker-0')}]"
    )
    assert contract.lost_pod_named(said) == "llm-a1-worker-0"


@pytest.mark.parametrize(
    "said",
    [
        "peer lost: rank 1 (llm-a1-worker-0) sent no heartbeat for 30.2s; rank 0 exits 86",
        "lost-pod=",  # no name
        "lost-pod=-bad",  # not a pod name
        "xlost-pod=llm-a1-worker-0",  # not the key
    ],
)
def test_a_message_without_the_words_names_no_pod(said: str) -> None:
    assert contract.lost_pod_named(said) is None
