{{/* Names, labels and derived settings shared by the templates. */}}

{{- define "lowbit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lowbit.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "lowbit.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lowbit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lowbit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lowbit.labels" -}}
helm.sh/chart: {{ include "lowbit.chart" . }}
{{ include "lowbit.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: inference-server
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "lowbit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "lowbit.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "lowbit.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Whether API keys are on, and the Secret that holds them. */}}
{{- define "lowbit.apiKeysEnabled" -}}
{{- if or .Values.apiKeys.existingSecret .Values.apiKeys.keys -}}true{{- end -}}
{{- end -}}

{{- define "lowbit.apiKeysSecret" -}}
{{- .Values.apiKeys.existingSecret | default (printf "%s-api-keys" (include "lowbit.fullname" .)) -}}
{{- end -}}

{{/* terminationGracePeriodSeconds: longer than the preStop sleep plus lowbit's drain. */}}
{{- define "lowbit.terminationGracePeriodSeconds" -}}
{{- $drain := add (ceil .Values.lowbit.shutdownTimeout) .Values.preStopSleepSeconds -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add $drain 15 -}}
{{- else if le (int .Values.terminationGracePeriodSeconds) (int $drain) -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be larger than lowbit.shutdownTimeout + preStopSleepSeconds (%v), or the drain is cut short" .Values.terminationGracePeriodSeconds $drain) -}}
{{- else -}}
{{- .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* The device-plugin resource of gpu.vendor (empty without a GPU). */}}
{{- define "lowbit.gpuResource" -}}
{{- if .Values.gpu.vendor -}}
{{- get .Values.gpu.resourceNames .Values.gpu.vendor -}}
{{- end -}}
{{- end -}}

{{/* The KEDA query: total waiting requests of this release's pods. */}}
{{- define "lowbit.kedaQuery" -}}
{{- .Values.autoscaling.keda.query | default (printf "sum(lowbit:num_requests_waiting{namespace=%q,service=%q})" .Release.Namespace (include "lowbit.fullname" .)) -}}
{{- end -}}
