"""``make demo EXAMPLE=<name>``: one example workload on the local cluster, as a user runs
it, through one real interruption (example_story.py), with its story printed."""

from __future__ import annotations

import time

import yaml
from kubernetes import client

from spotrun_dev import (
    chart_install,
    cluster,
    cluster_apply,
    example_images,
    example_story,
    realnodes,
)
from spotrun_dev.demo import CRD, WatchTable, say


def run(name: str) -> int:
    plan = example_story.plan_of(name)
    started = time.monotonic()
    namespace = f"spotrun-demo-{name.replace('_', '-')}"
    local = cluster.ensure_cluster()
    with local.api_client() as api:
        core = client.CoreV1Api(api)
        say(f"images: the trainer, and {example_images.image_ref(name)} on it (in the registry)")
        built = realnodes.built_images()  # ensure_cluster built them and the examples
        realnodes.ensure_real_nodes(core)
        say("helm install charts/spotrun: the operator runs as a pod on a real node")
        cluster.fresh_namespace(core, namespace)
        cluster_apply.apply_manifests(api, [yaml.safe_load(CRD.read_text())])
        chart_install.install_operator(core, namespace, built["operator"].ref)
        story = example_story.ExampleStory(api, namespace, plan)
        watcher = WatchTable(namespace)
        try:
            say(f"kubectl apply -f manifests/examples/{plan.manifest} (volume: a shared folder)")
            story.start()
            say(f"at step {plan.at_step}: {plan.signal} on the node of the run (for real)")
            story.interrupt()
            results = story.finish()
        finally:
            watcher.stop()
    say("what happened, from the example's own log and the operator's status")
    print(example_story.describe(plan, results))
    for res in results.values():
        say(f"the last lines {res.name} printed")
        print(res.log_tail)
    say("what it would cost on EKS")
    print(f"kubectl spotrun estimate -f manifests/examples/{plan.manifest} --hours <H>")
    print(f"\ndemo took {time.monotonic() - started:.0f}s; namespace {namespace} is kept")
    ok = all(
        r.status.get("phase") == "Succeeded" and r.metric is not None for r in results.values()
    )
    return 0 if ok else 1
