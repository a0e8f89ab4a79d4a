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
name=cpu-per-record.sh
# shellcheck source=bench/plain-gateway.sh
source "$root/bench/plain-gateway.sh"

# utime + stime of the gateway, in clock ticks (fields 14 and 15 of /proc/PID/stat).
ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }

batch_load 4 >/dev/null 2>&1
t0=$(ticks)
out=$(batch_load "$seconds" 2>&1)
t1=$(ticks)
requests=$(awk '/requests in/ { print $1 }' <<<"$out")
[[ "$requests" -gt 0 ]] || { echo "$out" >&2; echo "cpu-per-record.sh: no request answered" >&2; exit 1; }
batch=${BENCH_BATCH:-100}
awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v r="$requests" -v b="$batch" -v s="$seconds" 'BEGIN {
  printf "processor ms per 1,000 records: %.1f   records/s: %.0f\n", t / hz * 1000 * 1000 / (r * b), r * b / s
}'
