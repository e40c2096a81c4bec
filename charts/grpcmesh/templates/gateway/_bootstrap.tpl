{{/*
The gateway's Envoy bootstrap: what grpcmesh_control.mesh.translate.bootstrap.render_bootstrap renders for an
ingress node (ingress~gateway, node.cluster ingress, ProxyNode metadata with ingress_port 8080)
pointed at the operator's xDS Service, with the health listener on 15021. Only what cannot come
over xDS: identity, the admin interface (127.0.0.1 only) and how to reach the control plane.
node.id here is a placeholder: each pod sets ingress~gateway~<pod name> with --service-node.
With podLocalAddress pod-ip the health listener and its admin cluster leave the file for the
per-pod --config-yaml (grpcmesh.gateway.localOverlay). tests/chart compares this with render_bootstrap and validates it with Envoy.
*/}}
{{- define "grpcmesh.gateway.adminPort" -}}15000{{- end -}}
{{- define "grpcmesh.gateway.healthPort" -}}15021{{- end -}}
{{- define "grpcmesh.gateway.ingressPort" -}}8080{{- end -}}

{{- define "grpcmesh.gateway.xdsRootDir" -}}/etc/grpcmesh/xds-root{{- end -}}
{{- define "grpcmesh.gateway.xdsTokenDir" -}}/var/run/secrets/grpcmesh/xds{{- end -}}

{{- define "grpcmesh.gateway.bootstrap" -}}
{{- $admin := include "grpcmesh.gateway.adminPort" . | int -}}
{{- $auth := .Values.operator.xdsAuthentication -}}
{{- $local := not (include "grpcmesh.podIpLocal" .) -}}
node:
  id: ingress~gateway~unset
  cluster: ingress
  metadata:
    grpcmesh:
      bind_address: 0.0.0.0
      ca_bundle: /etc/ssl/certs/ca-certificates.crt
      egress_port: 15001
      inbound_port: 15006
      ingress_port: {{ include "grpcmesh.gateway.ingressPort" . }}
      {{- include "grpcmesh.gateway.tracingMetadata" . | nindent 6 }}
admin:
  address:
    socket_address: {address: 127.0.0.1, port_value: {{ $admin }}}
dynamic_resources:
  ads_config:
    api_type: DELTA_GRPC
    transport_api_version: V3
    grpc_services:
      {{- if $auth }}
      # gRPC's own client: its STS call credentials re-read the projected token and exchange
      # it at the operator (HTTPS, verified against gRPC's default roots: the deployment sets
      # GRPC_DEFAULT_SSL_ROOTS_FILE_PATH to the mesh root) for the bearer token on the stream;
      # TLS verified against the mesh root the operator publishes (docs/security.md).
      - google_grpc:
          target_uri: {{ include "grpcmesh.xdsAddress" . }}
          channel_credentials:
            ssl_credentials:
              root_certs: {filename: {{ include "grpcmesh.gateway.xdsRootDir" . }}/ca.crt}
          call_credentials:
            - sts_service:
                token_exchange_service_uri: {{ include "grpcmesh.tokenExchangeUri" . }}
                subject_token_path: {{ include "grpcmesh.gateway.xdsTokenDir" . }}/token
                subject_token_type: urn:ietf:params:oauth:token-type:jwt
                audience: grpcmesh
          stat_prefix: xds_grpc
      {{- else }}
      - envoy_grpc: {cluster_name: xds_cluster}
      {{- end }}
    set_node_on_first_message_only: true
  cds_config: {ads: {}, resource_api_version: V3}
  lds_config: {ads: {}, resource_api_version: V3}
