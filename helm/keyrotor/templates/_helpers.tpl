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
# The Secrets it owns (it never writes one it does not own: checked in code). list and watch
# feed the drift watch, which asks the API server for metadata only (PartialObjectMetadata) and
# only for Secrets labelled app.kubernetes.io/managed-by=keyrotor; RBAC cannot narrow a list to
# metadata or labels, so a holder of this role could read every Secret in scope (see README).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, update, delete]
# Kubernetes events about each rotation.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# Emergency revocation approvals: watch them, delete each one once judged (its code with it).
- apiGroups: [keyrotor.io]
  resources: [rotationapprovals]
  verbs: [get, list, watch, delete]
# rolloutRestartTargets: read rollout status, patch one pod-template annotation.
- apiGroups: [apps]
  resources: [deployments, statefulsets, daemonsets]
  verbs: [get, patch]
{{- end }}

{{/*
Sharding (sharding.shards). A shard's pods must not match the main Deployment's selector
(name, instance: immutable since 0.1.0, so an upgrade cannot add a label to it), so they carry
the name `<name>-shard` and tell shards apart by component `shard-<shard>`.
Called with (dict "root" $ "shard" NAME).
*/}}
{{- define "keyrotor.shardSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-shard" (include "keyrotor.name" .root) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: shard-{{ .shard }}
{{- end }}

{{/* A shard's Deployment and PodDisruptionBudget name. Called with (dict "root" $ "shard" NAME). */}}
{{- define "keyrotor.shardFullname" -}}
{{- printf "%s-shard-%s" (include "keyrotor.fullname" .root) .shard }}
{{- end }}

{{/*
The operator's pod template, shared by the main Deployment and each shard's. Called with a dict:
root (the chart's context), selectorLabels (the Deployment's selector labels, YAML text),
leaseName (its Lease), shardArgs (`--shard NAME` or `--other-shards A,B`, or none).
*/}}
{{- define "keyrotor.podTemplate" -}}
{{- with .root -}}
{{- /* The audit file (audit.file): a shard appends .shard-<name> to the path. (default dict):
       an upgrade with --reuse-values from a chart before the audit trail has no audit value. */}}
{{- $auditFile := ((.Values.audit | default dict).file | default dict) }}
{{- $auditPath := "" }}
{{- if $auditFile.enabled }}
{{- $auditPath = $auditFile.path }}
{{- if and $.shardArgs (eq (index $.shardArgs 0) "--shard") }}
{{- $auditPath = printf "%s.shard-%s" $auditPath (index $.shardArgs 1) }}
{{- end }}
{{- end -}}
metadata:
  labels:
    {{- $.selectorLabels | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "keyrotor.serviceAccountName" . }}
  automountServiceAccountToken: true
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: keyrotor
      image: {{ include "keyrotor.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - run
        - --log-format
        - {{ .Values.logFormat }}
        - --metrics-port
        - {{ .Values.metrics.port | quote }}
        - --liveness-port
        - {{ .Values.health.port | quote }}
        # Always, even with one replica: a rolling update runs two pods for a moment, and
        # only the Lease holder may write.
        - --leader-elect
        - --leader-election-namespace
        - $(POD_NAMESPACE)
        - --leader-election-id
        - {{ $.leaseName }}
        {{- range $.shardArgs }}
        - {{ . | quote }}
        {{- end }}
        {{- range .Values.watchNamespaces }}
        - --namespace
        - {{ . }}
        {{- end }}
        {{- if $auditPath }}
        - --audit-log
        - {{ $auditPath | quote }}
        {{- end }}
        {{- range .Values.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      env:
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        # The leader publishes http://POD_IP:<health port> on its Lease: a standby that
        # receives a decoy report hands it on there.
        - name: POD_IP
          valueFrom:
            fieldRef:
              fieldPath: status.podIP
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: metrics
          containerPort: {{ .Values.metrics.port }}
          protocol: TCP
        - name: health
          containerPort: {{ .Values.health.port }}
          protocol: TCP
      livenessProbe:
        httpGet:
          path: /healthz
          port: health
        {{- toYaml .Values.livenessProbe | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: health
        {{- toYaml .Values.readinessProbe | nindent 8 }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        # The root filesystem is read-only; Python and libraries may need a scratch /tmp.
        - name: tmp
          mountPath: /tmp
        {{- if $auditPath }}
        # The audit file's directory, written (append-only) by the operator.
        - name: audit
          mountPath: {{ dir $auditPath | quote }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- if $auditPath }}
    - name: audit
      {{- with .Values.audit.volume }}
      {{- toYaml . | nindent 6 }}
      {{- else }}
      emptyDir: {}
      {{- end }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.affinity }}
  affinity:
    {{- toYaml .Values.affinity | nindent 4 }}
  {{- else if gt (int .Values.replicaCount) 1 }}
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector:
              matchLabels:
                {{- $.selectorLabels | nindent 16 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}
