{{/*
The gateway's Envoy bootstrap: what grpcmesh_control.bootstrap.render_bootstrap renders for an
ingress node (ingress~gateway, node.cluster ingress, ProxyNode metadata with ingress_port 8080)
pointed at the operator's xDS Service, with the health listener on 15021. Only what cannot come
over xDS: identity, the admin interface (127.0.0.1 only) and how to reach the control plane.
node.id here is a placeholder: each pod sets ingress~gateway~<pod name> with --service-node.
tests/chart compares this with render_bootstrap and validates it with Envoy.
*/}}
{{- define "grpcmesh.gateway.adminPort" -}}15000{{- end -}}
{{- define "grpcmesh.gateway.healthPort" -}}15021{{- end -}}
{{- define "grpcmesh.gateway.ingressPort" -}}8080{{- end -}}

{{- define "grpcmesh.gateway.bootstrap" -}}
{{- $admin := include "grpcmesh.gateway.adminPort" . | int -}}
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
admin:
  address:
    socket_address: {address: 127.0.0.1, port_value: {{ $admin }}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services:
      - envoy_grpc: {cluster_name: xds_cluster}
    set_node_on_first_message_only: true
  cds_config: {ads: {}, resource_api_version: V3}
  lds_config: {ads: {}, resource_api_version: V3}
static_resources:
  clusters:
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
    - name: admin
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: admin
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {address: 127.0.0.1, port_value: {{ $admin }}}
  listeners:
    - name: health
      address:
        socket_address:
          address: 0.0.0.0
          port_value: {{ include "grpcmesh.gateway.healthPort" . }}
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
overload_manager:
  resource_monitors:
    - name: envoy.resource_monitors.global_downstream_max_connections
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
        max_active_downstream_connections: "50000"
{{- end -}}
