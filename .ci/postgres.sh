#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers for the tests and prints its URL.
#
#   .ci/postgres.sh        → postgres://postgres@127.0.0.1:5432/postgres
#
# Uses NARA_TEST_POSTGRES_URL when set, else the server on 127.0.0.1:5432
# (trust authentication, user postgres). Where none runs, installs Debian's
# postgresql and starts a throw-away cluster on that port.
set -Eeuo pipefail
if [[ -n "${NARA_TEST_POSTGRES_URL:-}" ]]; then
  echo "$NARA_TEST_POSTGRES_URL"
  exit 0
fi
url="postgres://postgres@127.0.0.1:5432/postgres"
if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "$url"
  exit 0
fi
sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  { $sudo apt-get install -y --no-install-recommends postgresql >/dev/null ||
    { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends postgresql >/dev/null; }; } >&2
fi
bin=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
data=$(mktemp -d /tmp/nara-pg.XXXXXX)
run_as=()
if [[ $(id -u) -eq 0 ]]; then
  chown postgres "$data"
  run_as=(runuser -u postgres --)
fi
"${run_as[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust >/dev/null
"${run_as[@]}" "$bin/pg_ctl" -D "$data" -l "$data/log" -o "-c listen_addresses=127.0.0.1 -p 5432 -k /tmp" -w start >&2
echo "$url"
