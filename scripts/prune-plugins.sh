#!/usr/bin/env bash
# Removes old plugin builds so that `make build` does not fill the disk: in
# DIR (default var/plugins) it keeps the KEEP (default 2) newest builds of
# each plugin and every file that DATA/loaded.json (default var/data) names,
# since the host restores those at start.
#
# Usage: scripts/prune-plugins.sh [DIR [DATA]]   (KEEP=N to keep more)
set -euo pipefail
dir=${1:-var/plugins}
data=${2:-var/data}
keep=${KEEP:-2}
[ -d "$dir" ] || exit 0
loaded=""
if [ -f "$data/loaded.json" ]; then
	loaded=$(grep -o '"file": *"[^"]*"' "$data/loaded.json" | sed 's/.*"\([^"]*\)"$/\1/' || true)
fi
# pcompile names builds <plugin>-<id>-<hash>.so; the plugin is the part
# before the first dash.
for plugin in $(ls "$dir" | grep '\.so$' | sed 's/-.*//' | sort -u); do
	ls -t "$dir/$plugin"-*.so | tail -n +"$((keep + 1))" | while read -r f; do
		if grep -qxF "$(basename "$f")" <<<"$loaded"; then
			continue
		fi
		rm -f -- "$f"
		echo "pruned $(basename "$f")"
	done
done
