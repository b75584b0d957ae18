"""A committed checkpoint's model weights, and a bitwise comparison of two runs' weights
(the real story's and the demo's verdict against an uninterrupted reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spotrun_api import contract
from spotrun_dev.waiting import ClusterError


def final_weights(folder: Path, step: int) -> dict[str, Any]:
    """The model weights of the committed checkpoint ``step-<step>`` on a shared volume."""
    import torch

    step_dir = folder / contract.step_dir_name(step)
    if not (step_dir / contract.COMMIT_MARKER).is_file():
        raise ClusterError(f"{step_dir} is not a committed checkpoint")
    state = torch.load(step_dir / "shared.pt", map_location="cpu", weights_only=False)
    model = state.get("model", state)
    return {k: v for k, v in model.items() if isinstance(v, torch.Tensor)}


def differing_weights(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Names whose tensors are not bitwise equal (or missing on one side)."""
    names = sorted(set(a) | set(b))
    return [n for n in names if n not in a or n not in b or not _bitwise_equal(a[n], b[n])]


def _bitwise_equal(x: Any, y: Any) -> bool:
    """Same dtype, shape and bytes (NaNs and signed zeros included)."""
    import torch

    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    return bool(x.contiguous().view(torch.uint8).equal(y.contiguous().view(torch.uint8)))
