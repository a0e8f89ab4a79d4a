#!/usr/bin/env bash
# Benchmarks nara-gateway over HTTP with wrk, from a clean checkout:
#
#   bench/run.sh           small (2,000 Observations / 200 patients) and
#                          large (100,000 Observations / 1,000 patients) scenarios
#   bench/run.sh --quick   the small scenario only
#   BENCH_SCENARIOS="huge" bench/run.sh
#                          1,000,000 Observations across 10,000 patients
#                          (growth: small, medium, large, huge = 2k, 10k, 100k,
#                          1M; medium is 1,000 patients x 10 Observations)
#   bench/run.sh --postgres [--quick]
#                          the same on PostgreSQL: a fresh database per scenario
#                          on BENCH_POSTGRES_URL (default: what .ci/postgres.sh
#                          finds or starts), results in latest-postgres.json
#
# Per scenario: a release build on a fresh temporary SQLite file (port 0),
# seeded by bench/seed.py (Patients, Observations, and per patient a SIP care
# plan and a discharge transfer through the ingest API), then wrk (16 connections, 2 threads,
# BENCH_DURATION seconds, default 15; 10 s request timeout) for read by id, search by
# subject+category, the same with _include, create, transfer creation
# (/ingest/dokument as the region), single ingest and batch ingest (BENCH_BATCH records
# per request, default 100, as lund-ehr). Prints Markdown tables and writes
# bench-results/latest.json. Exits non-zero when any request failed.
#
# Environment: BENCH_TESTS (names of the tests to run, default all: read search
# include create transfer ingest ingest_batch; one at a time on a fresh store
# isolates a test from the background work the others leave), BENCH_DURATION (seconds per test), BENCH_TOKEN with BENCH_TOKEN_FIXED=1 (sent as
# `Authorization: Bearer …`), BENCH_SEED, BENCH_CATEGORY (search.lua);
# NARA_* variables reach the gateway (e.g. NARA_DATABASE__SQLITE_SYNCHRONOUS);
# BENCH_BIN runs that binary instead of building this checkout (A/B runs).
set -Eeuo pipefail
trap 'echo "run.sh: line $LINENO: \`$BASH_COMMAND\` failed" >&2' ERR

usage() { sed -n '2,/^set -E/{/^set -E/d;p}' "$0" | sed 's/^# \{0,1\}//'; }

