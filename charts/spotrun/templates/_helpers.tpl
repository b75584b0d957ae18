{{/* Chart name (nameOverride wins). */}}
{{- define "spotrun.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's resources: fullnameOverride, else the release name when it
already contains the chart name, else "<release>-<chart>". 63 characters at most (DNS label).
*/}}
{{- define "spotrun.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "spotrun.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pods; never change them (Deployment selectors are immutable). */}}
{{- define "spotrun.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spotrun.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels of every resource of the release. */}}
{{- define "spotrun.labels" -}}
helm.sh/chart: {{ include "spotrun.chart" . }}
app.kubernetes.io/name: {{ include "spotrun.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: spotrun
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Name of the leader election Lease (in the release namespace). */}}
{{- define "spotrun.leaseName" -}}
{{- include "spotrun.fullname" . }}
{{- end }}

{{/* Name of the operator's ServiceAccount. */}}
{{- define "spotrun.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "spotrun.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: repository@digest when a digest is set, else repository:tag (tag defaults to appVersion). */}}
{{- define "spotrun.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The Prometheus job name of the operator's metrics. Fixed (not per release) so the alert
rules, which are a verbatim copy of alerts/spotrun.rules.yaml, can name it; the
ServiceMonitor sets it through jobLabel.
*/}}
{{- define "spotrun.metricsJob" -}}spotrun-operator{{- end }}

{{/* The Prometheus job name of the trainer pods' metrics (set by the PodMonitor). */}}
{{- define "spotrun.trainerJob" -}}spotrun-trainer{{- end }}

{{/*
Whether a prometheus-operator object is rendered. Called with (list <enabled> $ <Kind>):
true renders it, false never, "auto" only when the cluster serves monitoring.coreos.com/v1
<Kind> (`helm template` knows that only through --api-versions). Renders "true" or nothing.
*/}}
{{- define "spotrun.monitoringEnabled" -}}
{{- $enabled := toString (index . 0) }}
{{- $root := index . 1 }}
{{- $kind := index . 2 }}
{{- if eq $enabled "true" }}true
{{- else if and (eq $enabled "auto") ($root.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" $kind)) }}true
{{- end }}
{{- end }}

{{/* Fails early on combinations the schema cannot express clearly. */}}
{{- define "spotrun.validate" -}}
{{- if and (eq .Values.watch.mode "namespaced") (not .Values.watch.namespaces) }}
{{- fail "watch.namespaces: list at least one namespace when watch.mode is namespaced" }}
{{- end }}
{{- if eq (int .Values.operator.healthPort) (int .Values.operator.metricsPort) }}
{{- fail "operator.metricsPort: must differ from operator.healthPort" }}
{{- end }}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicas: more than 1 needs leaderElection.enabled (without it every replica would act on every TrainingRun)" }}
{{- end }}
{{- with .Values.leaderElection }}
{{- if and .enabled (le (float64 .leaseDurationSeconds) (float64 .renewDeadlineSeconds)) }}
{{- fail "leaderElection.renewDeadlineSeconds: must be below leaseDurationSeconds" }}
{{- end }}
{{- if and .enabled (le (float64 .renewDeadlineSeconds) (mulf 1.2 .retryPeriodSeconds)) }}
{{- fail "leaderElection.retryPeriodSeconds: renewDeadlineSeconds must exceed 1.2 times it" }}
{{- end }}
{{- end }}
{{- if and (eq .Values.watch.mode "clusterwide") .Values.watch.namespaces }}
{{- fail "watch.namespaces: must be empty when watch.mode is clusterwide (set watch.mode: namespaced)" }}
{{- end }}
{{- end }}
