{{/* Base name of every object: the release name when it already says "graft", else "<release>-graft". */}}
{{- define "graft.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "graft.operatorName" -}}
{{- printf "%s-operator" (include "graft.fullname" .) -}}
{{- end -}}

{{/* Labels the kustomize manifests carry too (app.kubernetes.io/name, part-of, component). */}}
{{- define "graft.selectorLabels" -}}
app.kubernetes.io/name: graft
app.kubernetes.io/component: operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "graft.commonLabels" -}}
app.kubernetes.io/name: graft
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: graft
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "graft.labels" -}}
{{ include "graft.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "graft.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "graft.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "graft.operatorImage" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "graft.trainerImage" -}}
{{- printf "%s:%s" .Values.trainerImage.repository (default .Chart.AppVersion .Values.trainerImage.tag) -}}
{{- end -}}

{{/* The restricted Pod Security profile, shared by the operator and the helm test pod. */}}
{{- define "graft.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "graft.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 1000
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "graft.livenessURL" -}}
{{- printf "http://0.0.0.0:%d/healthz" (int .Values.probePort) -}}
{{- end -}}