static_resources:
  clusters:
    # The control plane, for what the ingress routes there (server reflection); the ADS
    # stream itself uses it too unless xDS authentication gives it gRPC's own client.
    - name: xds_cluster
      type: STRICT_DNS
      connect_timeout: 1s
      load_assignment:
        cluster_name: xds_cluster
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address:
                      address: {{ include "grpcmesh.controlHost" . }}
                      port_value: {{ .Values.operator.ports.xds }}
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options:
              connection_keepalive: {interval: 30s, timeout: 5s}
      {{- if $auth }}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2]
            validation_context:
              trusted_ca: {filename: {{ include "grpcmesh.gateway.xdsRootDir" . }}/ca.crt}
              match_typed_subject_alt_names:
                - san_type: DNS
                  matcher: {exact: {{ include "grpcmesh.controlHost" . }}}
          sni: {{ include "grpcmesh.controlHost" . }}
      {{- end }}
    {{- if $local }}
    {{- include "grpcmesh.gateway.adminCluster" "127.0.0.1" | nindent 4 }}
  listeners:
    {{- include "grpcmesh.gateway.healthListener" (dict "address" "0.0.0.0" "root" .) | nindent 4 }}
    {{- end }}
overload_manager:
  resource_monitors:
    - name: envoy.resource_monitors.global_downstream_max_connections
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
        max_active_downstream_connections: "50000"
{{- end -}}


{{- /* The static cluster through which the health listener reaches the admin interface at
the address given. */ -}}
{{- define "grpcmesh.gateway.adminCluster" -}}
- name: admin
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: admin
    endpoints:
      - lb_endpoints:
          - endpoint:
              address:
                socket_address: {address: {{ . }}, port_value: {{ include "grpcmesh.gateway.adminPort" . }}}
{{- end -}}

{{- /* The listener serving only /ready and /stats/prometheus from the admin interface, for
probes and Prometheus (which cannot reach the admin address). */ -}}
{{- define "grpcmesh.gateway.healthListener" -}}
- name: health
  address:
    socket_address:
      address: {{ .address }}
      port_value: {{ include "grpcmesh.gateway.healthPort" .root }}
  filter_chains:
    - filters:
        - name: envoy.filters.network.http_connection_manager
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
            stat_prefix: health
            route_config:
              name: health
              virtual_hosts:
                - name: health
                  domains: ["*"]
                  routes:
                    - match: {path: /ready}
                      route: {cluster: admin}
                    - match: {path: /stats/prometheus}
                      route: {cluster: admin}
            http_filters:
              - name: envoy.filters.http.router
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
{{- end -}}

{{- /* With podLocalAddress pod-ip: the per-pod part of the bootstrap, for Envoy's --config-yaml
(merged over the shared file, which then leaves it out): admin, the health listener and the
node metadata on $(POD_IP), so that gateway pods sharing the host's network do not collide.
It is what grpcmesh_control.mesh.translate.bootstrap.render_local_overlay renders for the gateway node. */ -}}
{{- define "grpcmesh.gateway.localOverlay" -}}
{{- $address := "$(POD_IP)" -}}
node:
  metadata:
    grpcmesh:
      bind_address: {{ $address }}
      ca_bundle: /etc/ssl/certs/ca-certificates.crt
      egress_port: 15001
      inbound_port: 15006
      ingress_port: {{ include "grpcmesh.gateway.ingressPort" . }}
      local_address: {{ $address }}
      {{- include "grpcmesh.gateway.tracingMetadata" . | nindent 6 }}
admin:
  address:
    socket_address: {address: {{ $address }}, port_value: {{ include "grpcmesh.gateway.adminPort" . }}}
static_resources:
  clusters:
    {{- include "grpcmesh.gateway.adminCluster" $address | nindent 4 }}
  listeners:
    {{- include "grpcmesh.gateway.healthListener" (dict "address" $address "root" .) | nindent 4 }}
{{- end -}}


{{- /* The node metadata's tracing keys, as ProxyNode.metadata() writes them: the collector when
tracing is on, the sampling ratio when it is not the default (0.01). */ -}}
{{- define "grpcmesh.gateway.tracingMetadata" -}}
{{- with .Values.tracing.otlpEndpoint }}
otlp_collector: {{ . | quote }}
{{- end }}
{{- if ne (float64 .Values.tracing.samplingRatio) 0.01 }}
trace_sampling: {{ .Values.tracing.samplingRatio }}
{{- end }}
{{- end -}}
