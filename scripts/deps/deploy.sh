#!/usr/bin/env bash
# Non-Go tools for the deploy plugin. The tests need none beyond /bin/sh
# (the procs' commands run through it) and the Go toolchain; the benchmark
# (scripts/bench/deploy.sh) uses curl and jq. Installs only what is missing.
set -euo pipefail
missing=()
for pair in curl:curl jq:jq sh:dash; do
	command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
