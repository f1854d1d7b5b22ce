{{/*
Labels of every object: the same as manifests/base, plus Helm's bookkeeping labels.
Call with (dict "ctx" $ "component" "webhook"); component may be empty.
*/}}
{{- define "dsguard.labels" -}}
app.kubernetes.io/name: dsguard
app.kubernetes.io/part-of: dsguard
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Pod selector of one component. */}}
{{- define "dsguard.selector" -}}
app.kubernetes.io/name: dsguard
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "dsguard.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The guard's user, exempt from the webhook (its pauses, resumes and rollbacks). */}}
{{- define "dsguard.guardUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:dsguard-guard
{{- end }}

{{/* The restricted container securityContext every dsguard container runs with. */}}
{{- define "dsguard.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Scheduling fields shared by the three Deployments; call with the component's values. */}}
{{- define "dsguard.scheduling" -}}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The webhooks' namespaceSelector: never the release namespace, nor opted-out namespaces. */}}
{{- define "dsguard.namespaceSelector" -}}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values: [{{ .Release.Namespace }}]
    - key: dsguard.io/exclude
      operator: NotIn
      values: ["true"]
{{- end }}

{{- define "dsguard.rules" -}}
rules:
  - apiGroups: [apps]
    apiVersions: [v1]
    resources: [daemonsets]
    operations: [CREATE, UPDATE]
    scope: Namespaced
{{- end }}
