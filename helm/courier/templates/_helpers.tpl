{{/* The chart's name. */}}
{{- define "courier.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name: <release>-courier, or the release name when it already says courier. */}}
{{- define "courier.fullname" -}}
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

{{/* Labels on everything. */}}
{{- define "courier.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "courier.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: courier
{{- end }}

{{/* Selector labels of one tier: (dict "root" $ "tier" "api"). */}}
{{- define "courier.selector" -}}
app.kubernetes.io/name: {{ include "courier.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .tier }}
{{- end }}

{{/* Labels of one tier's objects. */}}
{{- define "courier.tierLabels" -}}
{{ include "courier.labels" .root }}
app.kubernetes.io/component: {{ .tier }}
{{- end }}

{{- define "courier.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "courier.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "courier.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret with the URLs and the internal secret. */}}
{{- define "courier.secretName" -}}
{{- .Values.existingSecret | default (printf "%s-secrets" (include "courier.fullname" .)) }}
{{- end }}

{{/* DNS names of the headless Services discovery follows. */}}
{{- define "courier.logicHeadless" -}}
{{ include "courier.fullname" . }}-logic-headless
{{- end }}
{{- define "courier.connectHeadless" -}}
{{ include "courier.fullname" . }}-connect-headless
{{- end }}

{{/* Environment every tier shares: the ConfigMap, the Secret, this pod's address. */}}
{{- define "courier.env" -}}
- name: COURIER_ADVERTISE_HOST
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- if and (eq .Values.discovery.mode "consul") (not .Values.consul.address) }}
- name: HOST_IP
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
- name: CONSUL_HTTP_ADDR
  value: "$(HOST_IP):8500"
{{- end }}
- name: COURIER_POSTGRES
  valueFrom:
    secretKeyRef:
      name: {{ include "courier.secretName" . }}
      key: postgres-url
- name: COURIER_REDIS
  valueFrom:
    secretKeyRef:
      name: {{ include "courier.secretName" . }}
      key: redis-url
- name: COURIER_INTERNAL_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "courier.secretName" . }}
      key: internal-secret
{{- if eq .Values.discovery.mode "consul" }}
- name: CONSUL_HTTP_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "courier.secretName" . }}
      key: consul-token
      optional: true
{{- end }}
{{- end }}

{{/* The pod-level parts every tier shares: (dict "root" $ "tier" "api" "values" .Values.api). */}}
{{- define "courier.podSpec" -}}
serviceAccountName: {{ include "courier.serviceAccountName" .root }}
automountServiceAccountToken: false
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .root.Values.topologySpread.enabled }}
topologySpreadConstraints:
  - maxSkew: {{ .root.Values.topologySpread.maxSkew }}
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "courier.selector" . | nindent 8 }}
  - maxSkew: {{ .root.Values.topologySpread.maxSkew }}
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "courier.selector" . | nindent 8 }}
{{- end }}
volumes:
  - name: data
    emptyDir: {}
  - name: tmp
    emptyDir: {}
{{- end }}

{{/* The container parts every tier shares: (dict "root" $ "values" .Values.api), with "env" for the tier's own variables. */}}
{{- define "courier.container" -}}
image: {{ include "courier.image" .root }}
imagePullPolicy: {{ .root.Values.image.pullPolicy }}
envFrom:
  - configMapRef:
      name: {{ include "courier.fullname" .root }}-config
env:
  {{- include "courier.env" .root | nindent 2 }}
  {{- with .env }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- with .values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
securityContext:
  {{- toYaml .root.Values.securityContext | nindent 2 }}
resources:
  {{- toYaml .values.resources | nindent 2 }}
volumeMounts:
  - name: data
    mountPath: /var/lib/courier
  - name: tmp
    mountPath: /tmp
livenessProbe:
  httpGet:
    path: /healthz
    port: admin
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: admin
  periodSeconds: 5
  failureThreshold: 2
startupProbe:
  httpGet:
    path: /healthz
    port: admin
  periodSeconds: 2
  failureThreshold: 60
{{- end }}

{{/* A pod template's metadata: (dict "root" $ "tier" "api"). */}}
{{- define "courier.podMetadata" -}}
labels:
  {{- include "courier.selector" . | nindent 2 }}
  {{- with .root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
  {{- with .root.Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
