"""``make demo``'s verdict on the final weights against the uninterrupted reference."""

from __future__ import annotations

import torch

from spotrun_dev import demo


def _weights(scale: float = 1.0) -> dict[str, torch.Tensor]:
    return {"wte.weight": torch.ones(2, 3) * scale, "ln_f.bias": torch.zeros(3)}


def test_equal_weights_pass() -> None:
    same, verdict = demo.weights_verdict(_weights(), _weights())
    assert same and verdict == "2 tensors: bitwise EQUAL"


def test_different_weights_fail() -> None:
    same, verdict = demo.weights_verdict(_weights(2.0), _weights())
    assert not same and "DIFFERENT in ['wte.weight']" in verdict


def test_nothing_compared_fails() -> None:
    """Two empty sets are trivially equal and prove nothing."""
    same, verdict = demo.weights_verdict({}, {})
    assert not same and "no weights compared" in verdict


def test_one_side_empty_fails() -> None:
    for got, want in (({}, _weights()), (_weights(), {})):
        same, _ = demo.weights_verdict(got, want)
        assert not same
