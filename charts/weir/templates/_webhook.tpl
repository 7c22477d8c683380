{{- /* Names and pieces of the sidecar injection webhook, shared by webhook.yaml,
certmanager.yaml, rbac.yaml and the operator Deployment. */ -}}

{{- define "weir.webhook.configName" -}}
{{- printf "%s-sidecar-injector" (include "weir.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "weir.webhook.service" -}}
{{- printf "%s-webhook" (include "weir.operator" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "weir.webhook.secret" -}}
{{- default (printf "%s-webhook-tls" (include "weir.fullname" .)) .Values.webhook.secretName | trunc 253 -}}
{{- end -}}

{{- define "weir.webhook.certificate" -}}
{{- printf "%s-webhook" (include "weir.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "weir.proxyImage" -}}
{{- printf "%s:%s" .Values.proxy.image.repository (default .Chart.AppVersion .Values.proxy.image.tag) -}}
{{- end -}}

{{- define "weir.initImage" -}}
{{- printf "%s:%s" .Values.init.image.repository (default .Chart.AppVersion .Values.init.image.tag) -}}
{{- end -}}

{{- /* Where cert-manager's Secret is mounted in the operator pod. */ -}}
{{- define "weir.webhook.certDir" -}}/etc/weir/webhook-tls{{- end -}}

{{- /* The operator container's webhook arguments (a YAML list, to nindent into `args`). */ -}}
{{- define "weir.webhook.args" -}}
{{- if .Values.injection.enabled -}}
- --webhook-listen=0.0.0.0:{{ .Values.webhook.port }}
- --webhook-config={{ include "weir.webhook.configName" . }}
- --webhook-service={{ include "weir.webhook.service" . }}
{{- if .Values.webhook.certManager.enabled }}
- --webhook-cert-dir={{ include "weir.webhook.certDir" . }}
{{- else }}
- --webhook-secret={{ include "weir.webhook.secret" . }}
{{- end }}
- --native-sidecars={{ .Values.injection.nativeSidecars }}
- --proxy-image={{ include "weir.proxyImage" . }}
- --init-image={{ include "weir.initImage" . }}
{{- with .Values.injection.imagePullPolicy }}
- --proxy-image-pull-policy={{ . }}
{{- end }}
- --proxy-control-plane=http://{{ include "weir.operator" . }}.{{ .Release.Namespace }}.svc:{{ .Values.operator.configApiPort }}
- --proxy-cpu={{ dig "requests" "cpu" "" .Values.proxy.resources }}
- --proxy-memory={{ dig "requests" "memory" "" .Values.proxy.resources }}
- --proxy-cpu-limit={{ dig "limits" "cpu" "" .Values.proxy.resources }}
- --proxy-memory-limit={{ dig "limits" "memory" "" .Values.proxy.resources }}
- --proxy-threads={{ .Values.proxy.threads }}
- --proxy-log-level={{ .Values.proxy.logLevel }}
{{- end }}
{{- end -}}

{{- /* The operator container's webhook port (a YAML list item, to nindent into `ports`). */ -}}
{{- define "weir.webhook.ports" -}}
{{- if .Values.injection.enabled -}}
- name: webhook
  containerPort: {{ .Values.webhook.port }}
{{- end }}
{{- end -}}

{{- /* cert-manager mode: the mounted Secret (nindent into the container's `volumeMounts`
and the pod's `volumes`; both empty otherwise). */ -}}
{{- define "weir.webhook.volumeMounts" -}}
{{- if and .Values.injection.enabled .Values.webhook.certManager.enabled -}}
- name: webhook-tls
  mountPath: {{ include "weir.webhook.certDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "weir.webhook.volumes" -}}
{{- if and .Values.injection.enabled .Values.webhook.certManager.enabled -}}
- name: webhook-tls
  secret:
    secretName: {{ include "weir.webhook.secret" . }}
{{- end }}
{{- end -}}

{{- /* Namespaces never injected: the release's, kube-system and the configured ones. */ -}}
{{- define "weir.webhook.excludedNamespaces" -}}
{{- $excluded := list .Release.Namespace "kube-system" -}}
{{- range .Values.injection.excludeNamespaces -}}
{{- $excluded = append $excluded . -}}
{{- end -}}
{{- toJson ($excluded | uniq) -}}
{{- end -}}
