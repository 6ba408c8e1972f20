#!/usr/bin/env bash
# Benchmark of the deploy plugin in the real plugd host, with real processes
# (the tiny HTTP server of plugins/deploy/e2e/testdata/webapp, health-checked
# over HTTP):
#   deploy 10        - POST /apps for an app whose web proc has 10 instances,
#                      until the operation has succeeded (every instance healthy)
#   scale 10->50     - PATCH num_instances 50, until all 50 are healthy
#   supervise 50     - the host's RSS and CPU use over SAMPLE seconds while it
#                      supervises the 50 instances (liveness every 250ms,
#                      HTTP health check every 2s each)
#   scale 50->10     - PATCH num_instances 10, until 40 are stopped
#   rollout 10       - PUT a new meta_version: 10 instances replaced one at a
#                      time, each health-checked before the next
# Every step's time is wall-clock from the request to the operation's end.
#
# Usage: scripts/bench/deploy.sh [-s SAMPLE_SECONDS]
# Needs curl and jq (scripts/deps/deploy.sh installs them).
set -euo pipefail

SAMPLE=10
while getopts "s:" o; do
	case $o in
	s) SAMPLE=$OPTARG ;;
	*) echo "usage: $0 [-s sample-seconds]" >&2; exit 2 ;;
	esac
done
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/deploy-bench.XXXXXX)
HOSTPID=""

