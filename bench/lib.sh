# Shared helpers for bench/run and bench/mirror. Everything listens on 127.0.0.1 only.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
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

# weir with the given routes block; sets WEIR_PORT and WEIR_PID.
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
      primary: { endpoints: ["127.0.0.1:$UP1"] }
      canary: { endpoints: ["${SHADOW:-127.0.0.1:$UP2}"] }
    routes:
$1
CONF
  RUST_LOG=warn "$WEIR" run -c "$WORK/weir.yaml" > "$WORK/weir.out" 2>&1 &
  WEIR_PID=$!; PIDS+=("$WEIR_PID")
  wait_port "$WEIR_PORT"
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

# Saturation req/s with wrk at 32 connections.
saturation() {
  wrk -t2 -c32 -d"${DURATION}s" "http://127.0.0.1:$1/" 2>/dev/null | awk '/Requests\/sec/ {print $2}'
}

# Latency at a fixed rate: prints "p50 p99 p999 errors".
fixed_rate() {
  "$LOADGEN" --url "http://127.0.0.1:$1/" --rate "$RATE" --duration "$DURATION" --connections 64 |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["p50_ms"], d["p99_ms"], d["p999_ms"], d["errors"])'
}

# nginx as the proxy under comparison: split_clients 90/10, upstream keepalive; sets NGINX_PORT.
start_nginx_proxy() {
  NGINX_PORT=$(free_port)
  start_nginx nginx-px 2 "  upstream v1 { server 127.0.0.1:$UP1; keepalive 64; }
  upstream v2 { server 127.0.0.1:$UP2; keepalive 64; }
  split_clients \"\${request_id}\" \$backend { 90% v1; * v2; }
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
