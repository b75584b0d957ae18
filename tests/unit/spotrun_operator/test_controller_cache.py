"""The watch-fed caches reconciles read (cache.py), and the reads observe() still sends
to the API only when a decision needs them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from spotrun_operator.facts.common import LABEL_ATTEMPT, LABEL_RUN
from spotrun_operator.facts.signals import node_info
from spotrun_operator.model.builders import job_nodes
from spotrun_operator.model.plan import Rejected
from spotrun_operator.watching.cache import BY_RUN, Cache, CachedReads, by_label
from spotrun_operator.watching.memory import Memory
from spotrun_operator.watching.observe import observe
from spotrun_operator.watching.store import Store
from spotrun_operator.watching.trim import Strings


def obj(kind: str, name: str, rv: str, ns: str = "ml", **meta: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv, **meta},
    }


def pod(name: str, rv: str, run: str = "r", attempt: int = 1, **meta: Any) -> dict[str, Any]:
    labels = {LABEL_RUN: run, LABEL_ATTEMPT: str(attempt)}
    return obj("Pod", name, rv, labels=labels, **meta)


def test_an_older_version_never_replaces_a_newer_one() -> None:
    s = Store("Pod")
    assert s.put(obj("Pod", "p", "10"))
    assert not s.put(obj("Pod", "p", "9"))  # a late watch event after our own write
    assert s.get("ml", "p") == obj("Pod", "p", "10")
    assert s.put(obj("Pod", "p", "11"))
    # Not an integer: never judged older (the apiserver gives etcd revisions).
    assert s.put(obj("Pod", "p", "x1"))
    assert s.put(obj("Pod", "p", "5"))


def test_client_bookkeeping_is_not_kept() -> None:
    """managedFields and kubectl's last-applied copy of the spec are dropped (memory)."""
    applied = {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "team": "ml"}
    s = Store("TrainingRun")
    body = obj("TrainingRun", "r", "3", managedFields=[{"manager": "kubectl"}])
    body["metadata"]["annotations"] = applied
    assert s.put(body)
    kept = s.get("ml", "r")
    assert kept is not None and "managedFields" not in kept["metadata"]
    assert kept["metadata"]["annotations"] == {"team": "ml"}
    assert kept["metadata"]["resourceVersion"] == "3"
    assert body["metadata"]["managedFields"]  # the caller's object is left as it was


def test_a_pod_keeps_only_the_spec_decisions_read() -> None:
    """Pods are most of the cache: of their spec only nodeName is kept; status and
    metadata (labels, deletion, uid) stay whole, in the store and the watch's memory."""
    cache = Cache()
    body = pod("p", "4", managedFields=[{"manager": "kubelet"}])
    body["spec"] = {
        "nodeName": "n1",
        "containers": [{"name": "pytorch", "env": [{"name": "MASTER_ADDR", "value": "x"}]}],
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
    }
    body["status"] = {"phase": "Running", "containerStatuses": [{"name": "pytorch"}]}
    cache.wrote(body)
    kept = cache.pods.get("ml", "p")
    assert kept is not None
    assert kept["spec"] == {"nodeName": "n1"}
    assert kept["status"] == body["status"]
    assert "managedFields" not in kept["metadata"] and kept["metadata"]["labels"]
    assert [p["metadata"]["name"] for p in cache.pods.indexed(BY_RUN, "ml", "r")] == ["p"]
    assert "containers" in body["spec"]  # the caller's object is left as it was


def test_a_job_keeps_its_gang_size_and_run_policy_not_its_pod_templates() -> None:
    """What decisions read of a PyTorchJob stays (job_nodes, suspend, status, metadata);
    the pod template, most of its bytes, is not kept."""
    cache = Cache()
    template = {"spec": {"containers": [{"name": "pytorch", "env": [{"name": "A"}]}]}}
    job = obj("PyTorchJob", "r-a1", "5", labels={LABEL_RUN: "r"})
    job["spec"] = {
        "nprocPerNode": "8",
        "runPolicy": {"suspend": True, "cleanPodPolicy": "None"},
        "pytorchReplicaSpecs": {
            "Master": {"replicas": 1, "restartPolicy": "Never", "template": template},
            "Worker": {"replicas": 3, "restartPolicy": "Never", "template": template},
        },
    }
    job["status"] = {"conditions": [{"type": "Running", "status": "True"}]}
    cache.wrote(job)
    kept = cache.jobs.get("ml", "r-a1")
    assert kept is not None
    assert kept["spec"] == {
        "nprocPerNode": "8",
        "runPolicy": {"suspend": True, "cleanPodPolicy": "None"},
        "pytorchReplicaSpecs": {
            "Master": {"replicas": 1, "restartPolicy": "Never"},
            "Worker": {"replicas": 3, "restartPolicy": "Never"},
        },
    }
    assert kept["status"] == job["status"] and kept["metadata"]["labels"] == {LABEL_RUN: "r"}
    assert job_nodes(kept) == 4
    assert "template" in job["spec"]["pytorchReplicaSpecs"]["Master"]  # caller's untouched


