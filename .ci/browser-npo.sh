#!/usr/bin/env bash
# Browser check of the NPÖ page: starts the gateway (debug build, fresh
# SQLite file, plain HTTP on a free port), renders /npo in headless Chromium
# to a PNG and checks that the rendered page has its chart and table.
#
#   .ci/browser-npo.sh [OUT.png]     (default target/npo.png)
#
# Needs Debian's chromium (installed here when missing).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/npo.png}
if ! command -v chromium >/dev/null; then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get install -y --no-install-recommends chromium >/dev/null ||
    { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends chromium >/dev/null; }
fi
[[ -x target/debug/nara-gateway ]] || cargo build -q
work=$(mktemp -d)
gw=""
cleanup() { [[ -n "$gw" ]] && kill "$gw" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
mkfifo "$work/stdout"
NARA_SERVER__LISTEN=127.0.0.1:0 NARA_SERVER__TLS__ENABLED=false NARA_DATABASE__URL="sqlite://$work/nara.db" \
  target/debug/nara-gateway serve >"$work/stdout" 2>"$work/log" &
gw=$!
exec 3<"$work/stdout"
IFS= read -r -t 60 line <&3 || { cat "$work/log"; echo "browser-npo: the gateway did not start" >&2; exit 1; }
url="http://${line#listening on http://}/npo?delregion=mellersta"
chrome=(chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$work/profile")
"${chrome[@]}" --dump-dom "$url" >"$work/dom.html" 2>/dev/null
for needle in '<svg role="img"' '<table>' '<caption>Kommuner' 'Lund' '75,0 %'; do
  grep -qF "$needle" "$work/dom.html" || { echo "browser-npo: rendered page lacks $needle" >&2; exit 1; }
done
mkdir -p "$(dirname "$out")"
"${chrome[@]}" --window-size=1100,1500 --screenshot="$out" "$url" >/dev/null 2>&1
size=$(stat -c %s "$out")
[[ $size -gt 20000 ]] || { echo "browser-npo: screenshot $out is only $size bytes" >&2; exit 1; }
echo "browser-npo: /npo rendered with chart and table; screenshot $out ($size bytes)"
