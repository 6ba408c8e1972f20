#!/usr/bin/env bash
# Non-Go dependencies of the gateway's tests: none. The tests use only Go,
# the plugd host and loopback HTTP servers they start themselves.
# (scripts/bench/gateway.sh installs nginx, haproxy, caddy and wrk itself.)
set -euo pipefail
exit 0
