#!/usr/bin/env bash
# Reads by id while a batch import runs on the same store: what writes cost
# readers (the writer's checkpoints, the write-ahead log's restarts), for
# A/B runs of two builds.
#
#   bench/read-during-import.sh [BINARY] [SECONDS]
#
# Starts BINARY (default target/release/nara-gateway; build it first) on a
# fresh SQLite file in TMPDIR (default /dev/shm; a folder on disk measures
# the disk too) with authentication off, seeds BENCH_PATIENTS (default 1,000)
# patients x 100 Observations with bench/seed.py, then runs for SECONDS
# (default 20) wrk reads by id (bench/read.lua) and batch ingest
# (bench/ingest_batch.lua), 8 connections each, at once. Prints reads/s with
# p50 / p99, batches/s, and the write-ahead log's size at the end.
set -Eeuo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-$root/target/release/nara-gateway}
seconds=${2:-20}
name=read-during-import.sh
# shellcheck source=bench/plain-gateway.sh
source "$root/bench/plain-gateway.sh"

python3 "$root/bench/seed.py" --base "http://$addr/fhir" --patients "${BENCH_PATIENTS:-1000}" \
  --observations-per-patient 100 --seed 20240901 --ids-out "$work/ids" >/dev/null
BENCH_DIR="$root/bench" wrk -t1 -c8 -d"${seconds}s" --timeout 10s -s "$root/bench/ingest_batch.lua" \
  "http://$addr" -- /dev/null >"$work/batch.txt" 2>&1 &
importing=$!
BENCH_DIR="$root/bench" wrk -t1 -c8 -d"${seconds}s" --latency --timeout 10s -s "$root/bench/read.lua" \
  "http://$addr" -- "$work/ids" >"$work/read.txt" 2>&1 ||
  { cat "$work/read.txt" >&2; echo "$name: reads failed" >&2; exit 1; }
wait "$importing" || { cat "$work/batch.txt" >&2; echo "$name: the import failed" >&2; exit 1; }

field() { awk -v k="$1" '$1 == k { print $2 }' "$2"; }
log_mb=$(($(stat -c %s "$work/g.db-wal" 2>/dev/null || echo 0) / 1048576))
echo "reads $(field Requests/sec: "$work/read.txt")/s, p50 $(field 50% "$work/read.txt")," \
  "p99 $(field 99% "$work/read.txt"); batches $(field Requests/sec: "$work/batch.txt")/s;" \
  "write-ahead log ${log_mb} MB"
