#!/usr/bin/env bash
# Benchmark of the plugd gateway against nginx, haproxy and caddy.
#
# Starts one upstream (a tiny Go HTTP server answering 20 bytes), then for
# each target runs wrk with the same connections and duration and prints
# requests/s, p50/p99 latency and the CPU time the proxy's processes spend
# per request, every figure also as a ratio to nginx:
#   direct      - wrk straight at the upstream (the ceiling)
#   plugd       - gateway.v1 in the real plugd host: round-robin, limiter off,
#                 breaker on (default config), retries 1
#   plugd+prog  - the same with a one-line program on the service
#   nginx       - proxy_pass with an upstream keepalive pool
#   haproxy     - mode http, http-reuse always
#   caddy       - reverse_proxy
# Every proxy gets the same number of worker threads (WORKERS, default the
# number of cores) and sends the upstream the same X-Forwarded-For, -Proto
# and -Host headers (the gateway and caddy always do; nginx and haproxy are
# configured to). wrk, the proxy and the upstream share this machine, so
# read the ratios, not the absolute numbers.
#
# ENGINE=fast|std benchmarks the gateway with another data-plane engine
# (default: event, the gateway's default).
#
# Usage: scripts/bench/gateway.sh [-d SECONDS] [-c CONNECTIONS]
# Needs root to install missing packages (nginx haproxy caddy wrk).
set -euo pipefail

DUR=10
CONNS=64
while getopts "d:c:" o; do
	case $o in
	d) DUR=$OPTARG ;;
	c) CONNS=$OPTARG ;;
	*) echo "usage: $0 [-d seconds] [-c connections]" >&2; exit 2 ;;
	esac
done
WORKERS=${WORKERS:-$(nproc)}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/gateway-bench.XXXXXX)
PIDS=()

cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	[ -n "${KEEP:-}" ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

missing=()
for pair in nginx:nginx haproxy:haproxy caddy:caddy wrk:wrk; do
	cmd=${pair%%:*} pkg=${pair##*:}
	command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing ${missing[*]}" >&2
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
UP=$(freeport) MG=$(freeport) GW=$(freeport) NG=$(freeport) HA=$(freeport) CA=$(freeport)

waitport() {
	for _ in $(seq 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	echo "nothing listens on port $1" >&2
	exit 1
}

echo "building plugd, pcompile, gateway and the upstream..." >&2
(cd "$ROOT" && go build -o "$WORK/plugd" ./host && go build -o "$WORK/pcompile" ./pcompile)
mkdir -p "$WORK/plugins" "$WORK/data" "$WORK/up"
SO=$(cd "$ROOT" && "$WORK/pcompile" -o "$WORK/plugins" -host "$WORK/plugd" plugins/gateway 2>/dev/null | tail -1)
cat >"$WORK/up/main.go" <<'GO'
package main

import (
	"net/http"
	"os"
)

func main() {
	body := []byte("hello from upstream\n")
	_ = http.ListenAndServe(os.Args[1], http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(body)
	}))
}
GO
(cd "$WORK/up" && GO111MODULE=off go build -o upstream main.go)
"$WORK/up/upstream" "127.0.0.1:$UP" & PIDS+=($!); UPPID=$!
waitport "$UP"

# plugd with the gateway
cat >"$WORK/plugd.yaml" <<YAML
listen: 127.0.0.1:$MG
plugins_dir: $WORK/plugins
data_dir: $WORK/data
watch: false
log:
  level: warn
plugins:
  gateway:
    listen: 127.0.0.1:$GW
    engine: ${ENGINE:-event}
    services:
      bench:
        upstreams:
          - {id: up1, address: 127.0.0.1:$UP}
      benchprog:
        upstreams:
          - {id: up1, address: 127.0.0.1:$UP}
YAML
GOMAXPROCS=$WORKERS "$WORK/plugd" -config "$WORK/plugd.yaml" >"$WORK/plugd.log" 2>&1 & PIDS+=($!); PLUGDPID=$!
waitport "$MG"
curl -fsS -X POST "http://127.0.0.1:$MG/apim/v1/gateway.v1?file=$(basename "$SO")" >/dev/null
waitport "$GW"
PROG=$(printf '%s' 'request.method in ["GET", "HEAD"]' | base64 -w0)
curl -fsS -X PUT "http://127.0.0.1:$MG/gateway/v1/management/program/info" \
	-d "{\"expr\":\"$PROG\",\"name\":\"one-line\",\"service_name\":\"benchprog\"}" >/dev/null

# nginx
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<NGX
worker_processes $WORKERS;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
daemon off;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path $WORK/nginx;
	proxy_temp_path $WORK/nginx;
	fastcgi_temp_path $WORK/nginx;
	uwsgi_temp_path $WORK/nginx;
	scgi_temp_path $WORK/nginx;
	upstream up { server 127.0.0.1:$UP; keepalive 256; }
	server {
		listen 127.0.0.1:$NG;
		location / {
			proxy_pass http://up;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
			proxy_set_header X-Forwarded-Proto \$scheme;
			proxy_set_header X-Forwarded-Host \$http_host;
		}
	}
}
NGX
"$NGINX" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" & PIDS+=($!); NGPID=$!

# haproxy
cat >"$WORK/haproxy.cfg" <<HAP
global
	nbthread $WORKERS
	maxconn 4096
defaults
	mode http
	timeout connect 5s
	timeout client 30s
	timeout server 30s
	http-reuse always
frontend fe
	bind 127.0.0.1:$HA
	default_backend be
