{{- define "weir.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "weir.operator" -}}
{{- printf "%s-operator" (include "weir.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "weir.labels" -}}
app.kubernetes.io/name: weir
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "weir.selectorLabels" -}}
app.kubernetes.io/name: weir
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "weir.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{- /* operator.configApiAuth, checked: a misspelt value fails the install instead of being
passed to a flag that would refuse to start the operator. */ -}}
{{- define "weir.configApiAuth" -}}
{{- $auth := .Values.operator.configApiAuth | default "token-review" -}}
{{- if not (has $auth (list "token-review" "none")) -}}
{{- fail (printf "operator.configApiAuth: %q is neither token-review nor none" $auth) -}}
{{- end -}}
{{- $auth -}}
{{- end -}}
