"""scale_report.apiserver_clients: every client's requests in a window of the audit log,
watches aside, and the operator's share of them."""

from __future__ import annotations

import json
from pathlib import Path

from scale_report import apiserver_clients


def line(agent: str, verb: str, at: str) -> str:
    return json.dumps(
        {
            "userAgent": agent,
            "verb": verb,
            "requestReceivedTimestamp": at,
            "stage": "ResponseComplete",
        }
    )


def test_requests_are_counted_by_client_within_the_window(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    rows = [
        line("spotrun-operator/0.1.0", "patch", "2026-01-01T00:00:10.000000Z"),
        line("kopf/1.37", "list", "2026-01-01T00:00:11.000000Z"),
        line("kopf/1.37", "watch", "2026-01-01T00:00:11.000000Z"),  # a watch: not a request
        line("kube-controller-manager/v1.33 (linux/amd64)", "delete", "2026-01-01T00:00:12Z"),
        line("OpenAPI-Generator/33.1.0/python", "get", "2026-01-01T00:00:13.000000Z"),
        line("OpenAPI-Generator/33.1.0/python", "patch", "2026-01-01T00:00:14.000000Z"),
        line("spotrun-operator/0.1.0", "create", "2026-01-01T00:01:00.000000Z"),  # after
        "not json",
    ]
    log.write_text("\n".join(rows) + "\n")
    since = 1767225600.0 + 5  # 2026-01-01T00:00:05Z
    got = apiserver_clients(log, since, since + 20)
    assert got["by_client"] == {
        "bench": 2,
        "spotrun-operator": 1,
        "kopf": 1,
        "kube-controller-manager": 1,
    }
    assert got["total"] == 5 and got["operator_share"] == 0.4
    assert apiserver_clients(tmp_path / "absent.log", since, since + 20) == {}