backend be
	option forwardfor
	http-request set-header X-Forwarded-Proto http
	http-request set-header X-Forwarded-Host %[req.hdr(host)]
	server up1 127.0.0.1:$UP
HAP
"$HAPROXY" -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 & PIDS+=($!); HAPID=$!

# caddy
cat >"$WORK/Caddyfile" <<CAD
{
	admin off
	auto_https off
}
http://127.0.0.1:$CA {
	reverse_proxy 127.0.0.1:$UP
}
CAD
XDG_DATA_HOME=$WORK XDG_CONFIG_HOME=$WORK GOMAXPROCS=$WORKERS caddy run --config "$WORK/Caddyfile" --adapter caddyfile >"$WORK/caddy.log" 2>&1 & PIDS+=($!); CAPID=$!
waitport "$NG"; waitport "$HA"; waitport "$CA"

# every target must answer the upstream's body before it is measured
declare -A URL=(
	[direct]="http://127.0.0.1:$UP/"
	[plugd]="http://127.0.0.1:$GW/bench/"
	[plugd+prog]="http://127.0.0.1:$GW/benchprog/"
	[nginx]="http://127.0.0.1:$NG/"
	[haproxy]="http://127.0.0.1:$HA/"
	[caddy]="http://127.0.0.1:$CA/"
)
ORDER=(direct plugd plugd+prog nginx haproxy caddy)
for k in "${ORDER[@]}"; do
	got=$(curl -fsS "${URL[$k]}") || { echo "$k: request failed" >&2; exit 1; }
	[ "$got" = "hello from upstream" ] || { echo "$k answered: $got" >&2; exit 1; }
done

# wrk's latency figures come as 412.00us / 1.20ms / 2.00s: convert to ms
toms() {
	awk -v v="$1" 'BEGIN {
		n = v + 0
		if (v ~ /us$/) n = n / 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n = n * 1000
		printf "%.3f", n
	}'
}
# Each target is measured ROUNDS times, rounds interleaved so that a burst
# of load from elsewhere on the machine does not hit one target only; the
# best round (highest req/s) is kept. Besides, the CPU time the proxy's
# processes spend per request (utime+stime from /proc, averaged over the
# rounds) is the figure least disturbed by other load on the machine: a
# proxy that needs less CPU per request leaves more of the shared cores
# to wrk and the upstream.
declare -A PROCS=(
	[direct]="$UPPID"
	[plugd]="$PLUGDPID"
	[plugd+prog]="$PLUGDPID"
	[nginx]="$NGPID $(pgrep -P "$NGPID" | tr '\n' ' ')"
	[haproxy]="$HAPID"
	[caddy]="$CAPID"
)
TCK=$(getconf CLK_TCK)
cputicks() { local t=0 p; for p in $1; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
declare -A RPS P50 P99 CPU
THREADS=${WRK_THREADS:-1}
ROUNDS=${ROUNDS:-2}
for k in "${ORDER[@]}"; do
	wrk -t"$THREADS" -c"$CONNS" -d2s "${URL[$k]}" >/dev/null # warm-up: fill the keep-alive pools
	RPS[$k]=0
	CPU[$k]=0
done
for round in $(seq "$ROUNDS"); do
	for k in "${ORDER[@]}"; do
		c0=$(cputicks "${PROCS[$k]}")
		out=$(wrk -t"$THREADS" -c"$CONNS" -d"${DUR}s" --latency "${URL[$k]}")
		c1=$(cputicks "${PROCS[$k]}")
		rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
		n=$(awk '/requests in/ {print $1}' <<<"$out")
		us=$(awk -v c=$((c1 - c0)) -v n="$n" -v t="$TCK" 'BEGIN { printf "%.2f", c * 1e6 / t / n }')
		CPU[$k]=$(awk -v a="${CPU[$k]}" -v b="$us" -v r="$ROUNDS" 'BEGIN { print a + b / r }')
		errs=$(awk '/Non-2xx|Socket errors/' <<<"$out")
		[ -z "$errs" ] || echo "$k: $errs" >&2
		echo "round $round $k: $rps req/s, $us us CPU/request" >&2
		if awk -v a="$rps" -v b="${RPS[$k]}" 'BEGIN { exit !(a > b) }'; then
			RPS[$k]=$rps
			P50[$k]=$(toms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
			P99[$k]=$(toms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
		fi
	done
done

echo
echo "gateway benchmark: $(nproc) cores (load average $(cut -d' ' -f1-3 /proc/loadavg)), wrk -t$THREADS -c$CONNS -d${DUR}s, best of $ROUNDS, $WORKERS proxy workers, $(date -u +%Y-%m-%dT%H:%MZ)"
printf '%-11s %9s %7s %8s %7s %8s %7s %9s %7s\n' target "req/s" "×nginx" "p50 ms" "×nginx" "p99 ms" "×nginx" "CPU us/r" "×nginx"
for k in "${ORDER[@]}"; do
	awk -v k="$k" -v r="${RPS[$k]}" -v rn="${RPS[nginx]}" -v a="${P50[$k]}" -v an="${P50[nginx]}" \
		-v b="${P99[$k]}" -v bn="${P99[nginx]}" -v c="${CPU[$k]}" -v cn="${CPU[nginx]}" 'BEGIN {
		printf "%-11s %9.0f %7.2f %8.3f %7.2f %8.3f %7.2f %9.1f %7.2f\n", k, r, r/rn, a, a/an, b, b/bn, c, c/cn
	}'
done
echo "(req/s ratio > 1 is faster than nginx; latency and CPU ratios < 1 are better than nginx;"
echo " CPU us/r is the CPU time of the proxy's processes per request, the upstream's for direct)"
