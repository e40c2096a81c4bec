{{/*
Names, labels and images shared by every template (and by templates/monitoring).

  include "grpcmesh.fullname" .          <release>-grpcmesh, or <release> when it contains "grpcmesh"
  include "grpcmesh.labels" .            common labels (app.kubernetes.io/*, helm.sh/chart)
  include "grpcmesh.selectorLabels" .    name + instance; add app.kubernetes.io/component yourself
  include "grpcmesh.image" (dict "image" .Values.operator.image "root" $)
  include "grpcmesh.controlService" .    <fullname>-control: xDS, webhooks, metrics
*/}}

{{- define "grpcmesh.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "grpcmesh.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "grpcmesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "grpcmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "grpcmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "grpcmesh.labels" -}}
{{ include "grpcmesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: grpcmesh
helm.sh/chart: {{ include "grpcmesh.chart" . }}
{{- end -}}

{{/* registry/repository (repository alone for an empty registry), then @digest or :tag. */}}
{{- define "grpcmesh.image" -}}
{{- $image := .image -}}
{{- $registry := .root.Values.global.imageRegistry | default $image.registry -}}
{{- $ref := $image.repository -}}
{{- if $registry -}}
{{- $ref = printf "%s/%s" $registry $image.repository -}}
{{- end -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $ref $image.digest -}}
{{- else -}}
{{- $tag := $image.tag | default .root.Chart.AppVersion -}}
{{- if eq $tag "latest" -}}
{{- fail (printf "image %s: the tag latest is not allowed; pin a version or a digest" $ref) -}}
{{- end -}}
{{- printf "%s:%s" $ref $tag -}}
{{- end -}}
{{- end -}}

{{- define "grpcmesh.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- .Values.operator.serviceAccount.name | default (printf "%s-operator" (include "grpcmesh.fullname" .)) -}}
{{- else -}}
{{- .Values.operator.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "grpcmesh.controlService" -}}
{{- printf "%s-control" (include "grpcmesh.fullname" .) -}}
{{- end -}}

{{/* The control Service's DNS name: the webhook host and the xDS host. */}}
{{- define "grpcmesh.controlHost" -}}
{{- printf "%s.%s.svc" (include "grpcmesh.controlService" .) .Release.Namespace -}}
{{- end -}}

{{- define "grpcmesh.xdsAddress" -}}
{{- printf "%s:%d" (include "grpcmesh.controlHost" .) (int .Values.operator.ports.xds) -}}
{{- end -}}

{{- define "grpcmesh.xdsRootConfigMap" -}}
{{- printf "%s-xds-root" (include "grpcmesh.fullname" .) -}}
{{- end -}}

{{/* HTTPS, with the operator's xDS certificate: the Envoys verify it against the mesh root
given to gRPC as its default roots (GRPC_DEFAULT_SSL_ROOTS_FILE_PATH). */}}
{{- define "grpcmesh.tokenExchangeUri" -}}
{{- printf "https://%s:%d/token" (include "grpcmesh.controlHost" .) (int .Values.operator.ports.tokenExchange) -}}
{{- end -}}

{{- define "grpcmesh.meshCaSecret" -}}
{{- printf "%s-mesh-ca" (include "grpcmesh.fullname" .) -}}
{{- end -}}

{{- define "grpcmesh.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "grpcmesh.fullname" .) -}}
{{- end -}}

{{- define "grpcmesh.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets -}}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* Pod Security Standards restricted, plus a read-only root filesystem. Argument: the uid. */}}
{{- define "grpcmesh.containerSecurityContext" -}}
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
privileged: false
readOnlyRootFilesystem: true
runAsGroup: {{ . }}
runAsNonRoot: true
runAsUser: {{ . }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "grpcmesh.podSecurityContext" -}}
runAsNonRoot: true
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Scheduling fields of a pod spec. Argument: dict "values" <component values> "selector" <labels>;
a topology spread constraint without a labelSelector gets the component's selector labels.
*/}}
{{- define "grpcmesh.scheduling" -}}
{{- $v := .values -}}
{{- $out := include "grpcmesh.schedulingFields" . | trim -}}
{{- $out -}}
{{- end -}}

{{- define "grpcmesh.schedulingFields" -}}
{{- $v := .values -}}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $v.topologySpreadConstraints }}
topologySpreadConstraints:
{{- range $v.topologySpreadConstraints }}
  {{- $c := deepCopy . }}
  {{- if not $c.labelSelector }}
  {{- $_ := set $c "labelSelector" (dict "matchLabels" $.selector) }}
  {{- end }}
  - {{- toYaml $c | nindent 4 }}
{{- end }}
{{- end }}
{{- end -}}

{{/* "true" when pods' containers meet on the pod IP (podLocalAddress pod-ip), else empty. */}}
{{- define "grpcmesh.podIpLocal" -}}
{{- if eq .Values.podLocalAddress "pod-ip" }}true{{ end -}}
{{- end -}}
