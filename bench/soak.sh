#!/usr/bin/env bash
# Soak: 5,000 clients over 20 server connections in transaction mode for SOAK_MINUTES
# (default 10), every server connection terminated (pg_terminate_backend) every
# SOAK_FAULT_EVERY seconds (default 30). Opt-in, not part of scripts/test.sh.
#
#   bench/soak.sh                        # 10 minutes
#   SOAK_MINUTES=2 bench/soak.sh         # a short run
#   SOAK_CLIENTS=1000 SOAK_POOL_SIZE=20 SOAK_FAULT_EVERY=30 bench/soak.sh
#   SOAK_PROFILE=debug bench/soak.sh     # use target/debug/pgtenant (no release build)
#   PGTENANT_BIN=... SOAK_BIN=... bench/soak.sh   # binaries already built (no build)
#
# Prints and appends to bench/RESULTS-soak.md: transactions committed, errors by
# SQLSTATE against server connections terminated (each carried at most one client
# transaction), reconnects, pgtenant's RSS slope (KiB/min after the first minute) and
# its open descriptors before the clients came and after they left.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
MINUTES=${SOAK_MINUTES:-10}
CLIENTS=${SOAK_CLIENTS:-5000}
POOL_SIZE=${SOAK_POOL_SIZE:-20}
FAULT_EVERY=${SOAK_FAULT_EVERY:-30}
PROFILE=${SOAK_PROFILE:-release}

say() { printf '[soak %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit 1; }

PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r | head -n 1)}
[[ -x $PG_BIN/initdb ]] || die "no PostgreSQL server binaries (set PG_BIN)"

case $PROFILE in
    release) profile_flag=--release ;;
    debug) profile_flag= ;;
    *) die "SOAK_PROFILE is release or debug" ;;
esac
if [[ -n ${PGTENANT_BIN:-} && -n ${SOAK_BIN:-} ]]; then
    say "using $PGTENANT_BIN and $SOAK_BIN (no build)"
else
    say "building pgtenant and the soak driver (cargo build $profile_flag --bin pgtenant --bench soak)"
    built=$(cargo build $profile_flag --bin pgtenant --bench soak --message-format=json \
        | python3 -c 'import json,sys
for m in map(json.loads, sys.stdin):
    if m.get("reason")=="compiler-artifact" and m.get("executable"): print(m["target"]["name"], m["executable"])')
    PGTENANT_BIN=$(awk '$1=="pgtenant"{print $2}' <<<"$built" | tail -n 1)
    SOAK_BIN=$(awk '$1=="soak"{print $2}' <<<"$built" | tail -n 1)
fi
[[ -x $PGTENANT_BIN ]] || die "no pgtenant binary after the build"
[[ -x $SOAK_BIN ]] || die "no soak driver after the build"

hard=$(ulimit -Hn)
if [[ $hard == unlimited ]]; then ulimit -n 65536 || true; else ulimit -n "$hard" || true; fi
(( $(ulimit -n) > 2 * CLIENTS + 500 )) || die "open files limit $(ulimit -n) is too low for $CLIENTS clients"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DIR=$(mktemp -d /tmp/soak-XXXXXX)
chmod 755 "$DIR"
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[[ $(id -u) == 0 ]] && chown postgres "$DIR"
PG_PORT=$(free_port)
PROXY_PORT=$(free_port)
proxy_pid=""
cleanup() {
    [[ -n $proxy_pid ]] && kill "$proxy_pid" 2>/dev/null || true
    as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
    [[ ${SOAK_KEEP:-0} == 1 ]] || rm -rf "$DIR"
}
trap cleanup EXIT

say "starting PostgreSQL on port $PG_PORT ($DIR)"
as_pg "$PG_BIN/initdb" -D "$DIR/data" -U postgres --auth=trust >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" -l "$DIR/pg.log" -w -o "-p $PG_PORT -k $DIR -c listen_addresses=127.0.0.1 -c max_connections=100" start >/dev/null
PSQL="$PG_BIN/psql -X -q -h 127.0.0.1 -p $PG_PORT -U postgres -v ON_ERROR_STOP=1"
$PSQL -d postgres -c "CREATE ROLE app LOGIN" -c "CREATE DATABASE soak OWNER app"
$PSQL -d soak -c "SET ROLE app" -c "CREATE TABLE soak (id int PRIMARY KEY, hits bigint NOT NULL DEFAULT 0)" \
    -c "INSERT INTO soak SELECT g FROM generate_series(1, 1000) g"

cat > "$DIR/tenants.toml" <<TOML
[hosts.pg]
address = "127.0.0.1:$PG_PORT"
max_connections = 80

[tenants.soak]
host = "pg"
database = "soak"
backend_user = "app"
pool_size = $POOL_SIZE
TOML
cat > "$DIR/pgtenant.toml" <<TOML
[proxy]
listen = "127.0.0.1:$PROXY_PORT"
pool_mode = "transaction"
max_client_conn = $((CLIENTS + 100))
max_unauthenticated_per_address = $((CLIENTS + 100))
[pool]
checkout_timeout = "60s"
[registry]
file = "$DIR/tenants.toml"
TOML
PGTENANT_LOG=warn "$PGTENANT_BIN" serve --config "$DIR/pgtenant.toml" 2>"$DIR/pgtenant.log" &
proxy_pid=$!
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $PROXY_PORT)).close()" 2>/dev/null && break
    sleep 0.1
done

say "$CLIENTS clients, pool_size $POOL_SIZE, faults every ${FAULT_EVERY}s, $MINUTES minutes"
result=$("$SOAK_BIN" --port "$PROXY_PORT" --db soak --server-port "$PG_PORT" --clients "$CLIENTS" \
    --minutes "$MINUTES" --fault-every "$FAULT_EVERY" --pid "$proxy_pid")
echo "$result"
kill -0 "$proxy_pid" 2>/dev/null || die "pgtenant died during the soak (see $DIR/pgtenant.log)"
{
    echo
    echo "## $(date -u +%Y-%m-%dT%H:%MZ): $CLIENTS clients, pool_size $POOL_SIZE, $MINUTES min, faults every ${FAULT_EVERY}s ($PROFILE build, $(nproc) cores)"
    echo
    echo '```json'
    echo "$result"
    echo '```'
} >> "$ROOT/bench/RESULTS-soak.md"
say "appended to bench/RESULTS-soak.md"
