#!/usr/bin/env bash
# A registry of N tenants (default 100,000), from the file and from PostgreSQL:
# load time at start, memory per registered tenant, how long each reload takes, and
# the longest stall a client saw while the registry was reloaded under it.
#
#   cargo build --release && bench/registry.sh            # prints a markdown report
#   N=20000 DURATION=10 bench/registry.sh
#
# One throwaway PostgreSQL cluster (PG_BIN, default /usr/lib/postgresql/15/bin)
# holds the tenants' database and the registry database. Clients are pgbench
# (`SELECT 1` through the proxy, 4 connections, transaction mode, every transaction
# logged); a stall is the longest transaction. Each source is run twice: without
# reloads (the baseline) and with a reload every RELOAD_EVERY seconds.
set -euo pipefail

N=${N:-100000}
DURATION=${DURATION:-20}
RELOAD_EVERY=${RELOAD_EVERY:-2}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/pgtenant}
WORK=$(mktemp -d /tmp/pgtenant-registry-bench.XXXXXX)
chmod 755 "$WORK"
PG_PORT=$((20000 + RANDOM % 20000))
PROXY_PORT=$((PG_PORT + 1))

as_pg() {
  if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi
}
cleanup() {
  [ -n "${PROXY_PID:-}" ] && kill "$PROXY_PID" 2>/dev/null || true
  as_pg "$PG_BIN/pg_ctl -D $WORK/pg -m immediate stop" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir "$WORK/pg"
[ "$(id -u)" = 0 ] && chown postgres "$WORK/pg"
as_pg "$PG_BIN/initdb -D $WORK/pg -A trust -U postgres" >/dev/null
as_pg "$PG_BIN/pg_ctl -D $WORK/pg -l $WORK/pg/log -w -o '-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200' start" >/dev/null
PSQL="psql -X -q -h 127.0.0.1 -p $PG_PORT -U postgres"
$PSQL -c "CREATE DATABASE erp" postgres
$PSQL -c "CREATE DATABASE registry" postgres
echo "SELECT 1;" >"$WORK/select.sql"

now_ms() { date +%s%3N; }

# Writes the registry file for $1 tenants (the last one's pool_size is $2).
write_file() {
  python3 - "$1" "$2" "$PG_PORT" >"$WORK/tenants.toml.tmp" <<'EOF'
import sys
n, size, port = int(sys.argv[1]), sys.argv[2], sys.argv[3]
out = [f'[hosts.pg-a]\naddress = "127.0.0.1:{port}"\nmax_connections = 50\n']
for i in range(1, n + 1):
    extra = f"pool_size = {size}\n" if i == n else ""
    out.append(f'[tenants.t{i}]\nhost = "pg-a"\ndatabase = "erp"\nsearch_path = ["t{i}"]\nbackend_user = "postgres"\n{extra}')
print("\n".join(out))
EOF
  mv "$WORK/tenants.toml.tmp" "$WORK/tenants.toml"
}

fill_db() {
  $PSQL registry <<EOF
TRUNCATE pgtenant.tenants, pgtenant.hosts, pgtenant.instances;
INSERT INTO pgtenant.hosts (name, address, max_connections) VALUES ('pg-a', '127.0.0.1:$PG_PORT', 50);
INSERT INTO pgtenant.tenants (name, host, database, search_path, backend_user)
  SELECT 't' || i, 'pg-a', 'erp', ARRAY['t' || i], 'postgres' FROM generate_series(1, $1) i;
EOF
}

# Starts the proxy with registry settings $1; sets PROXY_PID and LOAD_MS.
start_proxy() {
  cat >"$WORK/pgtenant.toml" <<EOF
[proxy]
listen = "127.0.0.1:$PROXY_PORT"
pool_mode = "transaction"
[registry]
$1
EOF
  local started
  started=$(now_ms)
  PGTENANT_LOG=info,pgtenant::registry=debug "$BIN" serve --config "$WORK/pgtenant.toml" >"$WORK/proxy.log" 2>&1 &
  PROXY_PID=$!
  until (exec 3<>/dev/tcp/127.0.0.1/$PROXY_PORT) 2>/dev/null; do
    kill -0 "$PROXY_PID" 2>/dev/null || { cat "$WORK/proxy.log"; exit 1; }
    sleep 0.01
  done
  LOAD_MS=$(($(now_ms) - started))
}

stop_proxy() {
  kill "$PROXY_PID"
  wait "$PROXY_PID" 2>/dev/null || true
  PROXY_PID=
}

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$PROXY_PID/status"; }

# pgbench through the proxy while $1 runs (a reload loop, or `true`); prints
# "transactions max_ms p99_ms" from the per-transaction log.
clients_during() {
  rm -f "$WORK"/pgbench_log.*
  (cd "$WORK" && pgbench -n -h 127.0.0.1 -p "$PROXY_PORT" -U postgres -c 4 -j 2 \
    -T "$DURATION" -f select.sql -l t1 >/dev/null 2>"$WORK/pgbench.err") &
  local bench=$!
  local deadline=$(($(date +%s) + DURATION - 1))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    sleep "$RELOAD_EVERY"
    $1
  done
  wait "$bench" || { cat "$WORK/pgbench.err"; exit 1; }
  cat "$WORK"/pgbench_log.* | awk '{print $3}' | sort -n | awk '
    { v[NR] = $1 } END { printf "%d %.1f %.1f\n", NR, v[NR] / 1000, v[int(NR * 0.99)] / 1000 }'
}

ROUND=0
reload_file() { ROUND=$((ROUND + 1)); write_file "$N" $((ROUND % 5 + 2)); }
reload_db() {
  ROUND=$((ROUND + 1))
  $PSQL registry -c "UPDATE pgtenant.tenants SET pool_size = $((ROUND % 5 + 2)) WHERE name = 't$N'"
}
reload_times() { grep -ao 'took_ms=[0-9]*' "$WORK/proxy.log" | cut -d= -f2 | sort -n | awk '
  { v[NR] = $1 } END { if (NR == 0) print "-"; else printf "%d reloads, median %d ms, max %d ms\n", NR, v[int((NR + 1) / 2)], v[NR] }'; }

report_row() { # source tenants load_ms rss_kib baseline during reloads
  echo "| $1 | $2 | $3 ms | $(($4 / 1024)) MiB | $5 | $6 | $7 |"
}

"$BIN" registry init --url "postgres://postgres@127.0.0.1:$PG_PORT/registry" >/dev/null

echo "# Registry of $N tenants: load, memory, reload under clients"
echo
echo "$(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL $($PG_BIN/postgres --version | awk '{print $3}'),"
echo "pgbench \`SELECT 1\` through the proxy, 4 clients, ${DURATION} s per run; a reload every ${RELOAD_EVERY} s."
echo "Client columns: transactions, longest transaction (the longest stall), p99."
echo
echo "| source | tenants | load at start | RSS | clients, no reload | clients, reloading | reload time (read + check + swap) |"
echo "|---|---|---|---|---|---|---|"

for source in file postgres; do
  for n in 1 "$N"; do
    if [ "$source" = file ]; then
      write_file "$n" 2
      start_proxy "file = \"$WORK/tenants.toml\"
watch_interval = \"200ms\""
    else
      fill_db "$n" >/dev/null
      start_proxy "url = \"postgres://postgres@127.0.0.1:$PG_PORT/registry\""
    fi
    sleep 1
    rss=$(rss_kib)
    if [ "$n" = 1 ]; then
      base_rss=$rss
      stop_proxy
      continue
    fi
    quiet=$(clients_during true)
    : >"$WORK/proxy.log"
    if [ "$source" = file ]; then busy=$(clients_during reload_file); else busy=$(clients_during reload_db); fi
    report_row "$source" "$n" "$LOAD_MS" "$rss" "$quiet" "$busy" "$(reload_times)"
    per_tenant=$(( (rss - base_rss) * 1024 / n ))
    echo "$source: $per_tenant bytes of RSS per registered tenant ($(( (rss - base_rss) / 1024 )) MiB over a 1-tenant registry)" >>"$WORK/notes"
    stop_proxy
  done
done
echo
cat "$WORK/notes"
