{{/* Names, labels and small shared pieces of the tuneforge chart. */}}

{{- define "tuneforge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-tuneforge, or the release name when it already contains the chart name. Kept at 40 characters
so that "<fullname>-operator" and the other suffixed names stay valid label values (63). */}}
{{- define "tuneforge.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tuneforge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "tuneforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tuneforge
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* selector labels of one component: include "tuneforge.selectorLabels" (list . "api") */}}
{{- define "tuneforge.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "tuneforge.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Trainer pods carry the operator's labels, not the chart's (the operator creates them). */}}
{{- define "tuneforge.trainerSelector" -}}
app.kubernetes.io/managed-by: tuneforge-operator
app.kubernetes.io/component: trainer
{{- end -}}

{{/* image reference: include "tuneforge.image" (list . .Values.api.image) */}}
{{- define "tuneforge.image" -}}
{{- $ctx := index . 0 -}}
{{- $img := index . 1 -}}
{{- $registry := $img.registry | default $ctx.Values.global.imageRegistry -}}
{{- $repo := ternary (printf "%s/%s" $registry $img.repository) $img.repository (ne $registry "") -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo ($img.tag | default $ctx.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "tuneforge.apiServiceAccount" -}}
{{- if .Values.api.serviceAccount.create -}}
{{- .Values.api.serviceAccount.name | default (include "tuneforge.fullname" .) -}}
{{- else -}}
{{- .Values.api.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "tuneforge.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- .Values.operator.serviceAccount.name | default (printf "%s-operator" (include "tuneforge.fullname" .)) -}}
{{- else -}}
{{- .Values.operator.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "tuneforge.trainerServiceAccount" -}}
{{- if .Values.trainer.serviceAccount.create -}}
{{- .Values.trainer.serviceAccount.name | default (printf "%s-trainer" (include "tuneforge.fullname" .)) -}}
{{- else -}}
{{- .Values.trainer.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Secrets: the chart's own, or the user's existing ones */}}
{{- define "tuneforge.databaseSecret" -}}
{{- .Values.database.existingSecret | default (printf "%s-database" (include "tuneforge.fullname" .)) -}}
{{- end -}}

{{- define "tuneforge.authSecret" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "tuneforge.fullname" .)) -}}
{{- end -}}

{{- define "tuneforge.fetcherTokenSecret" -}}
{{- .Values.serving.fetcherToken.existingSecret | default (printf "%s-serving" (include "tuneforge.fullname" .)) -}}
{{- end -}}

{{- define "tuneforge.storageSecret" -}}
{{- .Values.objectStore.existingSecret | default (printf "%s-storage" (include "tuneforge.fullname" .)) -}}
{{- end -}}

{{/* no database configured: SQLite on the service's volume (a try-out: one replica, data lost with the pod
unless api.persistence is enabled) */}}
{{- define "tuneforge.sqlite" -}}
{{- if and (not .Values.database.url) (not .Values.database.existingSecret) -}}true{{- end -}}
{{- end -}}

{{- define "tuneforge.publicUrl" -}}
{{- .Values.api.publicUrl | default (printf "http://%s.%s.svc:%d" (include "tuneforge.fullname" .) .Release.Namespace (int .Values.api.service.port)) -}}
{{- end -}}

{{/* the Prometheus selector of this release's API metrics (ServiceMonitor: job = the Service's name) */}}
{{- define "tuneforge.metricSelector" -}}
job="{{ include "tuneforge.fullname" . }}",namespace="{{ .Release.Namespace }}"
{{- end -}}

{{- define "tuneforge.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsUser }}
fsGroup: {{ .runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "tuneforge.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: [ALL]
{{- end -}}
