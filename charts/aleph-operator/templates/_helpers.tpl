{{/*
The chart's name, overridable.
*/}}
{{- define "aleph-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: the release name alone when it already contains the
chart's name.
*/}}
{{- define "aleph-operator.fullname" -}}
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

{{- define "aleph-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aleph-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aleph-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "aleph-operator.labels" -}}
helm.sh/chart: {{ include "aleph-operator.chart" . }}
{{ include "aleph-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: aleph
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "aleph-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "aleph-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "aleph-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
"true" when leader election is on: asked for, or forced by more than one replica (two
reconciling replicas would fight over every object).
*/}}
{{- define "aleph-operator.leaderElect" -}}
{{- if or .Values.operator.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ else }}false{{ end }}
{{- end }}

{{- define "aleph-operator.leaseName" -}}
{{- default (include "aleph-operator.fullname" .) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{/*
An Argo CD sync-wave annotation, when enabled. Call with (list $ "wave").
*/}}
{{- define "aleph-operator.syncWave" -}}
{{- $root := index . 0 }}
{{- if $root.Values.argocd.syncWaves -}}
argocd.argoproj.io/sync-wave: {{ index . 1 | quote }}
{{- end }}
{{- end }}

{{/*
The gateway's labels: its own name, so that the operator's selectors never take its pods.
*/}}
{{- define "aleph-gateway.selectorLabels" -}}
app.kubernetes.io/name: aleph-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "aleph-gateway.fullname" -}}
{{- printf "%s-gateway" (include "aleph-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aleph-gateway.labels" -}}
helm.sh/chart: {{ include "aleph-operator.chart" . }}
{{ include "aleph-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/part-of: aleph
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "aleph-gateway.image" -}}
{{- $i := .Values.gateway.image }}
{{- if $i.digest }}
{{- printf "%s@%s" $i.repository $i.digest }}
{{- else }}
{{- printf "%s:%s" $i.repository (default .Chart.AppVersion $i.tag) }}
{{- end }}
{{- end }}
