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
name=wal-pages.sh
# shellcheck source=bench/plain-gateway.sh
source "$root/bench/plain-gateway.sh"

batch_load "$seconds" | grep -E 'Requests/sec' >&2
stop_plain_gateway
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
