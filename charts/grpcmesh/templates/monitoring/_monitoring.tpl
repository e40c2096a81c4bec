{{/*
Monitoring objects (PodMonitors, ServiceMonitor, PrometheusRule, dashboard ConfigMaps) are built
from files/, which `make chart-assets` generates from operator/grpcmesh_control/observability/.
Only metadata and the scrape interval come from values.
*/}}

{{/* The chart's standard labels plus monitoring.labels (e.g. kube-prometheus-stack's release),
as YAML. The standard labels win a clash. */}}
{{- define "grpcmesh.monitoring.labels" -}}
{{- $standard := include "grpcmesh.labels" . | fromYaml -}}
{{- toYaml (merge $standard (deepCopy (.Values.monitoring.labels | default dict))) -}}
{{- end -}}

{{/* files/scrape.yaml: podMonitors (name, spec) and controlPlaneEndpoint (path, relabelings,
for the operator's ServiceMonitor). */}}
{{- define "grpcmesh.monitoring.scrape" -}}
{{- .Files.Get "files/scrape.yaml" -}}
{{- end -}}
