"""Envoy's config for bench/scale: N services as N virtual hosts (Host svc-I), each a 90/10
weighted split over two STATIC clusters, routes from a file (RDS over a path) so a weight
step is a file swap. Usage: envoy.py N UP1 UP2 PORT ADMIN DIR [CANARY_WEIGHT_OF_SVC_0]
writes DIR/envoy.json and DIR/rds.json (the latter alone when CANARY_WEIGHT is given)."""
import sys
n=int(sys.argv[1]); up1, up2 = sys.argv[2], sys.argv[3]; port=sys.argv[4]; admin=sys.argv[5]; d=sys.argv[6]
def rds(canary):
    vhs=[]
    for i in range(n):
        w = canary if i == 0 else 10
        vhs.append(f'{{"name":"svc-{i}","domains":["svc-{i}"],"routes":[{{"match":{{"prefix":"/"}},"route":{{"weighted_clusters":{{"clusters":[{{"name":"svc-{i}-primary","weight":{100-w}}},{{"name":"svc-{i}-canary","weight":{w}}}]}}}}}}]}}')
    return '{"resources":[{"@type":"type.googleapis.com/envoy.config.route.v3.RouteConfiguration","name":"routes","virtual_hosts":[' + ",".join(vhs) + ']}]}'
if len(sys.argv) > 7:
    open(f"{d}/rds.next.json", "w").write(rds(int(sys.argv[7])))
    sys.exit(0)
open(f"{d}/rds.json","w").write(rds(10))
clusters=[]
for i in range(n):
    for v,p in (("primary",up1),("canary",up2)):
        clusters.append(f'{{"name":"svc-{i}-{v}","type":"STATIC","connect_timeout":"2s","load_assignment":{{"cluster_name":"svc-{i}-{v}","endpoints":[{{"lb_endpoints":[{{"endpoint":{{"address":{{"socket_address":{{"address":"127.0.0.1","port_value":{p}}}}}}}}}]}}]}}}}')
cfg = f'''{{"node":{{"id":"bench","cluster":"bench"}},"admin":{{"address":{{"socket_address":{{"address":"127.0.0.1","port_value":{admin}}}}}}},
"static_resources":{{"listeners":[{{"name":"http","address":{{"socket_address":{{"address":"127.0.0.1","port_value":{port}}}}},
"filter_chains":[{{"filters":[{{"name":"envoy.filters.network.http_connection_manager","typed_config":{{"@type":"type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager","stat_prefix":"scale",
"rds":{{"route_config_name":"routes","config_source":{{"path_config_source":{{"path":"{d}/rds.json"}},"resource_api_version":"V3"}}}},
"http_filters":[{{"name":"envoy.filters.http.router","typed_config":{{"@type":"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}}}]}}}}]}}]}}],
"clusters":[{",".join(clusters)}]}}}}'''
open(f"{d}/envoy.json","w").write(cfg)
