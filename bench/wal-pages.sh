#!/usr/bin/env bash
# Which tables and indexes the pages of a batch ingest's commits belong to:
# the pages a COMMIT writes to SQLite's log and the checkpoint copies again.
#
#   bench/wal-pages.sh [BINARY] [SECONDS]
#
# Starts BINARY (default target/release/nara-gateway) on a fresh SQLite file
# in TMPDIR (default /dev/shm) with authentication off, runs
# bench/ingest_batch.lua for SECONDS (default 6), stops the gateway with
# SIGKILL so that the write-ahead log stays as it was, and reads the log's
# frames of the current generation: pages per commit, by B-tree (named
# through SQLite's `dbstat` table on a copy of the files). `versions` pages
# are about one per ingested record; compare the others against them.
set -Eeuo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-$root/target/release/nara-gateway}
seconds=${2:-6}
[[ -x "$bin" ]] || { echo "wal-pages.sh: no binary at $bin (cargo build --release)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wal-pages.sh: needs wrk (bench/run.sh installs it)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/dev/shm}/nara-wal.XXXXXX")
pid=""
cleanup() {
  if [[ -n "$pid" ]]; then
    kill -KILL "$pid" 2>/dev/null || true
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
[[ -n "$addr" ]] || { cat "$work/log" >&2; echo "wal-pages.sh: the gateway did not start" >&2; exit 1; }
BENCH_DIR="$root/bench" wrk -t2 -c16 -d"${seconds}s" --timeout 10s -s "$root/bench/ingest_batch.lua" \
  "http://$addr" -- /dev/null | grep -E 'Requests/sec' >&2
kill -KILL "$pid"
wait "$pid" 2>/dev/null || true
pid=""
mkdir "$work/copy"
cp "$work/g.db" "$work/g.db-wal" "$work/copy/"

python3 - "$work/g.db-wal" "$work/copy/g.db" <<'PY'
import collections, sqlite3, struct, sys

log = open(sys.argv[1], "rb").read()
_, _, page_size, _, salt1, salt2, _, _ = struct.unpack(">8I", log[:32])
commits, frames, offset = [], [], 32
while offset + 24 + page_size <= len(log):
    page, size_after_commit, s1, s2 = struct.unpack(">4I", log[offset:offset + 16])
    if (s1, s2) != (salt1, salt2):
        break  # a frame of an earlier generation of the log
    frames.append(page)
    if size_after_commit:
        commits.append(frames)
        frames = []
    offset += 24 + page_size
if not commits:
    sys.exit("wal-pages.sh: no commit in the current log (try more seconds)")
names = dict(sqlite3.connect(sys.argv[2]).execute("SELECT pageno, name FROM dbstat"))
by_tree = collections.Counter(names.get(p, "(freelist)") for c in commits for p in c)
n = len(commits)
print(f"{n} commits, {sum(map(len, commits)) / n:.1f} pages per commit")
print("| B-tree | pages per commit |\n| --- | ---: |")
for name, count in by_tree.most_common():
    print(f"| {name} | {count / n:.1f} |")
PY
