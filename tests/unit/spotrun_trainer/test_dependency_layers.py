"""The trainer image's dependency layers: every resolved project in exactly one group."""

from __future__ import annotations

import json
from pathlib import Path

import dependency_layers
import pytest


def _report(*pins: tuple[str, str]) -> dict[str, object]:
    return {"install": [{"metadata": {"name": n, "version": v}} for n, v in pins]}


REPORT = _report(
    ("nvidia-cudnn-cu13", "9.26.0.51"),
    ("nvidia-nccl-cu13", "2.30.7"),
    ("nvidia-cublas", "13.4.1.3"),
    ("cuda-toolkit", "13.2.2"),
    ("cuda_bindings", "13.5.0"),
    ("torch", "2.15.0"),
    ("triton", "3.9.0"),
    ("torchx-nightly", "2026.10.26"),
    ("Transformers", "5.23.0"),
)


def test_each_project_goes_to_one_layer_pinned_and_named_canonically() -> None:
    groups = dependency_layers.split(REPORT)
    assert list(groups) == ["cuda-kernels", "cuda-runtime", "torch", "triton", "rest"]
    assert groups["cuda-kernels"] == ["nvidia-cudnn-cu13==9.26.0.51", "nvidia-nccl-cu13==2.30.7"]
    assert groups["cuda-runtime"] == [
        "cuda-bindings==13.5.0", "cuda-toolkit==13.2.2", "nvidia-cublas==13.4.1.3",
    ]  # fmt: skip
    assert groups["torch"] == ["torch==2.15.0"]  # not torchx-nightly
    assert groups["triton"] == ["triton==3.9.0"]
    assert groups["rest"] == ["torchx-nightly==2026.10.26", "transformers==5.23.0"]
    assert sum(map(len, groups.values())) == len(REPORT["install"])  # type: ignore[arg-type]


def test_files_are_numbered_in_install_order_and_empty_groups_are_kept(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text(json.dumps(_report(("torch", "2.15.0"))))
    assert dependency_layers.main(["x", str(report), str(tmp_path / "out")]) == 0
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["1-cuda-kernels.txt", "2-cuda-runtime.txt", "3-torch.txt", "4-triton.txt",
                     "5-rest.txt"]  # fmt: skip
    assert (tmp_path / "out" / "3-torch.txt").read_text() == "torch==2.15.0\n"
    assert (tmp_path / "out" / "1-cuda-kernels.txt").read_text() == ""


def test_a_file_that_is_not_a_pip_report_is_refused() -> None:
    with pytest.raises(ValueError, match="'install'"):
        dependency_layers.split({"version": "1"})


def test_the_dockerfile_installs_every_group_in_its_own_layer() -> None:
    dockerfile = (Path(__file__).parents[3] / "trainer" / "Dockerfile").read_text()
    runs = [line for line in dockerfile.splitlines() if line.startswith("RUN f=")]
    names = [f"{n}-{group}.txt" for n, (group, _) in enumerate(dependency_layers.GROUPS, 1)]
    assert [next(name for name in names if name in run) for run in runs] == names
