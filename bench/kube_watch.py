"""Raw watches for the benchmarks: list then watch a kind as JSON, forever, handing every
event over with its arrival time on the bench's clock; and a client whose connection pool
is big enough for a storm's threads. Used by ``operator_scale.py``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

Handler = Callable[[str, dict[str, Any], float], None]


def watch_forever(
    lister: Callable[..., Any], args: tuple[Any, ...], handler: Handler, stop: threading.Event
) -> None:
    """List then watch (raw JSON objects), forever until ``stop``: every object of the
    listing is handed over as ``ADDED``; a watch that ends is resumed at the last
    resourceVersion, a 410 relists. ``handler(type, object, arrival time)``."""
    rv = ""
    while not stop.is_set():
        try:
            if not rv:
                resp = lister(*args, _preload_content=False)
                listing = json.loads(resp.data)
                now = time.time()
                for obj in listing.get("items") or []:
                    handler("ADDED", obj, now)
                rv = listing["metadata"]["resourceVersion"]
            w = watch.Watch()
            for ev in w.stream(
                lister,
                *args,
                resource_version=rv,
                timeout_seconds=120,
                allow_watch_bookmarks=True,
                deserialize=False,
            ):
                now = time.time()
                obj = ev["raw_object"] if "raw_object" in ev else ev["object"]
                if ev["type"] == "ERROR":
                    rv = ""
                    break
                rv = obj.get("metadata", {}).get("resourceVersion", rv)
                if ev["type"] != "BOOKMARK":
                    handler(ev["type"], obj, now)
                if stop.is_set():
                    w.stop()
                    break
        except ApiException as exc:
            if exc.status == 410:
                rv = ""
            else:
                time.sleep(1)
        except Exception:  # a dropped connection, an ERROR event: relist
            rv = ""
            time.sleep(1)


def start_watch(
    lister: Callable[..., Any], args: tuple[Any, ...], handler: Handler, stop: threading.Event
) -> threading.Thread:
    th = threading.Thread(
        target=watch_forever, args=(lister, args, handler, stop), daemon=True, name="watch"
    )
    th.start()
    return th


def api_client(kubeconfig: Path, pool: int = 64) -> client.ApiClient:
    """A client with a connection pool big enough for the storm's threads."""
    from kubernetes import config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    cfg.connection_pool_maxsize = pool
    return client.ApiClient(cfg)
