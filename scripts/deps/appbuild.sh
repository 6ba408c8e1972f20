#!/usr/bin/env bash
# Tools the appbuild tests need: apksigner/zipalign to make and verify real
# APKs, keytool (a JDK) for throwaway signing keys, zip for the test recipe.
# Idempotent: installs only what is missing. Run as root.
set -euo pipefail
need=()
command -v apksigner >/dev/null 2>&1 || need+=(apksigner)
command -v zipalign >/dev/null 2>&1 || need+=(zipalign)
command -v zip >/dev/null 2>&1 || need+=(zip)
command -v keytool >/dev/null 2>&1 || need+=(default-jre-headless)
if [ ${#need[@]} -gt 0 ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
