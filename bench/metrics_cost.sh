#!/usr/bin/env bash
# The metrics' share of the proxy's work: pgbench -S (simple protocol, transaction
# pooling) through a release build of pgtenant, the proxy's CPU time per transaction
# read from /proc, beside `cargo bench --bench metrics_cost` (what the metric calls of
# one transaction cost alone). Loopback only; prints one line per round.
#
#   bench/metrics_cost.sh [BINARY] [ROUNDS] [SECONDS]
#
# BINARY defaults to target/release/pgtenant. Results: bench/METRICS-COST.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${1:-target/release/pgtenant}
ROUNDS=${2:-3}
SECONDS_PER_ROUND=${3:-10}
PG=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
DIR=$(mktemp -d /tmp/pgtenant-metrics-cost.XXXXXX)
chmod 755 "$DIR"
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PGPORT=$(free_port)
PROXY_PORT=$(free_port)
cleanup() {
    [[ -n ${PROXY_PID:-} ]] && kill "$PROXY_PID" 2>/dev/null || true
    as_pg "$PG/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap cleanup EXIT
[[ $(id -u) == 0 ]] && chown postgres "$DIR"
as_pg "$PG/initdb" -D "$DIR/data" -U postgres -A trust >/dev/null
as_pg "$PG/pg_ctl" -D "$DIR/data" -l "$DIR/pg.log" -w \
    -o "-p $PGPORT -k $DIR -c listen_addresses=127.0.0.1 -c max_connections=100 -c fsync=off" start >/dev/null
"$PG/createdb" -h 127.0.0.1 -p "$PGPORT" -U postgres bench
pgbench -q -i -s 1 -h 127.0.0.1 -p "$PGPORT" -U postgres bench >/dev/null 2>&1
cat >"$DIR/tenants.toml" <<TOML
[hosts.a]
address = "127.0.0.1:$PGPORT"
max_connections = 50
[tenants.bench]
host = "a"
database = "bench"
backend_user = "postgres"
pool_size = 8
TOML
cat >"$DIR/pgtenant.toml" <<TOML
[proxy]
listen = "127.0.0.1:$PROXY_PORT"
pool_mode = "transaction"
[registry]
file = "$DIR/tenants.toml"
TOML
PGTENANT_LOG=warn "$BIN" serve --config "$DIR/pgtenant.toml" >"$DIR/proxy.log" 2>&1 &
PROXY_PID=$!
for _ in $(seq 50); do
    psql -X -q -h 127.0.0.1 -p "$PROXY_PORT" -U postgres -c 'SELECT 1' bench >/dev/null 2>&1 && break
    sleep 0.2
done
cpu_ticks() { awk '{print $14 + $15}' "/proc/$PROXY_PID/stat"; }
TICK=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
    before=$(cpu_ticks)
    out=$(pgbench -n -S -M simple -c 8 -j 2 -T "$SECONDS_PER_ROUND" -h 127.0.0.1 -p "$PROXY_PORT" -U postgres bench 2>&1)
    after=$(cpu_ticks)
    txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out")
    python3 -c "
t=$txns; c=($after-$before)/$TICK
print(f'round $round: {t} transactions, {float(\"$tps\"):.0f} tps, proxy CPU {c:.2f} s, {c/t*1e9:.0f} ns CPU per transaction')"
done
