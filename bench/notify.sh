#!/usr/bin/env bash
# Notification latency benchmark: release build, fresh SQLite store, the
# gateway on a free port, then bench/notify.py (100 transfers/s for 20 s by
# default; NOTIFY_RATE, NOTIFY_SECONDS) against a local rest-hook receiver.
set -Eeuo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cargo build --release -q
work=$(mktemp -d)
gw=""
trap '[[ -n "$gw" ]] && kill "$gw" 2>/dev/null; rm -rf "$work"' EXIT
mkfifo "$work/out"
NARA_SERVER__LISTEN=127.0.0.1:0 NARA_SERVER__TLS__ENABLED=false NARA_DATABASE__URL="sqlite://$work/nara.db" \
  target/release/nara-gateway serve >"$work/out" 2>"$work/log" &
gw=$!
exec 3<"$work/out"
IFS= read -r -t 60 line <&3
base="http://${line#listening on http://}"
token=$(NARA_SERVER__TLS__ENABLED=false target/release/nara-gateway token issue --client region-skane 2>/dev/null)
python3 bench/notify.py --base "$base" --token "$token" --rate "${NOTIFY_RATE:-100}" --seconds "${NOTIFY_SECONDS:-20}"
