{{/*
Names, labels and — in one place — the command lines of weft's services, so a change of a
service's flags is a change here only.

Every port in this chart spells out `protocol: TCP`: Helm 4 installs with server-side apply,
and a 1.20 apiserver rejects an applied port list whose entries omit it ("associative list
with keys has an element that omits key field protocol").
*/}}

{{- define "weft.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name; component names append "-etcd", "-api"... so keep it short. */}}
{{- define "weft.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "weft.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; call with (dict "root" $ "component" "api"). */}}
{{- define "weft.labels" -}}
helm.sh/chart: {{ include "weft.chart" .root }}
{{ include "weft.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: weft
{{- end }}

{{/*
Labels of pod templates: no chart version or app version, so a chart bump alone does not
restart every pod (etcd's above all). Call like weft.labels.
*/}}
{{- define "weft.podLabels" -}}
{{ include "weft.selectorLabels" . }}
app.kubernetes.io/part-of: weft
{{- end }}

{{/* Labels that select one component's pods; never change them after a release exists. */}}
{{- define "weft.selectorLabels" -}}
app.kubernetes.io/name: {{ include "weft.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "weft.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "weft.etcd.fullname" -}}
{{- printf "%s-etcd" (include "weft.fullname" .) }}
{{- end }}

{{/* The headless Service that gives each etcd member a stable DNS name for peering. */}}
{{- define "weft.etcd.peerService" -}}
{{- printf "%s-etcd-peer" (include "weft.fullname" .) }}
{{- end }}

{{/* http, or https when TLS is on (etcd then requires client certificates too). */}}
{{- define "weft.etcd.scheme" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/* What weft's services dial: the etcd client Service. */}}
{{- define "weft.etcd.endpoints" -}}
{{- printf "%s://%s:%d" (include "weft.etcd.scheme" .) (include "weft.etcd.fullname" .) (int .Values.etcd.clientPort) }}
{{- end }}

{{/* --initial-cluster for a fresh etcd cluster of .Values.etcd.replicas members. */}}
{{- define "weft.etcd.initialCluster" -}}
{{- $fullname := include "weft.etcd.fullname" . }}
{{- $peers := include "weft.etcd.peerService" . }}
{{- $members := list }}
{{- range $i := until (int .Values.etcd.replicas) }}
{{- $members = append $members (printf "%s-%d=%s://%s-%d.%s.%s.svc.%s:%d" $fullname $i (include "weft.etcd.scheme" $) $fullname $i $peers $.Release.Namespace $.Values.clusterDomain (int $.Values.etcd.peerPort)) }}
{{- end }}
{{- join "," $members }}
{{- end }}

{{- define "weft.api.fullname" -}}
{{- printf "%s-api" (include "weft.fullname" .) }}
{{- end }}

{{- define "weft.api.address" -}}
{{- printf "%s:%d" (include "weft.api.fullname" .) (int .Values.api.service.port) }}
{{- end }}

{{- define "weft.executor.fullname" -}}
{{- printf "%s-executor" (include "weft.fullname" .) }}
{{- end }}

{{- define "weft.executor.serviceAccountName" -}}
{{- if .Values.executor.serviceAccount.create }}
{{- default (include "weft.executor.fullname" .) .Values.executor.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.executor.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "weft.stepsNamespace" -}}
{{- default .Release.Namespace .Values.executor.stepsNamespace }}
{{- end }}

{{- define "weft.tracer.fullname" -}}
{{- printf "%s-tracer" (include "weft.fullname" .) }}
{{- end }}

{{- define "weft.tracer.claimName" -}}
{{- default (printf "%s-tracer" (include "weft.fullname" .)) .Values.tracer.persistence.existingClaim }}
{{- end }}

{{- define "weft.blobs.claimName" -}}
{{- default (printf "%s-blobs" (include "weft.fullname" .)) .Values.blobStore.persistence.existingClaim }}
{{- end }}

{{/* OTLP endpoint of every service: the explicit one, else the chart's tracer, else none.
The tracer by its full DNS name: step pods inherit the endpoint and may run in another
namespace (executor.kube.namespace), where the short Service name does not resolve. */}}
{{- define "weft.otlpEndpoint" -}}
{{- if .Values.otlp.endpoint }}
{{- .Values.otlp.endpoint }}
{{- else if .Values.tracer.enabled }}
{{- printf "%s://%s.%s.svc.%s:%d" (ternary "https" "http" .Values.tls.enabled) (include "weft.tracer.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.tracer.otlpPort) }}
{{- end }}
{{- end }}

{{/* How a service's exporter reaches the chart's own weft-tracer when it is secured:
trusting the chart's CA, sending the services' token (a cluster-wide binding, which span
export needs). Never for an explicit otlp.endpoint: that token is not for other collectors.
After weft.security.env, whose WEFT_PEER_TOKEN the header expands. */}}
{{- define "weft.otlp.securityEnv" -}}
{{- if and .Values.tracer.enabled (not .Values.otlp.endpoint) }}
{{- if .Values.tls.enabled }}
- name: OTEL_EXPORTER_OTLP_CERTIFICATE
  value: /etc/weft/tls/ca.crt
{{- end }}
{{- if .Values.auth.enabled }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  value: "authorization=Bearer%20$(WEFT_PEER_TOKEN)"
{{- end }}
{{- end }}
{{- end }}

{{/* Per-attempt span tokens (weft_core.span_tokens): with auth on and the chart's own
tracer, the executor mints each step pod a token for its run's trace only, and the tracer
verifies it, both with the auth Secret's span-token-key. Never towards an explicit
otlp.endpoint: the token means nothing to other collectors. */}}
{{- define "weft.spanTokens.enabled" -}}
{{- if and .Values.auth.enabled .Values.tracer.enabled (not .Values.otlp.endpoint) }}true{{ end }}
{{- end }}

{{- define "weft.spanTokens.args" -}}
{{- if include "weft.spanTokens.enabled" . }}
- --span-token-key-file=/etc/weft/span-token/span-token.key
{{- end }}
{{- end }}

{{- define "weft.spanTokens.mounts" -}}
{{- if include "weft.spanTokens.enabled" . }}
- name: span-token
  mountPath: /etc/weft/span-token
  readOnly: true
{{- end }}
{{- end }}

{{- define "weft.spanTokens.volumes" -}}
{{- if include "weft.spanTokens.enabled" . }}
- name: span-token
  secret:
    secretName: {{ include "weft.auth.secretName" . }}
    items:
      - key: span-token-key
        path: span-token.key
{{- end }}
{{- end }}

{{/* Environment shared by every weft service; call with (dict "root" $ "service" "weft-api"). */}}
{{- define "weft.commonEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
# Semantic-convention resource attributes; $(POD_NAME) is expanded by Kubernetes.
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "k8s.namespace.name=%s,k8s.pod.name=$(POD_NAME)" .root.Release.Namespace | quote }}
{{- with include "weft.otlpEndpoint" .root }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* Security: names, and what every weft service gets when auth and TLS are on. */}}
{{- define "weft.auth.secretName" -}}
{{- default (printf "%s-auth" (include "weft.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "weft.tls.secretName" -}}
{{- default (printf "%s-tls" (include "weft.fullname" .)) .Values.tls.existingSecret }}
{{- end }}

{{- define "weft.api.serviceAccountName" -}}
{{- printf "%s-api" (include "weft.fullname" .) }}
{{- end }}

{{/* Flags of weft-api, weft-executor and weft-tracer for auth, TLS, each other and etcd. */}}
{{- define "weft.security.args" -}}
{{- if .Values.auth.enabled }}
- --auth-tokens-file=/etc/weft/auth/tokens.yaml
{{- end }}
{{- if .Values.tls.enabled }}
- --tls-cert=/etc/weft/tls/tls.crt
- --tls-key=/etc/weft/tls/tls.key
- --peer-ca-cert=/etc/weft/tls/ca.crt
- --etcd-ca-cert=/etc/weft/tls/ca.crt
- --etcd-client-cert=/etc/weft/tls/tls.crt
- --etcd-client-key=/etc/weft/tls/tls.key
{{- end }}
{{- end }}

{{/* The services' own token, from the auth Secret (never on the command line). */}}
{{/* etcdctl's TLS towards etcd (the CronJobs of templates/operations.yaml), as env so
the commands stay the same with and without TLS. */}}
{{- define "weft.etcdctl.tlsEnv" -}}
{{- if .Values.tls.enabled }}
- name: ETCDCTL_CACERT
  value: /etc/weft/tls/ca.crt
- name: ETCDCTL_CERT
  value: /etc/weft/tls/tls.crt
- name: ETCDCTL_KEY
  value: /etc/weft/tls/tls.key
{{- end }}
{{- end }}

{{- define "weft.etcdctl.tlsMount" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/weft/tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "weft.etcdctl.tlsVolume" -}}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "weft.tls.secretName" . }}
{{- end }}
{{- end }}

{{- define "weft.security.env" -}}
{{- if .Values.auth.enabled }}
- name: WEFT_PEER_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "weft.auth.secretName" . }}
      key: service-token
{{- end }}
{{- end }}

{{- define "weft.security.mounts" -}}
{{- if .Values.auth.enabled }}
- name: auth
  mountPath: /etc/weft/auth
  readOnly: true
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/weft/tls
  readOnly: true
{{- end }}
{{- end }}

{{/* Secret volumes: a rotated Secret shows up in them, and the services re-read it. */}}
{{- define "weft.security.volumes" -}}
{{- if .Values.auth.enabled }}
- name: auth
  secret:
    secretName: {{ include "weft.auth.secretName" . }}
    items:
      - key: tokens.yaml
        path: tokens.yaml
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "weft.tls.secretName" . }}
{{- end }}
{{- end }}

{{/* The command lines. Flags and WEFT_* variables are documented by each service's --help. */}}
{{- define "weft.api.command" -}}
- weft-api
- --etcd-endpoints={{ include "weft.etcd.endpoints" . }}
- --listen=0.0.0.0:{{ .Values.api.port }}
{{- if .Values.blobStore.url }}
- --blob-store={{ .Values.blobStore.url }}
{{- else }}
- --blob-dir={{ .Values.blobStore.mountPath }}
{{- end }}
{{- include "weft.security.args" . }}
{{- if and .Values.auth.enabled .Values.auth.kubeRoles }}
- --auth-kube-roles-file=/etc/weft/kube-roles/kube-roles.yaml
{{- end }}
{{- include "weft.operationArgs" . }}
{{- range .Values.api.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{- define "weft.executor.command" -}}
- weft-executor
- --etcd-endpoints={{ include "weft.etcd.endpoints" . }}
- --runtime=kubernetes
- --namespace={{ include "weft.stepsNamespace" . }}
- --api={{ include "weft.api.address" . }}
{{- /* Step pods may run in another namespace: they dial the api by its full name. */}}
- --pod-api={{ printf "%s.%s.svc.%s:%d" (include "weft.api.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.api.service.port) }}
{{- /* weft's own image runs the input and output containers of every step pod. */}}
- --pod-image={{ include "weft.image" . }}
- --listen=0.0.0.0:{{ .Values.executor.port }}
{{- include "weft.security.args" . }}
{{- if .Values.auth.enabled }}
- --pod-api-token-secret={{ printf "%s-pods-token" (include "weft.fullname" .) }}
{{- end }}
{{- include "weft.spanTokens.args" . }}
{{- if .Values.tls.enabled }}
- --pod-api-ca-secret={{ printf "%s-pods-ca" (include "weft.fullname" .) }}
{{- end }}
{{- if .Values.blobStore.url }}
{{- /* The executor and the step pods' helpers use the bucket directly, not the api. */}}
- --blob-store={{ .Values.blobStore.url }}
{{- if eq .Values.blobStore.podAccess "credentials" }}
{{- with include "weft.blobs.secretName" . }}
- --pod-blob-store-secret={{ . }}
{{- end }}
{{- end }}
{{- end }}
- --max-parallel={{ .Values.executor.maxParallel }}
{{- with .Values.executor.pods.serviceAccountName }}
- --pod-service-account={{ . }}
{{- end }}
{{- with .Values.executor.pods.nodeSelector }}
{{- $pairs := list }}
{{- range $key, $value := . }}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) }}
{{- end }}
- {{ printf "--pod-node-selector=%s" (join "," $pairs) | quote }}
{{- end }}
{{- with .Values.executor.pods.tolerations }}
- {{ printf "--pod-tolerations=%s" (toJson .) | quote }}
{{- end }}
{{- include "weft.operationArgs" . }}
{{- range .Values.executor.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{- define "weft.tracer.command" -}}
- weft-tracer
- --etcd-endpoints={{ include "weft.etcd.endpoints" . }}
- --listen=0.0.0.0:{{ .Values.tracer.otlpPort }}
- --store={{ .Values.tracer.storeDir }}/spans.db
- --retention={{ .Values.tracer.retention.seconds }}
- --retention-bytes={{ .Values.tracer.retention.bytes }}
{{- with .Values.tracer.jaegerEndpoint }}
- --forward={{ . }}
{{- end }}
{{- include "weft.security.args" . }}
{{- include "weft.spanTokens.args" . }}
{{- range .Values.tracer.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
A gRPC health probe of a weft service on .port. Kubernetes >= 1.24 probes gRPC natively;
older clusters (1.20 is supported) run the image's own checker instead.
Call with (dict "root" $ "port" 50051).
*/}}
{{- define "weft.grpcProbe" -}}
{{- $mode := .root.Values.probes.grpc }}
{{- $service := .service | default "" }}
{{- if not (has $mode (list "auto" "native" "exec")) }}
{{- fail (printf "probes.grpc must be auto, native or exec, not %q" $mode) }}
{{- end }}
{{- /* Kubernetes' native gRPC probe speaks no TLS: with TLS on, the exec probe does. */}}
{{- if and (not .root.Values.tls.enabled) (or (eq $mode "native") (and (eq $mode "auto") (semverCompare ">=1.24.0-0" .root.Capabilities.KubeVersion.Version))) }}
grpc:
  port: {{ .port }}
  {{- with $service }}
  service: {{ . }}
  {{- end }}
{{- else }}
exec:
  command:
    - python
    - -m
    - weft_core.healthcheck
    - --addr
    - localhost:{{ .port }}
    {{- if .root.Values.tls.enabled }}
    - --ca-cert
    - /etc/weft/tls/ca.crt
    {{- end }}
    {{- with $service }}
    - --service
    - {{ . }}
    {{- end }}
{{- end }}
{{- end }}

{{/*
Readiness and liveness probes of a gRPC service; call with (dict "root" $ "port" P
"service" "weft.v1.RunService"). Readiness asks about the service (NOT_SERVING while etcd
is unreachable); liveness about the server ("": the process serves).
*/}}
{{- define "weft.grpcProbes" -}}
readinessProbe:
  {{- include "weft.grpcProbe" . | trim | nindent 2 }}
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 3
livenessProbe:
  {{- include "weft.grpcProbe" (dict "root" .root "port" .port) | trim | nindent 2 }}
  initialDelaySeconds: 15
  periodSeconds: 15
  timeoutSeconds: 5
  failureThreshold: 4
{{- end }}

{{/* The pod-level settings every weft pod shares. */}}
{{- define "weft.podCommon" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The Secret with the object store's credentials ("" when none: workload identity). */}}
{{- define "weft.blobs.secretName" -}}
{{- if .Values.blobStore.credentials.existingSecret }}
{{- .Values.blobStore.credentials.existingSecret }}
{{- else if .Values.blobStore.credentials.env }}
{{- printf "%s-blob-store" (include "weft.fullname" .) }}
{{- end }}
{{- end }}

{{/* envFrom of weft-api and weft-executor: the object store's credentials, if any. */}}
{{- define "weft.blobs.envFrom" -}}
{{- if .Values.blobStore.url }}
{{- with include "weft.blobs.secretName" . }}
envFrom:
  - secretRef:
      name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* The blob store's mount in weft-api and weft-executor (none with object storage). */}}
{{- define "weft.blobs.mount" -}}
{{- if not .Values.blobStore.url }}
- name: blobs
  mountPath: {{ .Values.blobStore.mountPath }}
{{- end }}
{{- end }}

{{/* The blob store volume, shared by weft-api and weft-executor (none with object storage). */}}
{{- define "weft.blobs.volume" -}}
{{- if not .Values.blobStore.url }}
- name: blobs
{{- if .Values.blobStore.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "weft.blobs.claimName" . }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end }}
{{- end }}

{{/* Metrics and log flags shared by weft-api and weft-executor. */}}
{{- define "weft.operationArgs" }}
{{- if .Values.metrics.enabled }}
- --metrics-port={{ .Values.metrics.port }}
{{- end }}
- --log-level={{ .Values.logging.level }}
- --log-format={{ .Values.logging.format }}
{{- end }}

{{/* The metrics port of a weft service container, when metrics are on. */}}
{{- define "weft.metricsContainerPort" -}}
{{- if .Values.metrics.enabled }}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
  protocol: TCP
{{- end }}
{{- end }}

{{/*
Spread a component's pods over nodes unless the user set its affinity: preferred (not
required) anti-affinity, so a one-node cluster still schedules them all.
Call with (dict "root" $ "component" "etcd" "affinity" .Values.etcd.affinity).
*/}}
{{- define "weft.affinity" -}}
{{- if .affinity }}
affinity:
  {{- toYaml .affinity | nindent 2 }}
{{- else if .root.Values.spreadPods }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "weft.selectorLabels" . | nindent 14 }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "weft.selectorLabels" . | nindent 8 }}
{{- end }}
{{- end }}

{{/* policy/v1 where the cluster has it (>= 1.21), policy/v1beta1 before (1.20). */}}
{{- define "weft.pdbApiVersion" -}}
{{- if and (.Capabilities.APIVersions.Has "policy/v1") (semverCompare ">=1.21.0-0" .Capabilities.KubeVersion.Version) }}policy/v1{{ else }}policy/v1beta1{{ end }}
{{- end }}

{{/* batch/v1 CronJob where the cluster has it (>= 1.21), batch/v1beta1 before (1.20). */}}
{{- define "weft.cronJobApiVersion" -}}
{{- if semverCompare ">=1.21.0-0" .Capabilities.KubeVersion.Version }}batch/v1{{ else }}batch/v1beta1{{ end }}
{{- end }}

{{/*
Lets in-flight calls end and endpoints drop the pod before SIGTERM: kube-proxy and
clients learn of a terminating pod a moment after it starts terminating.
*/}}
{{- define "weft.preStopDrain" -}}
lifecycle:
  preStop:
    exec:
      command: ["python", "-c", "import time; time.sleep({{ .Values.drainSeconds }})"]
{{- end }}
