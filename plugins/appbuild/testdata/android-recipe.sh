#!/bin/sh
# Test recipe: builds a tiny real APK and signs it with apksigner (v2+v3).
# Needs KEYSTORE and KS_PASS in the environment (a throwaway key the test
# makes). The version's git tag steers it, so tests can ask for behaviours:
#   fail       exit 3 after some output
#   sleep-N    sleep N seconds (seconds may be fractional) before finishing
#   unsigned   leave an unsigned APK (no signing block)
# PAYLOAD_BYTES sets the size of the random classes.dex (default 1000).
set -eu
: "${APPBUILD_OUTPUT_DIR:?}" "${KEYSTORE:?}" "${KS_PASS:?}"
echo "recipe: version ${APPBUILD_VERSION_CODE}/${APPBUILD_VERSION_NAME} tag=${APPBUILD_GIT_TAG} channel=${APPBUILD_CHANNEL:-<stamp>}"
case "${APPBUILD_GIT_TAG:-}" in
fail) echo "compiling... error: on purpose" >&2; exit 3 ;;
sleep-*) sleep "${APPBUILD_GIT_TAG#sleep-}" ;;
esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/src/assets"
printf '<manifest package="com.example.app" versionCode="%s" versionName="%s"/>\n' \
	"$APPBUILD_VERSION_CODE" "$APPBUILD_VERSION_NAME" >"$tmp/src/AndroidManifest.xml"
head -c "${PAYLOAD_BYTES:-1000}" /dev/urandom >"$tmp/src/classes.dex"
echo "built for ${APPBUILD_CHANNEL:-all channels}" >"$tmp/src/assets/build.txt"
(cd "$tmp/src" && zip -q -X -r ../u.apk .)
zipalign -f 4 "$tmp/u.apk" "$tmp/a.apk"
out="$APPBUILD_OUTPUT_DIR/app-${APPBUILD_VERSION_NAME}.apk"
if [ "${APPBUILD_GIT_TAG:-}" = unsigned ]; then
	cp "$tmp/a.apk" "$out"
else
	apksigner sign --ks "$KEYSTORE" --ks-pass "pass:$KS_PASS" --min-sdk-version 24 \
		--v4-signing-enabled false --out "$out" "$tmp/a.apk"
fi
echo "recipe: wrote $out"