# kill only what this script started: the host, then any process still
# running a release from this run's data dir
leftovers() {
	for d in /proc/[0-9]*; do
		exe=$(readlink "$d/exe" 2>/dev/null || true)
		case $exe in "$WORK"/data/*) echo "${d#/proc/}" ;; esac
	done
}
cleanup() {
	if [ -n "$HOSTPID" ]; then
		curl -s -X DELETE "$API/apps/bench/" >/dev/null 2>&1 || true
		sleep 1
		kill "$HOSTPID" 2>/dev/null || true
		wait "$HOSTPID" 2>/dev/null || true
	fi
	for p in $(leftovers); do kill -9 "$p" 2>/dev/null || true; done
	[ -n "${KEEP:-}" ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

for c in curl jq go; do command -v $c >/dev/null || { echo "missing $c (run scripts/deps/deploy.sh)" >&2; exit 1; }; done

echo "building plugd, pcompile, webapp ..." >&2
export CGO_ENABLED=1
(cd "$ROOT" && go build -trimpath -o "$WORK/bin/plugd" ./host && go build -trimpath -o "$WORK/bin/pcompile" ./pcompile &&
	go build -o "$WORK/app/bin/webapp" ./plugins/deploy/e2e/testdata/webapp)

freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
MG=$(freeport)
HOST=http://127.0.0.1:$MG
API=$HOST/deploy/v1/api/v1
mkdir -p "$WORK/plugins" "$WORK/data"
cat >"$WORK/plugd.yaml" <<YAML
listen: 127.0.0.1:$MG
plugins_dir: $WORK/plugins
data_dir: $WORK/data
watch: false
plugins:
  deploy:
    auth: false
    stop_grace: 5s
YAML
"$WORK/bin/plugd" -config "$WORK/plugd.yaml" >"$WORK/plugd.log" 2>&1 &
HOSTPID=$!
for _ in $(seq 200); do curl -sf "$HOST/apim/v1/apis" >/dev/null && break; sleep 0.05; done
SO=$("$WORK/bin/pcompile" -o "$WORK/plugins" -host "$WORK/bin/plugd" -src "$ROOT" "$ROOT/plugins/deploy" | tail -1)
curl -sf -X POST "$HOST/apim/v1/deploy.v1?file=$(basename "$SO")" >/dev/null

spec() {
	cat <<YAML
appname: bench
web:
  cmd: ./bin/webapp
  num_instances: 10
  healthcheck: /healthz
  env: [RELEASE=$1]
YAML
}
upload() { # meta_version release
	rm -f "$WORK/app/lain.yaml"
	spec "$2" >"$WORK/app/lain.yaml"
	tar -C "$WORK/app" -czf "$WORK/rel.tgz" lain.yaml bin/webapp
	curl -sf -X POST -H 'Content-Type: application/gzip' --data-binary @"$WORK/rel.tgz" "$API/repos/bench/versions/?meta_version=$1" >/dev/null
}
now() { date +%s.%N; }
# op METHOD PATH JSON: runs an operation to its end, prints seconds taken
op() {
	local t0 id st
	t0=$(now)
	id=$(curl -sf -X "$1" -H 'Content-Type: application/json' -d "$3" "$API$2" | jq -r .operation)
	while :; do
		st=$(curl -sf "$API/operations/$id" | jq -r .state)
		case $st in
		succeeded) break ;;
		failed) echo "operation $1 $2 failed: $(curl -sf "$API/operations/$id" | jq -r .error)" >&2; exit 1 ;;
		esac
		sleep 0.02
	done
	echo "$(now) - $t0" | bc -l 2>/dev/null || python3 -c "print($(now) - $t0)"
}
count() { curl -sf "$API/apps/bench/procs/web/" | jq '[.instances[] | select(.healthy)] | length'; }
procs() { leftovers | wc -l; }

curl -sf -X POST -H 'Content-Type: application/json' -d '{"appname":"bench"}' "$API/repos/" >/dev/null
MV1="$(date +%s)-$(printf '%040x' 1)"
MV2="$(date +%s)-$(printf '%040x' 2)"
upload "$MV1" one
upload "$MV2" two

T_DEPLOY=$(op POST /apps/ "{\"appname\":\"bench\",\"meta_version\":\"$MV1\"}")
[ "$(count)" = 10 ] || { echo "deploy: $(count) healthy" >&2; exit 1; }
T_UP=$(op PATCH /apps/bench/procs/web/ '{"num_instances":50}')
[ "$(count)" = 50 ] && [ "$(procs)" = 50 ] || { echo "scale up: $(count) healthy, $(procs) processes" >&2; exit 1; }

# host RSS and CPU while supervising 50 instances
TCK=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$HOSTPID/stat"; }
c0=$(cpu); s0=$(now)
sleep "$SAMPLE"
c1=$(cpu); s1=$(now)
RSS_KB=$(awk '/^VmRSS/{print $2}' "/proc/$HOSTPID/status")
CPU_PCT=$(python3 -c "print(round(100*($c1-$c0)/$TCK/($s1-$s0), 2))")
APP_RSS_MB=$(for p in $(leftovers); do awk '/^VmRSS/{print $2}' /proc/$p/status; done | awk '{s+=$1} END {printf "%.1f", s/1024}')

T_DOWN=$(op PATCH /apps/bench/procs/web/ '{"num_instances":10}')
sleep 0.2
[ "$(count)" = 10 ] && [ "$(procs)" = 10 ] || { echo "scale down: $(count) healthy, $(procs) processes" >&2; exit 1; }
T_ROLL=$(op PUT /apps/bench/ "{\"meta_version\":\"$MV2\"}")
[ "$(curl -sf "$API/apps/bench/procs/web/" | jq -r '[.instances[] | select(.healthy and .meta_version=="'"$MV2"'")] | length')" = 10 ] || { echo "rollout incomplete" >&2; exit 1; }
T_UNDEPLOY=$(op DELETE /apps/bench/ '')
[ "$(procs)" = 0 ] || { echo "undeploy left $(procs) processes" >&2; exit 1; }
LIMITS=$(grep -o 'limits: \(cgroup v[12]\|rlimit\)' "$WORK/plugd.log" | head -1)

printf '%-28s %s\n' \
	"deploy 10 instances" "$(printf '%.2fs' "$T_DEPLOY")" \
	"scale 10->50" "$(printf '%.2fs' "$T_UP")" \
	"scale 50->10" "$(printf '%.2fs' "$T_DOWN")" \
	"rollout 10 (one at a time)" "$(printf '%.2fs' "$T_ROLL")" \
	"undeploy 10" "$(printf '%.2fs' "$T_UNDEPLOY")" \
	"host RSS, 50 instances" "$((RSS_KB / 1024)) MiB" \
	"host CPU, 50 instances" "${CPU_PCT}% of one core (${SAMPLE}s sample)" \
	"50 webapps RSS (sum)" "${APP_RSS_MB} MiB" \
	"machine" "$(nproc) cores; $LIMITS"