def test_a_node_keeps_only_the_status_decisions_read() -> None:
    """Ready and the allocatable GPUs stay; the other conditions, the image list and
    system info go."""
    cache = Cache()
    body = obj("Node", "n1", "7", ns="")
    body["spec"] = {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]}
    ready = {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-23T10:00:00Z"}
    pressure = {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficient"}
    body["status"] = {
        "conditions": [pressure, ready],
        "allocatable": {"nvidia.com/gpu": "8"},
        "images": [{"names": ["registry.example/trainer:1"], "sizeBytes": 6 << 30}],
        "nodeInfo": {"kubeletVersion": "v1.36.0"},
    }
    cache.nodes.put(body)
    kept = cache.nodes.get("", "n1")
    assert kept is not None
    assert kept["status"] == {"conditions": [ready], "allocatable": {"nvidia.com/gpu": "8"}}
    assert kept["spec"] == body["spec"]
    assert node_info(kept) == node_info(body)  # what every decision sees is unchanged
    assert "images" in body["status"]  # the caller's object is left as it was
    assert body["status"]["conditions"] == [pressure, ready]


def test_kept_objects_share_one_copy_of_each_repeated_string() -> None:
    """Keys and short values are shared between kept objects (half the stores' memory at
    1,100 runs on 1,500 nodes); values unique to one object or version are not put in the
    table, and the table is bounded."""
    table = Strings(max_entries=100)

    def node(name: str) -> dict[str, Any]:
        # Built from new strings each time, as a parsed watch event is.
        zone, key = "".join(["us-east-", "1a"]), "".join(["topology.kubernetes.io/", "zone"])
        return {
            "metadata": {"name": name, "uid": f"u-{name}", "labels": {key: zone}},
            "status": {"conditions": [{"type": "Ready", "lastTransitionTime": f"t-{name}"}]},
        }

    a, b = table.copy(node("n1")), table.copy(node("n2"))
    assert a == node("n1") and b == node("n2")  # equal to what came in
    (ka, za), (kb, zb) = a["metadata"]["labels"].popitem(), b["metadata"]["labels"].popitem()
    assert ka is kb and za is zb  # one copy of the label key and of the zone
    assert a["status"]["conditions"][0]["type"] is b["status"]["conditions"][0]["type"]
    # uid and times are unique: kept as they came, never added to the table
    assert "u-n1" not in table and "t-n1" not in table and "us-east-1a" in table
    long_value = "x" * (Strings.MAX_LENGTH + 1)
    assert table.copy({"k": long_value})["k"] is long_value and long_value not in table
    for i in range(150):
        table.one(f"name-{i}")
    assert len(table) <= 100  # started again once full


def test_a_pod_in_the_watch_memory_is_the_cached_one_not_a_copy() -> None:
    """The watch's memory of a pod (kept for deleted pods' last state) shares the cached
    object of the same version; a deleted pod's last state is its own trimmed copy."""
    cache = Cache()
    body = pod("p", "4")
    body["spec"] = {"nodeName": "n1", "containers": [{"name": "pytorch"}]}
    cache.pods.put(body)
    assert cache.pods.as_kept(body) is cache.pods.get("ml", "p")
    cache.pods.delete(pod("p", "5"))
    gone = pod("p", "5")
    gone["spec"] = {"nodeName": "n1", "containers": [{"name": "pytorch"}]}
    last = cache.pods.as_kept(gone)
    assert last["metadata"]["resourceVersion"] == "5" and last["spec"] == {"nodeName": "n1"}


def test_a_node_in_the_watch_memory_shares_the_cached_nodes_strings() -> None:
    """The node the event handler remembers is the cached one, whose strings the store
    shares, not the event's own copies (one set of labels per node, 1,500 nodes)."""
    cache = Cache()
    zone = "topology.kubernetes.io/zone"
    node = {
        "kind": "Node",
        "metadata": {"name": "n1", "resourceVersion": "7", "labels": {zone: "us-east-1a"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    cache.nodes.put(json.loads(json.dumps(node)))  # the event handler's event
    event = json.loads(json.dumps(node))  # the event handler's: same version, new strings
    kept = cache.nodes.as_kept(event)
    assert kept is cache.nodes.get("", "n1")
    memory = Memory()
    memory.observe_node(kept, deleted=False)
    [(key, value)] = memory.nodes()["n1"].labels.items()
    stored_key, stored_value = next(iter(kept["metadata"]["labels"].items()))
    assert key is stored_key and value is stored_value
    assert value is not event["metadata"]["labels"][zone]


def test_a_tombstone_keeps_a_deleted_object_from_coming_back() -> None:
    s = Store("Pod")
    s.put(obj("Pod", "p", "10"))
    s.delete(obj("Pod", "p", "12"))
    assert s.get("ml", "p") is None
    assert not s.put(obj("Pod", "p", "11"))  # an event from before the deletion
    # The DELETE's answer is the object's last state; the watch event of that same
    # state, arriving after it, does not bring the deleted object back (it did: the
    # operator deleted a job twice, the second answered 404).
    assert not s.put(obj("Pod", "p", "12"))
    assert s.get("ml", "p") is None
    assert s.put(obj("Pod", "p", "13"))  # a new object of the same name


def test_the_index_follows_label_changes_and_deletions() -> None:
    s = Store("Pod", indexes={BY_RUN: by_label(LABEL_RUN)})
    s.put(pod("a", "1", run="r1"))
    s.put(pod("b", "2", run="r1"))
    s.put(pod("c", "3", run="r1", ns="other"))
    assert [p["metadata"]["name"] for p in s.indexed(BY_RUN, "ml", "r1")] == ["a", "b"]
    s.put(pod("a", "4", run="r2"))
    assert [p["metadata"]["name"] for p in s.indexed(BY_RUN, "ml", "r1")] == ["b"]
    assert [p["metadata"]["name"] for p in s.indexed(BY_RUN, "ml", "r2")] == ["a"]
    s.delete(pod("b", "5", run="r1"))
    assert s.indexed(BY_RUN, "ml", "r1") == []
    assert len(s) == 2


def on_node(name: str, rv: str, node: str | None, run: str = "r", ns: str = "ml") -> dict[str, Any]:
    body = pod(name, rv, run=run, ns=ns)
    body["spec"] = {"nodeName": node} if node else {}
    return body


def test_the_runs_on_a_node_follow_binding_moves_and_deletions() -> None:
    """What a node's taint or loss wakes: the runs whose pods are bound to it, in every
    namespace; an unbound pod is on no node."""
    c = Cache()
    c.pods.put(on_node("a", "1", "n1", run="r1"))
    c.pods.put(on_node("b", "2", "n1", run="r2", ns="other"))
    c.pods.put(on_node("c", "3", None, run="r3"))
    assert c.runs_on("n1") == {("ml", "r1"), ("other", "r2")}
    c.pods.put(on_node("c", "4", "n1", run="r3"))  # bound by the scheduler
    c.pods.put(on_node("a", "5", "n2", run="r1"))  # a new pod of that name elsewhere
    assert c.runs_on("n1") == {("other", "r2"), ("ml", "r3")}
    assert c.runs_on("n2") == {("ml", "r1")}
    c.pods.delete(on_node("b", "6", "n1", run="r2", ns="other"))
    assert c.runs_on("n1") == {("ml", "r3")} and c.runs_on("n9") == set()


def test_delete_answers_keep_a_pod_that_is_still_stopping() -> None:
    c = Cache()
    c.pods.put(pod("p", "1"))
    stopping = pod(
        "p", "2", deletionTimestamp="2026-01-01T00:00:00Z", deletionGracePeriodSeconds=110
    )
    c.removed(stopping)
    assert c.pods.get("ml", "p") == stopping  # graceful: the kubelet still runs it
    forced = pod("p", "3", deletionTimestamp="2026-01-01T00:00:00Z", deletionGracePeriodSeconds=0)
    c.removed(forced)
    assert c.pods.get("ml", "p") is None
    c.jobs.put(obj("PyTorchJob", "r-a1", "4"))
    c.removed(obj("PyTorchJob", "r-a1", "5"))  # no finalizer: gone at once
    assert c.jobs.get("ml", "r-a1") is None
    c.wrote(obj("PyTorchJob", "r-a2", "6"))
    assert c.jobs.get("ml", "r-a2") is not None
    c.wrote(obj("Secret", "s", "7"))  # not a cached kind: ignored


class CountingApi:
    """The reads CachedReads still sends to the API, counted."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def list_jobs(self, namespace: str, run: str, owner_uid: str) -> dict[int, Any]:
        raise AssertionError("jobs come from the cache")

    def list_pods(self, namespace: str, run: str) -> list[dict[str, Any]]:
        raise AssertionError("pods come from the cache")

    def get_node(self, name: str) -> dict[str, Any] | None:
        raise AssertionError("nodes come from the cache")

    def get_workload(self, namespace: str, job_uid: str) -> dict[str, Any] | None:
        raise AssertionError("workloads come from the cache")

    def missing(self, namespace: str, refs: Sequence[tuple[str, str]]) -> list[str]:
        self.calls.append("missing")
        return []

    def pod_refusal(self, namespace: str, job: Any) -> Rejected | None:
        self.calls.append("pod_refusal")
        return None


SPEC = {
    "image": "i",
    "nodes": 2,
    "checkpoint": {"volume": {"claimName": "c"}},
    "podTemplate": {
        "spec": {
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [{"name": "creds", "secret": {"secretName": "creds"}}],
        }
    },
}


def run(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    status = {"attempt": len(attempts), "attempts": attempts} if attempts else {}
    return {
        "metadata": {"name": "r", "namespace": "ml", "uid": "u", "resourceVersion": "1"},
        "spec": SPEC,
        "status": status,
    }


def job(n: int, suspend: bool = False) -> dict[str, Any]:
    master = {"replicas": 1}
    return {
        "kind": "PyTorchJob",
        "metadata": {
            "name": f"r-a{n}",
            "namespace": "ml",
            "uid": f"j{n}",
            "resourceVersion": str(10 + n),
            "labels": {LABEL_RUN: "r"},
            "ownerReferences": [{"uid": "u"}],
        },
        "spec": {
            "runPolicy": {"suspend": suspend},
            "pytorchReplicaSpecs": {"Master": master, "Worker": {"replicas": 1}},
        },
    }


def look(cache: Cache, body: dict[str, Any]) -> list[str]:
    api = CountingApi()
    obs = observe(
        CachedReads(cache, api), body, remembered_nodes={}, seen_pods=[], interrupted_nodes=[]
    )
    assert obs.ref.name == "r"
    return api.calls


def test_a_running_attempt_is_observed_without_any_api_read() -> None:
    cache = Cache()
    cache.jobs.put(job(1))
    cache.pods.put(pod("r-a1-master-0", "20", spec={"nodeName": "n1"}))
    cache.pods.put(pod("r-a1-worker-0", "21"))
    cache.nodes.put({"kind": "Node", "metadata": {"name": "n1", "resourceVersion": "2"}})
    started = [{"attempt": 1, "startedAt": "2026-01-01T00:00:00Z"}]
    assert look(cache, run(started)) == []
    # Not started yet, but every pod of the gang exists: nothing was refused.
    assert look(cache, run([{"attempt": 1}])) == []


def test_reads_the_api_only_where_a_decision_needs_it() -> None:
    # No attempt yet: the objects the pods need are checked before one is created.
    assert look(Cache(), run([])) == ["missing"]
    # The live attempt has an outcome: the next one may be created in this decision.
    cache = Cache()
    cache.jobs.put(job(1))
    ended = [{"attempt": 1, "outcome": "Preempted", "startedAt": "2026-01-01T00:00:00Z"}]
    assert look(cache, run(ended)) == ["missing"]
    # ... but not while a rank of it still runs on a live node, nor during its backoff:
    # a recovery checks once, when the next attempt is due.
    cache.pods.put(pod("r-a1-master-0", "20", spec={"nodeName": "n1"}))
    cache.nodes.put({"kind": "Node", "metadata": {"name": "n1", "resourceVersion": "2"}})
    assert look(cache, run(ended)) == []
    cache.pods.delete(pod("r-a1-master-0", "22", spec={"nodeName": "n1"}))
    assert look(cache, run(ended)) == ["missing"]
    later = [{**ended[0], "nextAttemptAt": "2999-01-01T00:00:00Z"}]
    assert look(cache, run(later)) == []
    # A finished run creates nothing: its kept job and pods cost no read.
    done = run([{"attempt": 1, "outcome": "Succeeded"}])
    done["status"]["phase"] = "Succeeded"
    assert look(cache, done) == []
    # A job with fewer pods than its gang and not started: its refusals are read from the
    # watch-fed store (test_controller_refusals.py), not from the API.
    cache = Cache()
    cache.jobs.put(job(1))
    assert look(cache, run([{"attempt": 1}])) == []
    # ... unless Kueue holds it suspended (no pod is made then).
    cache = Cache()
    cache.jobs.put(job(1, suspend=True))
    assert look(cache, run([{"attempt": 1}])) == []


class AbsentSecrets(CountingApi):
    def missing(self, namespace: str, refs: Sequence[tuple[str, str]]) -> list[str]:
        assert all(kind != "PersistentVolumeClaim" for kind, _ in refs), "claims are cached"
        self.calls.append("missing")
        return [f"{kind} {name}" for kind, name in refs]


def test_claims_are_checked_in_the_cache_and_the_rest_at_the_api() -> None:
    cache = Cache()
    reads = CachedReads(cache, AbsentSecrets())
    refs = [("PersistentVolumeClaim", "ckpt"), ("Secret", "creds"), ("PersistentVolumeClaim", "x")]
    assert reads.missing("ml", refs) == [
        "PersistentVolumeClaim ckpt",
        "Secret creds",
        "PersistentVolumeClaim x",
    ]
    claim = {"kind": "PersistentVolumeClaim", "spec": {"resources": {}}, "status": {}}
    cache.claims.put({**claim, "metadata": {"name": "ckpt", "namespace": "ml", "uid": "c1",
                                            "resourceVersion": "4"}})  # fmt: skip
    assert reads.missing("ml", refs) == ["Secret creds", "PersistentVolumeClaim x"]
    assert cache.claims.get("ml", "ckpt") == {
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "ckpt", "namespace": "ml", "uid": "c1", "resourceVersion": "4"},
    }  # its existence is all that is kept
    assert reads.missing("other", refs[:1]) == ["PersistentVolumeClaim ckpt"]  # per namespace
    # Only claims: no API call at all.
    api = AbsentSecrets()
    assert CachedReads(cache, api).missing("ml", refs[:1]) == [] and api.calls == []
    # The operator's own create of a claim lands in the cache at once (Cache.wrote).
    cache.wrote({**claim, "metadata": {"name": "x", "namespace": "ml", "resourceVersion": "5"}})
    assert reads.missing("ml", refs) == ["Secret creds"]
    assert cache.sizes()["PersistentVolumeClaim"] == 2  # spotrun_cache_objects{kind}


def test_jobs_of_another_owner_are_not_the_runs() -> None:
    cache = Cache()
    theirs = job(1)
    theirs["metadata"]["ownerReferences"] = [{"uid": "an-earlier-run"}]
    cache.jobs.put(theirs)
    cache.jobs.put(job(2))
    assert list(CachedReads(cache, CountingApi()).list_jobs("ml", "r", "u")) == [2]


def test_tombstones_expire_oldest_first_and_a_reburial_renews_one() -> None:
    now = [0.0]
    s = Store("Pod", clock=lambda: now[0])

    def bury(name: str, rv: str, at: float) -> None:
        now[0] = at
        s.delete(obj("Pod", name, rv))

    bury("a", "10", 0.0)
    bury("b", "20", 300.0)
    bury("a", "11", 500.0)  # buried again: its tombstone is renewed, not the first kept
    bury("c", "30", 950.0)  # b (650 s old) expires; a (450 s) does not
    assert s.put(obj("Pod", "b", "19"))  # no tombstone left to refuse an older version
    assert not s.put(obj("Pod", "a", "9"))
    assert not s.put(obj("Pod", "c", "29"))


def run_with_capacity(name: str, rv: str, available: str | None, ns: str = "ml") -> dict[str, Any]:
    conditions = [{"type": "Running", "status": "False"}]
    if available is not None:
        conditions.append({"type": "CapacityAvailable", "status": available})
    return {
        "kind": "TrainingRun",
        "metadata": {"name": name, "namespace": ns, "uid": f"u-{name}", "resourceVersion": rv},
        "status": {"conditions": conditions},
    }


def test_the_runs_waiting_for_capacity_follow_their_condition() -> None:
    """What a node that joins wakes: the runs whose CapacityAvailable is False, in every
    namespace, and no longer once it turns True (or the run is gone)."""
    c = Cache()
    c.runs.put(run_with_capacity("waits", "1", "False"))
    c.runs.put(run_with_capacity("placed", "2", "True"))
    c.runs.put(run_with_capacity("new", "3", None))
    c.runs.put(run_with_capacity("elsewhere", "4", "False", ns="other"))
    assert c.runs_waiting_for_capacity() == {("ml", "waits"), ("other", "elsewhere")}
    c.runs.put(run_with_capacity("waits", "5", "True"))  # its gang was created and placed
    c.runs.put(run_with_capacity("new", "6", "False"))  # a replacement it waits for
    assert c.runs_waiting_for_capacity() == {("ml", "new"), ("other", "elsewhere")}
    c.runs.delete(run_with_capacity("elsewhere", "7", "False", ns="other"))
    assert c.runs_waiting_for_capacity() == {("ml", "new")}
