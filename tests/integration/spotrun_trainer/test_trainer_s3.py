"""S3 mirror against moto's server on loopback (a real HTTP endpoint, not the in-process mock)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import torch
from moto.server import ThreadedMotoServer
from trainer_helpers import (
    MAX_STEPS,
    Trainer,
    assert_bitwise_equal,
    committed,
    load_checkpoint,
    read_events,
    single_cmd,
)

from spotrun_api import contract
from spotrun_trainer.checkpoint import CheckpointManager, CheckpointSettings, verify
from spotrun_trainer.s3mirror import S3Mirror, parse_s3_uri
from spotrun_trainer.testhooks import ENV_PAUSE_AT_STEP

BUCKET = "spotrun-test"
CREDS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()


def _local_checkpoints(directory: Path, steps: list[int]) -> None:
    m = CheckpointManager(directory, CheckpointSettings(keep=10))
    m.prepare()
    model = torch.nn.Linear(4, 4)
    for step in steps:
        with torch.no_grad():
            model.weight.fill_(float(step))
        m.save(step, {"model": model}, {}, metric=float(10 - step))


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://b/some/prefix/") == ("b", "some/prefix")
    assert parse_s3_uri("s3://b") == ("b", "")
    with pytest.raises(ValueError):
        parse_s3_uri("gs://b/x")


def test_upload_puts_the_marker_last(tmp_path: Path, s3_endpoint: str) -> None:
    _local_checkpoints(tmp_path, [3])
    mirror = S3Mirror(f"s3://{BUCKET}/runs/a", endpoint_url=s3_endpoint)
    order: list[str] = []
    real_upload = mirror.client.upload_file

    def recording_upload(path: str, bucket: str, key: str, **kw: Any) -> None:
        order.append(key)
        real_upload(path, bucket, key, **kw)

    mirror.client.upload_file = recording_upload
    mirror.enqueue(tmp_path / "step-3")
    assert mirror.close(timeout=60)
    assert order[-1] == f"runs/a/step-3/{contract.COMMIT_MARKER}"
    assert {"runs/a/step-3/shared.pt", "runs/a/step-3/rank-0.pt"} <= set(order)
    assert mirror.remote_steps() == [3]


def test_restore_skips_incomplete_and_damaged_uploads(tmp_path: Path, s3_endpoint: str) -> None:
    src = tmp_path / "src"
    _local_checkpoints(src, [1, 2, 3, 4])
    mirror = S3Mirror(f"s3://{BUCKET}/p", endpoint_url=s3_endpoint)
    for step in (1, 2, 3):
        mirror.upload(src / f"step-{step}")
    s3 = mirror.client
    # step-4: data without its manifest, as an upload cut short leaves it
    s3.upload_file(str(src / "step-4" / "shared.pt"), BUCKET, "p/step-4/shared.pt")
    # step-3: complete manifest, corrupted data
    s3.put_object(Bucket=BUCKET, Key="p/step-3/shared.pt", Body=b"garbage")
    assert mirror.remote_steps() == [1, 2, 3]

    dest = tmp_path / "empty-volume"
    assert mirror.restore_latest(dest) == 2
    assert verify(dest / "step-2", 2) is None
    assert [p.name for p in dest.iterdir()] == ["step-2"], "no temp folders left behind"


def test_remote_prune_keeps_newest_and_best(tmp_path: Path, s3_endpoint: str) -> None:
    _local_checkpoints(tmp_path, [1, 2, 3, 4])
    mirror = S3Mirror(f"s3://{BUCKET}/p", endpoint_url=s3_endpoint)
    for step in (1, 2, 3, 4):
        mirror.upload(tmp_path / f"step-{step}")
    mirror.client.put_object(  # make step 1 the best by validation metric
        Bucket=BUCKET,
        Key=f"p/step-1/{contract.COMMIT_MARKER}",
        Body=(tmp_path / "step-1" / contract.COMMIT_MARKER)
        .read_text()
        .replace('"metric": 9.0', '"metric": -1.0'),
    )
    # An upload of step 0 cut short (no manifest) is litter once newer steps are complete.
    mirror.client.put_object(Bucket=BUCKET, Key="p/step-0/shared.pt", Body=b"partial")
    assert mirror.prune(keep=2) == [0, 2]
    assert mirror.remote_steps() == [1, 3, 4]
    keys = [o["Key"] for o in mirror.client.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert not [k for k in keys if k.startswith(("p/step-2/", "p/step-0/"))]


def test_run_moved_to_an_empty_volume_resumes_from_s3(
    launch: Callable[..., Trainer], tmp_path: Path, s3_endpoint: str, reference_single: Path
) -> None:
    s3_args = ["--checkpoint.s3-uri", f"s3://{BUCKET}/runs/r1",
               "--checkpoint.s3-endpoint-url", s3_endpoint]  # fmt: skip
    zone_a = tmp_path / "zone-a"
    stop_at = 9
    t = launch(single_cmd(zone_a, *s3_args), "zone-a", {ENV_PAUSE_AT_STEP: str(stop_at), **CREDS})
    t.wait_event("paused", 0, stop_at)
    t.proc.send_signal(signal.SIGTERM)
    assert t.wait() == contract.EXIT_STOPPED, t.output()[-4000:]
    # The stop waits for the upload of the checkpoint it just wrote.
    mirror = S3Mirror(f"s3://{BUCKET}/runs/r1", endpoint_url=s3_endpoint)
    assert mirror.remote_steps()[-1] == stop_at
    assert set(mirror.remote_steps()) <= set(committed(zone_a))

    zone_b = tmp_path / "zone-b"  # new, empty volume
    r = launch(single_cmd(zone_b, *s3_args), "zone-b", CREDS)
    assert r.wait() == contract.EXIT_DONE, r.output()[-4000:]
    assert f"restored step-{stop_at} from s3://{BUCKET}/runs/r1" in r.output()
    assert [s for e, _, s in read_events(r.events) if e == "started"] == [stop_at]
    assert_bitwise_equal(load_checkpoint(reference_single, MAX_STEPS),
                         load_checkpoint(zone_b, MAX_STEPS))  # fmt: skip
    assert mirror.remote_steps()[-1] == MAX_STEPS
