#!/usr/bin/env bash
# Host benchmark: load latency, swap time, routing overhead against a bare
# net/http handler (same load generator, same run), RSS, pcompile rebuild.
# Usage: scripts/bench/host.sh   (builds what it needs; loopback only)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CGO_ENABLED=1
work=$(mktemp -d /tmp/plugd-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
go build -trimpath -o "$work/plugd" ./host
go build -trimpath -o "$work/pcompile" ./pcompile
go build -o "$work/load" ./scripts/bench/load
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

P=$(port); B=$(port)
mkdir -p "$work/plugins" "$work/data"
printf 'listen: 127.0.0.1:%s\nplugins_dir: %s\ndata_dir: %s\nwatch: false\nlog: {level: warn}\n' "$P" "$work/plugins" "$work/data" > "$work/plugd.yaml"
"$work/plugd" -config "$work/plugd.yaml" & pids+=($!); HOSTPID=$!
"$work/load" -serve "127.0.0.1:$B" & pids+=($!)
until curl -fs "127.0.0.1:$P/apim/v1/apis" >/dev/null; do sleep 0.05; done

t=$(date +%s%N); f1=$(basename "$("$work/pcompile" -o "$work/plugins" -host "$work/plugd" plugins/chatroom 2>/dev/null)"); build1=$(ms $t)
# A one-line change to the in-tree plugin (restored right after): only the
# plugin's own packages recompile, the rest comes from the build cache.
cp plugins/chatroom/main.go "$work/main.go.orig"
sed -i 's/const banner = "chatroom v1"/const banner = "chatroom v1 (rebuilt)"/' plugins/chatroom/main.go
t=$(date +%s%N); f2=$(basename "$("$work/pcompile" -o "$work/plugins" -host "$work/plugd" plugins/chatroom 2>/dev/null || true)"); build2=$(ms $t)
cp "$work/main.go.orig" plugins/chatroom/main.go

t=$(date +%s%N)
curl -fs -XPOST "127.0.0.1:$P/apim/v1/chatroom.v1?file=$f1" >/dev/null
until curl -fs "127.0.0.1:$P/chatroom/v1/" >/dev/null; do :; done
first=$(ms $t)
t=$(date +%s%N); curl -fs -XPOST "127.0.0.1:$P/apim/v1/chatroom.v1?file=$f2" >/dev/null; swap=$(ms $t)
t=$(date +%s%N); curl -fs -XPOST "127.0.0.1:$P/apim/v1/chatroom.v1?file=$f1" >/dev/null; reswap=$(ms $t)

"$work/load" -url "http://127.0.0.1:$B/" -n 2000 -d 2s >/dev/null   # warm up
read -r bn brps bp50 bp99 berr < <("$work/load" -url "http://127.0.0.1:$B/" -c 16 -n 100000 -d 8s)
read -r pn prps pp50 pp99 perr < <("$work/load" -url "http://127.0.0.1:$P/chatroom/v1/" -c 16 -n 100000 -d 8s)
rss=$(awk '/VmRSS/ {print $2}' /proc/$HOSTPID/status)

printf '\n%-44s %12s\n' "measure" "value"
printf '%-44s %12s\n' "pcompile first build of chatroom (ms)" "$build1"
printf '%-44s %12s\n' "pcompile rebuild after a one-line change (ms)" "$build2"
printf '%-44s %12s\n' "POST load → first served request (ms)" "$first"
printf '%-44s %12s\n' "swap to a new build, POST round trip (ms)" "$swap"
printf '%-44s %12s\n' "swap to an already-open file (ms)" "$reswap"
printf '%-44s %12s\n' "host RSS with chatroom loaded (KiB)" "$rss"
printf '\n%-26s %10s %10s %10s %8s %8s\n' "GET, 16 clients" "requests" "req/s" "p50 µs" "p99 µs" "errors"
printf '%-26s %10s %10s %10s %8s %8s\n' "bare net/http handler" "$bn" "$brps" "$bp50" "$bp99" "$berr"
printf '%-26s %10s %10s %10s %8s %8s\n' "plugd /chatroom/v1/" "$pn" "$prps" "$pp50" "$pp99" "$perr"
awk -v b="$brps" -v p="$prps" -v b50="$bp50" -v p50="$pp50" 'BEGIN { printf "plugd/bare throughput ratio %.2f; added p50 latency %d µs (access log included)\n", p/b, p50-b50 }'
