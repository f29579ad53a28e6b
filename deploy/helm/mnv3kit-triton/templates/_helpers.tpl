{{- define "triton.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "triton.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "triton.labels" -}}
{{ include "triton.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "triton.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{- define "triton.secretName" -}}
{{ .Values.triton.restrictedApi.existingSecret | default (printf "%s-api-key" (include "triton.fullname" .)) }}
{{- end -}}

{{/* Value combinations the schema cannot express; checked before anything renders. */}}
{{- define "triton.check" -}}
{{- $repo := .Values.modelRepository -}}
{{- if and (eq $repo.source "url") (not (regexMatch "^(s3|gs|as)://" $repo.url)) -}}
{{- fail (printf "modelRepository.url must be s3://, gs:// or as:// for source url, got %q" $repo.url) -}}
{{- end -}}
{{- if and (eq $repo.source "url") .Values.tensorrt.buildPlan (eq .Values.mode "deployment") -}}
{{- fail "tensorrt.buildPlan needs a copy of the repository in the pod, which source url does not make: build the plan beforehand and set tensorrt.buildPlan=false" -}}
{{- end -}}
{{- if and (eq $repo.source "image") (not $repo.image.repository) -}}
{{- fail "modelRepository.image.repository is required for source image" -}}
{{- end -}}
{{- if and .Values.triton.restrictedApi.enabled (not .Values.triton.restrictedApi.existingSecret) (not .Values.triton.restrictedApi.key) -}}
{{- fail "restricted APIs need a key: set triton.restrictedApi.existingSecret (a Secret you made) or triton.restrictedApi.key" -}}
{{- end -}}
{{- end -}}

{{/* Triton's flags: the same as the compose service (docker-compose.yml), the key taken from the Secret via $(TRITON_API_KEY). */}}
{{- define "triton.args" -}}
{{- $t := .Values.triton -}}
- --model-control-mode={{ $t.modelControlMode }}
- --strict-readiness={{ $t.strictReadiness }}
- --exit-on-error={{ $t.exitOnError }}
- --exit-timeout-secs={{ $t.exitTimeoutSecs }}
- --log-verbose={{ $t.logVerbose }}
{{- if $t.restrictedApi.enabled }}
- --http-restricted-api={{ join "," $t.restrictedApi.apis }}:{{ $t.restrictedApi.header }}=$(TRITON_API_KEY)
- --grpc-restricted-protocol={{ join "," $t.restrictedApi.apis }}:{{ $t.restrictedApi.header }}=$(TRITON_API_KEY)
{{- end }}
{{- range $t.extraArgs }}
- {{ . }}
{{- end }}
{{- end -}}

{{- define "triton.env" -}}
{{- if .Values.triton.restrictedApi.enabled }}
- name: TRITON_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "triton.secretName" . }}
      key: {{ .Values.triton.restrictedApi.secretKey }}
{{- end }}
- name: HOME
  value: /tmp
{{- end -}}

{{/* true when the repository is copied into an emptyDir of the pod (writable, so the plan can be built there). */}}
{{- define "triton.localCopy" -}}
{{- if or (eq .Values.modelRepository.source "image") (and (eq .Values.modelRepository.source "pvc") .Values.tensorrt.buildPlan) -}}true{{- end -}}
{{- end -}}
