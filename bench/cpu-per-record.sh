#!/usr/bin/env bash
# The gateway's processor time per ingested record under batch ingest: a
# steadier measure than records/s on a machine whose speed drifts, for A/B
# comparisons of two builds.
#
#   bench/cpu-per-record.sh [BINARY] [SECONDS]
#
# Starts BINARY (default target/release/nara-gateway; build it first) on a
# fresh SQLite file in TMPDIR (default /dev/shm) with authentication off,
# warms up for 4 s with bench/ingest_batch.lua (16 connections, batches of
# BENCH_BATCH records, default 100), then runs SECONDS (default 10) more and
# prints the gateway's user + system time per 1,000 records and the
# records/s of that run. Alternate two binaries a few times:
#
#   for i in 1 2 3; do bench/cpu-per-record.sh /tmp/a; bench/cpu-per-record.sh /tmp/b; done
set -Eeuo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-$root/target/release/nara-gateway}
seconds=${2:-10}
[[ -x "$bin" ]] || { echo "cpu-per-record.sh: no binary at $bin (cargo build --release)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "cpu-per-record.sh: needs wrk (bench/run.sh installs it)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/dev/shm}/nara-cpu.XXXXXX")
pid=""
cleanup() {
  if [[ -n "$pid" ]]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

NARA_SERVER__LISTEN=127.0.0.1:0 NARA_DATABASE__URL="sqlite://$work/g.db" NARA_SERVER__TLS__ENABLED=false \
  NARA_AUTH__ENABLED=false "$bin" serve >"$work/out" 2>"$work/log" &
pid=$!
for _ in $(seq 200); do
  grep -q '^listening on' "$work/out" 2>/dev/null && break
  sleep 0.05
done
addr=$(sed -n 's|^listening on http://||p' "$work/out")
[[ -n "$addr" ]] || { cat "$work/log" >&2; echo "cpu-per-record.sh: the gateway did not start" >&2; exit 1; }

# utime + stime of the gateway, in clock ticks (fields 14 and 15 of /proc/PID/stat).
ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
load() { BENCH_DIR="$root/bench" wrk -t2 -c16 -d"$1s" --timeout 10s -s "$root/bench/ingest_batch.lua" "http://$addr" -- /dev/null; }

load 4 >/dev/null 2>&1
t0=$(ticks)
out=$(load "$seconds" 2>&1)
t1=$(ticks)
requests=$(awk '/requests in/ { print $1 }' <<<"$out")
[[ "$requests" -gt 0 ]] || { echo "$out" >&2; echo "cpu-per-record.sh: no request answered" >&2; exit 1; }
batch=${BENCH_BATCH:-100}
awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v r="$requests" -v b="$batch" -v s="$seconds" 'BEGIN {
  printf "processor ms per 1,000 records: %.1f   records/s: %.0f\n", t / hz * 1000 * 1000 / (r * b), r * b / s
}'
