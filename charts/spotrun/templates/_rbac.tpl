{{/*
THE ONLY PLACE THE OPERATOR'S PERMISSIONS ARE LISTED. rbac.yaml binds these rules:
clusterwide mode puts "spotrun.rbac.namespacedRules" and "spotrun.rbac.clusterRules" in
one ClusterRole; namespaced mode puts "spotrun.rbac.namespacedRules" in a Role per watched
namespace and "spotrun.rbac.clusterRules" plus "spotrun.rbac.namespaceRules"
(cluster-scoped objects, which a Role cannot grant) in a small ClusterRole. Every verb here is one the operator (or kopf under it) uses; add a
rule only with a comment saying which code needs it.
*/}}

{{- define "spotrun.rbac.namespacedRules" -}}
# TrainingRuns: kopf lists and watches them into the operator's cache (event and index
# handlers only, so kopf never patches them); reconciles read the cache, never the API.
- apiGroups: ["spotrun.dev"]
  resources: ["trainingruns"]
  verbs: ["list", "watch"]
# TrainingRun status: kube.patch_run_status writes phase, attempts, counters, cost and
# conditions. get too, because each run's trainer Role grants get+patch on it and RBAC never
# lets a subject grant more than it holds.
- apiGroups: ["spotrun.dev"]
  resources: ["trainingruns/status"]
  verbs: ["get", "patch"]
# Children carry an ownerReference with blockOwnerDeletion=true; where the
# OwnerReferencesPermissionEnforcement admission plugin runs, that needs update here.
- apiGroups: ["spotrun.dev"]
  resources: ["trainingruns/finalizers"]
  verbs: ["update"]
# Attempts: one PyTorchJob "<run>-a<N>" per attempt; kopf watches them, kube.list_jobs
# lists a run's, kube.create starts one, kube.delete_job stops or clears one.
- apiGroups: ["kubeflow.org"]
  resources: ["pytorchjobs"]
  verbs: ["list", "watch", "create", "delete"]
# Trainer pods: kopf watches and indexes them by node, kube.list_pods classifies a loss,
# kube.delete_pod stops a whole gang gracefully on an interruption notice. create only with
# rbac.podDryRun, for server-side dry runs (--pod-dry-run, kube.check_pods: a pod the
# apiserver would refuse fails the run as InvalidSpec instead of leaving it Pending); off
# by default, since RBAC cannot limit create to dry runs.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", {{- if .Values.rbac.podDryRun }} "create",{{- end }} "delete"]
# The run's checkpoint volume: created when the spec asks for a new claim; the claims a
# run references are watched into the operator's cache (handlers.claim_event) and
# checked there (CachedReads.missing), so a typo fails fast instead of a pod hanging Pending.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["list", "watch", "create"]
# Secrets and ConfigMaps the pod template references: kube.missing checks (metadata only)
# that they exist, so a run fails fast with a clear message. NOTE: get on secrets lets the
# operator read them; drop this rule only once the operator treats 403 as "unknown".
- apiGroups: [""]
  resources: ["configmaps", "secrets"]
  verbs: ["get"]
# The run's trainer identity (kube.create; 409 means it exists).
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["create"]
# The run's Role + RoleBinding: the trainer may get/patch only its own run's status.
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["create"]
# Warm spares (spec.capacity.warmSpares): kube.apply_spares server-side applies the
# run's Deployment "<run>-spares" (patch; create too, since an apply that creates the
# object is authorized as a create), kube.delete_spares removes it when the run ends or
# is suspended. Never read back (no get/list/watch): the spare pods are seen through the
# pods watch.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["create", "patch", "delete"]
{{- if eq .Values.operator.spotNotice "trainThrough" }}
# operator.spotNotice trainThrough (--train-through-notice): each run's PodDisruptionBudget
# "<run>-gang" (kube.create; 409 means it exists), which holds a drain's evictions of the
# trainer pods until the operator moves the gang. Garbage-collected with the run.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create"]
{{- end }}
# Kueue's Workloads (spec.queueName only), watched into the operator's cache: the one
# labelled with an attempt's job UID says why it waits in the queue and why Kueue took it
# back. Harmless where Kueue is not installed.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list", "watch"]
# Events on the TrainingRun (kube.post_event: preemptions, failures, recoveries); list and
# watch for the training operator's FailedCreatePod events on PyTorchJobs (a field
# selector: only those come), which a reconcile reads from the watch's cache while an
# attempt's pods are being made: a pod the apiserver refuses fails the run as InvalidSpec
# instead of leaving it Pending. patch: an identical event posted again bumps the existing
# Event's count, as the Kubernetes event recorder does (recorder.py).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list", "watch", "patch"]
{{- end }}

{{- define "spotrun.rbac.clusterRules" -}}
# Nodes: kopf watches them into the operator's cache for interruption taints (NTH,
# Karpenter), capacity-type and zone labels, NotReady and deletion.
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list", "watch"]
# kopf scans CustomResourceDefinitions to find and follow the resources it serves.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}

{{- define "spotrun.rbac.namespaceRules" -}}
# Namespaced mode only: kopf lists and watches namespaces to start and stop its
# per-namespace watch streams (with --all-namespaces it watches cluster-wide and never
# reads namespaces, so the clusterwide ClusterRole leaves this out).
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}

{{- define "spotrun.rbac.leaderElectionRules" -}}
# Leader election (leaderElection.enabled): leader.py creates the release's Lease the first
# time (kube.create_lease). create cannot be limited to a name (the name is in the body,
# not in the URL RBAC matches), so it is granted on every Lease of the release namespace.
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["create"]
# ... and then reads and renews (or takes over, or releases) that Lease alone
# (kube.get_lease, kube.replace_lease: a compare-and-swap update).
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  resourceNames: [{{ include "spotrun.leaseName" . | quote }}]
  verbs: ["get", "update"]
{{- end }}