quick=0
postgres=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --postgres) postgres=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument \`$arg\`" >&2; usage >&2; exit 2 ;;
  esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
store=sqlite
pg_admin=""
if [[ $postgres -eq 1 ]]; then
  store=postgres
  pg_admin=${BENCH_POSTGRES_URL:-$("$root/.ci/postgres.sh")}
  command -v psql >/dev/null || { echo "run.sh: --postgres needs psql" >&2; exit 1; }
fi
bench="$root/bench"
duration=${BENCH_DURATION:-15}
seed=${BENCH_SEED:-20240901}
connections=16
threads=2
results="$root/bench-results"

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

# --- tools ------------------------------------------------------------------
if ! command -v wrk >/dev/null; then
  log "installing wrk"
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get install -y wrk || { $sudo apt-get update && $sudo apt-get install -y wrk; }
fi
for tool in python3 curl cargo; do
  command -v "$tool" >/dev/null || die "needs $tool"
done

# The work tree may differ from the commit: fingerprint what was built.
source_digest=$(cd "$root" && find Cargo.toml Cargo.lock src migrations mappings -type f 2>/dev/null | LC_ALL=C sort |
  xargs sha256sum | sha256sum | cut -c1-16)

if [[ -n "${BENCH_BIN:-}" ]]; then
  bin=$BENCH_BIN # another build (an A/B comparison): nothing is built
  source_digest="$source_digest (not built: $bin)"
else
  log "cargo build --release"
  (cd "$root" && cargo build --release)
  bin="$root/target/release/nara-gateway"
fi
[[ -x "$bin" ]] || die "no binary at $bin"
# Every request is authenticated and audited: a region client's token, as an
# operator gets one (tokens live 5 minutes; one is fetched per scenario).
# The ingest tests push as a municipality (lund-ehr: the records are Lund's).
fresh_token() {
  (cd "$root" && NARA_SERVER__TLS__ENABLED=false "$bin" token issue --client "${1:-region-skane}" 2>/dev/null)
}

work=$(mktemp -d "${TMPDIR:-/tmp}/nara-bench.XXXXXX")
mkdir -p "$results"
gw_pid=""

stop_gateway() {
  if [[ -n "$gw_pid" ]] && kill -0 "$gw_pid" 2>/dev/null; then
    kill -TERM "$gw_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$gw_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$gw_pid" 2>/dev/null || true
    wait "$gw_pid" 2>/dev/null || true
  fi
  gw_pid=""
  exec 3<&-
}
cleanup() {
  stop_gateway
  for name in "${pg_databases[@]}"; do
    psql "$pg_admin" -qc "DROP DATABASE IF EXISTS $name WITH (FORCE)" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_us() { local t=${EPOCHREALTIME/[.,]/}; echo "$t"; }

# db_url NAME: the database URL of a scenario (a file in the work folder, or
# a PostgreSQL database created for it and dropped at exit).
db_url() {
  if [[ $store == postgres ]]; then
    local name="nara_bench_$1_$$"
    psql "$pg_admin" -qc "DROP DATABASE IF EXISTS $name" -c "CREATE DATABASE $name" >/dev/null
    pg_databases+=("$name")
    echo "${pg_admin%/*}/$name"
  else
    echo "sqlite://$work/$1.db"
  fi
}
pg_databases=()

# db_size_kb NAME URL
db_size_kb() {
  if [[ $store == postgres ]]; then
    psql "$pg_admin" -Atc "SELECT pg_database_size('${2##*/}') / 1024"
  else
    local db=${2#sqlite://}
    (du -sk "$db" "$db-wal" 2>/dev/null || true) | awk '{ s += $1 } END { print s + 0 }'
  fi
}

# start_gateway DB_URL NAME: starts `serve` on a free port; sets gw_pid,
# gw_addr, listen_ms (spawn → `listening on` line) and ready_ms (spawn →
# first 200 from /health/ready).
start_gateway() {
  local db=$1 name=$2 fifo="$work/$2.stdout" line t0 t1 t2 code
  rm -f "$fifo"
  mkfifo "$fifo"
  t0=$(now_us)
  NARA_SERVER__LISTEN=127.0.0.1:0 NARA_DATABASE__URL="$db" NARA_SERVER__TLS__ENABLED=false \
    "$bin" serve >"$fifo" 2>"$work/$name.log" &
  gw_pid=$!
  exec 3<"$fifo"
  if ! IFS= read -r -t 120 line <&3; then
    cat "$work/$name.log" >&2
    die "gateway ($name) printed no listening line"
  fi
  t1=$(now_us)
  [[ $line =~ ^listening\ on\ http://([0-9.:]+)$ ]] || die "unexpected first line: $line"
  gw_addr=${BASH_REMATCH[1]}
  for _ in $(seq 2000); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://$gw_addr/health/ready" || true)
    [[ $code == 200 ]] && break
    sleep 0.005
  done
  [[ $code == 200 ]] || die "gateway ($name) not ready: /health/ready answered $code"
  t2=$(now_us)
  listen_ms=$(((t1 - t0) / 1000))
  ready_ms=$(((t2 - t0) / 1000))
  log "gateway ($name) pid $gw_pid at http://$gw_addr: listening after ${listen_ms} ms, ready after ${ready_ms} ms"
}

status_kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$gw_pid/status"; }

failed=0

# run_wrk SCENARIO TEST SCRIPT IDS [CLIENT]
run_wrk() {
  [[ -n "${BENCH_TOKEN_FIXED:-}" ]] || export BENCH_TOKEN=$(fresh_token "${5:-region-skane}")
  local scenario=$1 test=$2 script=$3 ids=$4 out="$work/$1-$2.wrk" rc=0
  log "$scenario: $test (wrk -t$threads -c$connections -d${duration}s)"
  BENCH_DIR="$bench" wrk -t"$threads" -c"$connections" -d"${duration}s" --timeout 10s --latency \
    -s "$bench/$script" "http://$gw_addr" -- "$ids" >"$out" 2>"$out.err" || rc=$?
  grep -v '^BENCH_RESULT ' "$out" >&2 || true
  cat "$out.err" >&2
  if ! grep -q '^BENCH_RESULT ' "$out"; then
    printf '{"test":"%s","failed":true,"wrk_exit":%d}\n' "$test" "$rc" >>"$work/$scenario.tests"
  else
    sed -n 's/^BENCH_RESULT {/{"test":"'"$test"'","wrk_exit":'"$rc"',/p' "$out" >>"$work/$scenario.tests"
  fi
  if [[ $rc -ne 0 ]]; then
    failed=1
    echo "!! $scenario/$test FAILED (wrk exit $rc): see above" >&2
  fi
  if ! kill -0 "$gw_pid" 2>/dev/null; then
    tail -50 "$work/$scenario.log" >&2
    die "the gateway died during $scenario/$test"
  fi
  echo "$test $(status_kb VmRSS) $(status_kb VmHWM)" >>"$work/$scenario.rss"
}

all_tests="read search include create transfer ingest ingest_batch"
for t in ${BENCH_TESTS:-}; do
  [[ " $all_tests " == *" $t "* ]] || die "unknown test \`$t\` in BENCH_TESTS ($all_tests)"
done
# wanted TEST: whether BENCH_TESTS (default: all) names it.
wanted() { [[ " ${BENCH_TESTS:-$all_tests} " == *" $1 "* ]]; }

# scenario NAME PATIENTS OBS_PER_PATIENT
scenario() {
  local name=$1 patients=$2 per=$3 db ids="$work/$1-ids.txt" t0 t1
  db=$(db_url "$name")
  start_gateway "$db" "$name"
  [[ -n "${BENCH_TOKEN_FIXED:-}" ]] || export BENCH_TOKEN=$(fresh_token)
  local cold_listen=$listen_ms cold_ready=$ready_ms
  log "$name: seeding $patients patients x $per Observations"
  t0=$(now_us)
  BENCH_INGEST_TOKEN=$(fresh_token lund-ehr) python3 "$bench/seed.py" --base "http://$gw_addr/fhir" \
    --patients "$patients" --observations-per-patient "$per" --care-records --seed "$seed" \
    --ids-out "$ids" >&2 || die "seeding failed (see above)"
  t1=$(now_us)
  local seed_s rss_after_seed
  seed_s=$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.1f", d / 1e6 }')
  rss_after_seed=$(status_kb VmRSS)
  : >"$work/$name.tests"
  : >"$work/$name.rss"
  wanted read && run_wrk "$name" read read.lua "$ids"
  wanted search && run_wrk "$name" search search.lua "$ids"
  wanted include && BENCH_SEARCH_EXTRA="&_include=Observation:subject" run_wrk "$name" include search.lua "$ids"
  wanted create && run_wrk "$name" create create.lua "$ids"
  wanted transfer && run_wrk "$name" transfer transfer.lua "$ids"
  wanted ingest && run_wrk "$name" ingest ingest.lua "$ids" lund-ehr
  wanted ingest_batch && run_wrk "$name" ingest_batch ingest_batch.lua "$ids" lund-ehr
  local hwm rss
  hwm=$(status_kb VmHWM)
  rss=$(status_kb VmRSS)
  stop_gateway
  local db_kb
  db_kb=$(db_size_kb "$name" "$db")
  # With a filled store: restart on the same file.
  start_gateway "$db" "$name-restart"
  [[ -n "${BENCH_TOKEN_FIXED:-}" ]] || export BENCH_TOKEN=$(fresh_token)
  local warm_listen=$listen_ms warm_ready=$ready_ms warm_rss
  warm_rss=$(status_kb VmRSS)
  stop_gateway
  cat >"$work/$name.meta" <<EOF
{"scenario":"$name","patients":$patients,"observations_per_patient":$per,
 "observations":$((patients * per)),"seed_seconds":$seed_s,
 "peak_rss_kb":$hwm,"rss_end_kb":$rss,"rss_after_seed_kb":$rss_after_seed,
 "db_kb":$db_kb,
 "startup_empty_listen_ms":$cold_listen,"startup_empty_ready_ms":$cold_ready,
 "restart_filled_listen_ms":$warm_listen,"restart_filled_ready_ms":$warm_ready,
 "restart_filled_rss_kb":$warm_rss}
EOF
}

# git commit without running git: read .git/HEAD and the ref it names.
commit="unknown"
if [[ -f "$root/.git/HEAD" ]]; then
  head=$(<"$root/.git/HEAD")
  if [[ $head == ref:\ * ]]; then
    ref=${head#ref: }
    if [[ -f "$root/.git/$ref" ]]; then
      commit=$(<"$root/.git/$ref")
    elif [[ -f "$root/.git/packed-refs" ]]; then
      commit=$(awk -v r="$ref" '$2 == r { print $1 }' "$root/.git/packed-refs")
    fi
  else
    commit=$head
  fi
fi

# The machine's own speed, which drifts on shared hosts: milliseconds for
# one core to hash 256 MiB, and the processor time the host took for
# others during the run (steal, from /proc/stat), so that runs of different
# hours can be told apart from changes of the gateway.
calibrate() {
  local t0
  t0=$(date +%s%N)
  head -c 268435456 /dev/zero | sha256sum >/dev/null
  echo $((($(date +%s%N) - t0) / 1000000))
}
cpu_times() { awk '/^cpu / { print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $9 }' /proc/stat; }
calibration_before=$(calibrate)
read -r cpu_total_before cpu_steal_before < <(cpu_times)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# BENCH_SCENARIOS picks scenarios by name: small (2,000 Observations),
# medium (10,000 across 1,000 patients), large (100,000), huge (1,000,000
# Observations across 10,000 patients).
for name in ${BENCH_SCENARIOS:-small $([[ $quick -eq 1 ]] || echo large)}; do
  case "$name" in
    small) scenario small 200 10 ;;
    medium) scenario medium 1000 10 ;;
    large) scenario large 1000 100 ;;
    huge) scenario huge 10000 100 ;;
    *) die "unknown scenario \`$name\` in BENCH_SCENARIOS (small, medium, large, huge)" ;;
  esac
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
read -r cpu_total_after cpu_steal_after < <(cpu_times)
steal_percent=$(awk -v s=$((cpu_steal_after - cpu_steal_before)) -v t=$((cpu_total_after - cpu_total_before)) \
  'BEGIN { printf "%.1f", (t > 0 ? 100 * s / t : 0) }')
calibration_after=$(calibrate)

export BENCH_WORK="$work" BENCH_STARTED="$started" BENCH_COMMIT="$commit" \
  BENCH_LOAD_BEFORE="$load_before" BENCH_LOAD_AFTER="$load_after" \
  BENCH_CALIBRATION="$calibration_before $calibration_after" BENCH_STEAL="$steal_percent" \
  BENCH_CONNECTIONS="$connections" BENCH_THREADS="$threads" BENCH_SECONDS="$duration" \
  BENCH_OUT="$results/latest$([[ $store == postgres ]] && echo -postgres).json" BENCH_STORE="$store" BENCH_SEED="$seed" BENCH_SOURCE_DIGEST="$source_digest" \
  BENCH_BATCH="${BENCH_BATCH:-100}"
python3 - <<'PY'
import json, os, platform, subprocess

env = os.environ
work = env["BENCH_WORK"]
cpu = "unknown"
with open("/proc/cpuinfo") as f:
    for line in f:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
scenarios = []
for name in ("small", "medium", "large", "huge"):
    meta = os.path.join(work, f"{name}.meta")
    if not os.path.exists(meta):
        continue
    with open(meta) as f:
        s = json.load(f)
    with open(os.path.join(work, f"{name}.tests")) as f:
        s["tests"] = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(work, f"{name}.rss")) as f:
        s["rss_after_test_kb"] = {t: {"rss": int(r), "hwm": int(h)} for t, r, h in
                                  (line.split() for line in f if line.strip())}
    scenarios.append(s)
doc = {
    "date": env["BENCH_STARTED"],
    "commit": env["BENCH_COMMIT"],
    "source_digest": env["BENCH_SOURCE_DIGEST"],
    "cpu_model": cpu,
    "nproc": os.cpu_count(),
    "kernel": platform.release(),
    "load_avg_before": env["BENCH_LOAD_BEFORE"],
    "load_avg_after": env["BENCH_LOAD_AFTER"],
    "calibration_ms": [int(v) for v in env["BENCH_CALIBRATION"].split()],
    "cpu_steal_percent": float(env["BENCH_STEAL"]),
    "wrk": {"connections": int(env["BENCH_CONNECTIONS"]), "threads": int(env["BENCH_THREADS"]),
            "seconds_per_test": int(env["BENCH_SECONDS"])},
    "seed": int(env["BENCH_SEED"]),
    "store": env["BENCH_STORE"],
    "sqlite_synchronous": env.get("NARA_DATABASE__SQLITE_SYNCHRONOUS", "full"),
    "scenarios": scenarios,
}
with open(env["BENCH_OUT"], "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")

print(f"\n## nara-gateway benchmark, {doc['date']}\n")
print(f"commit {doc['commit'][:12]} (sources {doc['source_digest']}), {cpu}, nproc {doc['nproc']}, "
      f"load average {doc['load_avg_before']} (before) / {doc['load_avg_after']} (after), "
      f"machine speed: 256 MiB hashed in {doc['calibration_ms'][0]} / {doc['calibration_ms'][1]} ms "
      f"(before / after), steal {doc['cpu_steal_percent']} %, "
      f"wrk -t{doc['wrk']['threads']} -c{doc['wrk']['connections']} -d{doc['wrk']['seconds_per_test']}s, "
      + (f"sqlite synchronous={doc['sqlite_synchronous']}" if doc["store"] == "sqlite" else "PostgreSQL store"))
labels = {"read": "read by id", "search": "search subject+category",
          "include": "search subject+category, _include=Observation:subject", "create": "create",
          "transfer": "transfer creation (/ingest/dokument)",
          "ingest": "ingest, single record", "ingest_batch": "ingest, batches of %s" % env.get("BENCH_BATCH", "100")}
batch = int(env.get("BENCH_BATCH", "100"))
for s in scenarios:
    print(f"\n### {s['scenario']}: {s['observations']:,} Observations across {s['patients']:,} patients "
          f"(seeded in {s['seed_seconds']} s)\n")
    print("| test | requests/s | p50 ms | p99 ms | errors |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for t in s["tests"]:
        if t.get("failed"):
            print(f"| {labels[t['test']]} | FAILED (wrk exit {t['wrk_exit']}) | | | |")
            continue
        errors = t["non2xx"] + t["socket_errors"]
        rate = f"{t['rps']:,.0f}"
        if t["test"] == "ingest_batch":
            rate += f" ({t['rps'] * batch:,.0f} records/s)"
        print(f"| {labels[t['test']]} | {rate} | {t['p50_ms']:.2f} | {t['p99_ms']:.2f} | {errors} |")
    after = ", ".join(f"{t} {v['hwm'] / 1024:.0f} MB" for t, v in s["rss_after_test_kb"].items())
    print(f"\npeak RSS (VmHWM): {s['peak_rss_kb'] / 1024:.1f} MB (after seeding {s['rss_after_seed_kb'] / 1024:.0f} MB "
          f"RSS; peak after each test: {after}); "
          f"start-up on an empty store: {s['startup_empty_listen_ms']} ms to `listening on`, "
          f"{s['startup_empty_ready_ms']} ms to ready; "
          f"restart on the filled store ({s['db_kb'] / 1024:.0f} MB): {s['restart_filled_listen_ms']} ms "
          f"to `listening on`, {s['restart_filled_ready_ms']} ms to ready")
    for t in s["tests"]:
        if t.get("first_error"):
            print(f"\n{s['scenario']}/{t['test']}: first non-2xx answer: {t['first_error']}")
print(f"\nwritten: {env['BENCH_OUT']}")
PY

if [[ $failed -ne 0 ]]; then
  echo "run.sh: some tests had failed requests; the numbers above are not valid" >&2
  exit 1
fi
