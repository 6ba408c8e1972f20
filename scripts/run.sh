#!/usr/bin/env bash
# Starts plugd with configs/plugd.yaml and loads the newest build of every
# shipped plugin; plugd stays in the foreground until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
addr=127.0.0.1:2539
bin/plugd -config configs/plugd.yaml &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid' INT TERM
for _ in $(seq 1 100); do
	curl -fsS "http://$addr/apim/v1/apis" >/dev/null 2>&1 && break
	sleep 0.1
done
newest() { ls -t var/plugins/"$1"-*.so 2>/dev/null | head -1 | xargs -r basename; }
load() { # kind name file
	if [ -z "$3" ]; then echo "no build of $2 in var/plugins" >&2; return; fi
	curl -sS -XPOST "http://$addr/$1/v1/$2?file=$3" || true
}
load apim chatroom.v1 "$(newest chatroom)"
load slpm chatroom "$(newest chatroom)"
load apim gateway.v1 "$(newest gateway)"
load apim appbuild.v1 "$(newest appbuild)"
load apim deploy.v1 "$(newest deploy)"
curl -sS "http://$addr/apim/v1/apis"
pw=var/data/plugins/appbuild/initial-admin-password
if [ -f "$pw" ]; then
	echo "appbuild: user admin, password in $pw (configure users in configs/plugd.yaml to replace it):"
	echo "  curl -u admin:\"\$(cat $pw)\" http://$addr/appbuild/v1/api/app"
fi
echo "plugd is running (pid $pid) on http://$addr — Ctrl-C stops it"
wait $pid
