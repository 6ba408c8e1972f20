#!/usr/bin/env bash
# Benchmarks of the appbuild plugin, loopback only, bounded in count and time.
#  1. Channel packages per second: writing the channel into the APK Signing
#     Block of one signed APK (CHANNELS packages of an APK_MB MB APK) versus
#     one recipe run per channel (the test recipe: zip, zipalign, apksigner;
#     RECIPE_RUNS runs measured, the rate extrapolated to CHANNELS).
#  2. CRUD requests per second against a real plugd with appbuild.v1 loaded
#     (CRUD_SECONDS seconds, CRUD_WORKERS workers).
# Needs the tools of scripts/deps/appbuild.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
CHANNELS=${CHANNELS:-50}
APK_MB=${APK_MB:-20}
RECIPE_RUNS=${RECIPE_RUNS:-5}
CRUD_SECONDS=${CRUD_SECONDS:-10}
CRUD_WORKERS=${CRUD_WORKERS:-8}
for t in apksigner zipalign keytool zip curl python3; do
	command -v "$t" >/dev/null || { echo "missing $t: run scripts/deps/appbuild.sh" >&2; exit 1; }
done

work=$(mktemp -d)
plugd_pid=""
cleanup() {
	if [ -n "$plugd_pid" ]; then kill "$plugd_pid" 2>/dev/null || true; wait "$plugd_pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT
cd "$root"

echo "== building tools"
go build -o "$work/apkchannel" ./scripts/apkchannel
go build -o "$work/load" ./scripts/bench/appbuild
keytool -genkeypair -keystore "$work/k.jks" -storepass pass123 -keypass pass123 -alias k \
	-keyalg RSA -keysize 2048 -validity 10 -dname CN=bench >/dev/null 2>&1
recipe="$root/plugins/appbuild/testdata/android-recipe.sh"
run_recipe() { # $1 channel, $2 output dir
	mkdir -p "$2"
	APPBUILD_OUTPUT_DIR="$2" APPBUILD_CHANNEL="$1" APPBUILD_VERSION_CODE=1 APPBUILD_VERSION_NAME=1.0 \
		APPBUILD_GIT_TAG=bench KEYSTORE="$work/k.jks" KS_PASS=pass123 PAYLOAD_BYTES=$((APK_MB << 20)) \
		sh "$recipe" >/dev/null
}
now() { date +%s.%N; }

echo "== 1. channel packages: ${CHANNELS} channels of a ${APK_MB} MB APK"
run_recipe "" "$work/once"
apk="$work/once/app-1.0.apk"
ls -l "$apk" | awk '{print "signed APK: " $5 " bytes"}'
"$work/apkchannel" stamp -n "$CHANNELS" "$apk" "$work/stamped"
apksigner verify --min-sdk-version 24 "$work/stamped/ch${CHANNELS}.apk"
"$work/apkchannel" read "$work/stamped/ch1.apk" "$work/stamped/ch${CHANNELS}.apk"
rm -rf "$work/stamped"

t0=$(now)
for i in $(seq 1 "$RECIPE_RUNS"); do
	run_recipe "ch$i" "$work/per/ch$i"
	rm -rf "$work/per/ch$i"
done
t1=$(now)
python3 - "$t0" "$t1" "$RECIPE_RUNS" "$CHANNELS" <<'PY'
import sys
t0, t1, runs, ch = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
d = t1 - t0
print(f"one recipe run per channel: {runs} runs in {d:.2f}s: {runs/d:.2f} packages/s "
      f"({d/runs*1000:.0f} ms each; {ch} channels would take ~{d/runs*ch:.0f}s)")
PY

echo "== 2. CRUD requests/s through plugd"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
CGO_ENABLED=1 go build -trimpath -o "$work/plugd" ./host
CGO_ENABLED=1 go build -trimpath -o "$work/pcompile" ./pcompile
mkdir -p "$work/plugins" "$work/data"
hash=$("$work/load" -hash guessme)
cat >"$work/plugd.yaml" <<YAML
listen: 127.0.0.1:$port
plugins_dir: $work/plugins
data_dir: $work/data
watch: false
log:
  level: warn
plugins:
  appbuild:
    users:
      - name: admin
        password_bcrypt: "$hash"
YAML
"$work/plugd" -config "$work/plugd.yaml" >"$work/plugd.log" 2>&1 &
plugd_pid=$!
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/apim/v1/apis" >/dev/null && break; sleep 0.1; done
so=$("$work/pcompile" -o "$work/plugins" -host "$work/plugd" -src "$root" "$root/plugins/appbuild" | tail -1)
curl -fs -X POST "http://127.0.0.1:$port/apim/v1/appbuild.v1?file=$(basename "$so")" >/dev/null
"$work/load" -url "http://127.0.0.1:$port/appbuild/v1" -c "$CRUD_WORKERS" -d "${CRUD_SECONDS}s" -n 500000
