# Sourced by bench/cpu-per-record.sh and bench/wal-pages.sh: starts the
# gateway binary $bin on a fresh SQLite file in a new folder of TMPDIR
# (default /dev/shm), authentication off, on a free port. Sets `work` (the
# folder, removed at exit), `pid` and `addr` (host:port); the exit trap
# kills the gateway with SIGKILL (which keeps the write-ahead log as it was).
# Needs `root` (the checkout) and `name` (the calling script's, for errors).

[[ -x "$bin" ]] || { echo "$name: no binary at $bin (cargo build --release)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "$name: needs wrk (bench/run.sh installs it)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/dev/shm}/nara-$name.XXXXXX")
pid=""
stop_plain_gateway() {
  if [[ -n "$pid" ]]; then
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  pid=""
}
trap 'stop_plain_gateway; rm -rf "$work"' EXIT

NARA_SERVER__LISTEN=127.0.0.1:0 NARA_DATABASE__URL="sqlite://$work/g.db" NARA_SERVER__TLS__ENABLED=false \
  NARA_AUTH__ENABLED=false "$bin" serve >"$work/out" 2>"$work/log" &
pid=$!
for _ in $(seq 200); do
  grep -q '^listening on' "$work/out" 2>/dev/null && break
  sleep 0.05
done
addr=$(sed -n 's|^listening on http://||p' "$work/out")
[[ -n "$addr" ]] || { cat "$work/log" >&2; echo "$name: the gateway did not start" >&2; exit 1; }

# batch_load SECONDS: bench/ingest_batch.lua against the gateway (wrk's report on stdout).
batch_load() {
  BENCH_DIR="$root/bench" wrk -t2 -c16 -d"$1s" --timeout 10s -s "$root/bench/ingest_batch.lua" \
    "http://$addr" -- /dev/null
}
