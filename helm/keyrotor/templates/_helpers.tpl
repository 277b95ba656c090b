{{/* Chart name, possibly overridden. */}}
{{- define "keyrotor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects: the release name, plus the chart name unless it is in it. */}}
{{- define "keyrotor.fullname" -}}
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

{{- define "keyrotor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "keyrotor.labels" -}}
helm.sh/chart: {{ include "keyrotor.chart" . }}
{{ include "keyrotor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keyrotor
{{- end }}

{{/* Labels that select the operator's pods. */}}
{{- define "keyrotor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keyrotor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "keyrotor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "keyrotor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "keyrotor.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The rules the operator needs in each namespace it watches (cluster-wide: in every namespace).
Only what keyrotor uses; see the comments.
*/}}
{{- define "keyrotor.namespacedRules" -}}
# The resource itself: watch it and write its status. patch: only to remove the finalizer
# that keyrotor before 0.2 set, when such a RotatingSecret is deleted.
- apiGroups: [keyrotor.io]
  resources: [rotatingsecrets]
  verbs: [get, list, watch, patch]
- apiGroups: [keyrotor.io]
  resources: [rotatingsecrets/status]
  verbs: [patch]
# The Secrets it owns (it never writes one it does not own: checked in code). No list or
# watch: it reads each Secret by name.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, update, delete]
# Kubernetes events about each rotation.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# rolloutRestartTargets: read rollout status, patch one pod-template annotation.
- apiGroups: [apps]
  resources: [deployments, statefulsets, daemonsets]
  verbs: [get, patch]
{{- end }}
