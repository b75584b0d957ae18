"""The chart's files/ are byte-identical copies of the single sources at the repo root."""

from __future__ import annotations

from pathlib import Path

import pytest
from chartkit import CHART_FILES, REPO_ROOT, SYNC_SCRIPT, run

PAIRS = [
    (REPO_ROOT / "crds", "*.yaml", CHART_FILES / "crds"),
    (REPO_ROOT / "dashboards", "*.json", CHART_FILES / "dashboards"),
    (REPO_ROOT / "alerts", "*.rules.yaml", CHART_FILES / "alerts"),
]


@pytest.mark.parametrize(("source", "pattern", "copy"), PAIRS, ids=["crds", "dashboards", "alerts"])
def test_chart_copies_are_byte_identical(source: Path, pattern: str, copy: Path) -> None:
    sources = {p.name: p for p in source.glob(pattern)}
    copies = {p.name: p for p in copy.glob(pattern)}
    hint = "run hack/sync-chart-crds.sh"
    assert sorted(copies) == sorted(sources), f"{copy} holds {sorted(copies)}: {hint}"
    for name, path in sources.items():
        assert copies[name].read_bytes() == path.read_bytes(), f"{copy / name} is stale: {hint}"


def test_the_crd_has_a_copy_once_it_exists() -> None:
    source = REPO_ROOT / "crds" / "trainingruns.spotrun.dev.yaml"
    copy = CHART_FILES / "crds" / source.name
    assert copy.exists() == source.exists()


def test_sync_script_check_mode_agrees() -> None:
    result = run(["bash", str(SYNC_SCRIPT), "--check"])
    assert result.returncode == 0, result.stderr


def test_sync_script_check_mode_reports_a_stale_copy(tmp_path: Path) -> None:
    # Run the script on a scratch copy of the layout, never on the checkout.
    root = tmp_path / "repo"
    (root / "hack").mkdir(parents=True)
    (root / "hack" / SYNC_SCRIPT.name).write_bytes(SYNC_SCRIPT.read_bytes())
    for sub in ("crds", "dashboards", "alerts"):
        (root / sub).mkdir()
    (root / "crds" / "x.yaml").write_text("kind: CustomResourceDefinition\n")
    (root / "dashboards" / "d.json").write_text("{}\n")
    (root / "alerts" / "a.rules.yaml").write_text("groups: []\n")
    script = ["bash", str(root / "hack" / SYNC_SCRIPT.name)]
    assert run([*script, "--check"], cwd=root).returncode == 1
    assert run(script, cwd=root).returncode == 0
    assert run([*script, "--check"], cwd=root).returncode == 0
    copied = root / "charts/spotrun/files/crds/x.yaml"
    assert copied.read_text() == "kind: CustomResourceDefinition\n"
    (root / "dashboards" / "d.json").write_text('{"changed": true}\n')
    (root / "alerts" / "a.rules.yaml").unlink()
    check = run([*script, "--check"], cwd=root)
    assert check.returncode == 1
    assert "out of date: charts/spotrun/files/dashboards/d.json" in check.stderr
    assert "stale: charts/spotrun/files/alerts/a.rules.yaml" in check.stderr
    assert run(script, cwd=root).returncode == 0
    assert not (root / "charts/spotrun/files/alerts/a.rules.yaml").exists()
