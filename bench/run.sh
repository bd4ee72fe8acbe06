#!/usr/bin/env bash
# pgtenant benchmark: pgtenant beside a direct connection and PgBouncer, on this machine,
# over loopback. One command; writes bench/RESULTS.md and bench/results.json.
#
#   bench/run.sh                          # 10 s per run, 3 rounds (about 45 minutes)
#   QUICK=1 bench/run.sh                  # 3 s per run, 1 round: a smoke run
#   BENCH_SECONDS=5 BENCH_ROUNDS=3 bench/run.sh
#
# Settings (environment): BENCH_SECONDS, BENCH_ROUNDS, BENCH_POOL_SIZE (20),
# BENCH_HOST_BUDGET (100), BENCH_SHARED_POOL_SIZE (= pool size), BENCH_TENANT_WARMUP (= seconds),
# BENCH_TENANTS (1000), BENCH_CLIENTS ("1,16,64,256"),
# BENCH_IDLE_COUNTS ("2000,10000"), BENCH_CPU_TXNS (100000), BENCH_SYSCALL_TXNS (2000),
# BENCH_KEEP=1 keeps the temp dir (cluster, configs, logs). To run a part only:
# BENCH_ONLY="pgbench,many,idle,cpu,syscalls" (steps) and BENCH_TESTS="connect-c16,…"
# (pgbench test ids). See bench/README.md.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

if [[ ${QUICK:-0} == 1 ]]; then
    export BENCH_SECONDS=${BENCH_SECONDS:-3} BENCH_ROUNDS=${BENCH_ROUNDS:-1}
else
    export BENCH_SECONDS=${BENCH_SECONDS:-10} BENCH_ROUNDS=${BENCH_ROUNDS:-3}
fi

say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit 1; }

is_root() { [[ $(id -u) == 0 ]]; }

APT_UPDATED=0
apt_install() {
    is_root || die "missing $*; install it (apt-get install $*) or run as root"
    command -v apt-get >/dev/null || die "missing $*, and no apt-get to install it"
    if [[ $APT_UPDATED == 0 ]]; then
        say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        APT_UPDATED=1
    fi
    say "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# PostgreSQL server binaries: PG_BIN, pg_config --bindir, or the newest /usr/lib/postgresql/*/bin.
find_pg_bin() {
    local d
    for d in "${PG_BIN:-}" "$(pg_config --bindir 2>/dev/null || true)" \
        $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
        [[ -n $d && -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]] && { echo "$d"; return 0; }
    done
    return 1
}

command -v python3 >/dev/null || apt_install python3
command -v cargo >/dev/null || die "cargo not found (install Rust)"

PG_BIN_DIR=$(find_pg_bin) || { apt_install postgresql; PG_BIN_DIR=$(find_pg_bin) || die "no PostgreSQL server binaries after install"; }
PGBENCH=$(command -v pgbench || true)
[[ -z $PGBENCH && -x $PG_BIN_DIR/pgbench ]] && PGBENCH=$PG_BIN_DIR/pgbench
[[ -n $PGBENCH ]] || { apt_install postgresql-client; PGBENCH=$(command -v pgbench) || die "no pgbench"; }
PSQL=$(command -v psql || echo "$PG_BIN_DIR/psql")
[[ -x $PSQL ]] || die "no psql"
command -v pgbouncer >/dev/null || apt_install pgbouncer
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
[[ -x $PGBOUNCER ]] || die "no pgbouncer"
command -v strace >/dev/null || apt_install strace
STRACE=$(command -v strace)

say "building pgtenant (cargo build --release)"
cargo build --release >&2
PGTENANT_BIN=$ROOT/target/release/pgtenant
[[ -x $PGTENANT_BIN ]] || die "no $PGTENANT_BIN after the build"

say "building the load tool (cargo bench --no-run --bench load)"
LOAD_BIN=$(cargo bench --no-run --bench load --message-format=json \
    | python3 -c 'import json,sys
exe=[m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="load"]
print(exe[-1] if exe else "")')
[[ -x $LOAD_BIN ]] || die "could not find the load tool's binary"

# Every proxy and client here may hold 10,000+ sockets.
hard=$(ulimit -Hn)
if [[ $hard == unlimited ]]; then ulimit -n 65536 || true; else ulimit -n "$hard" || true; fi
say "open files limit: $(ulimit -n)"

export PG_BIN_DIR PGBENCH PSQL PGBOUNCER STRACE PGTENANT_BIN LOAD_BIN

mkdir -p "$ROOT/bench/out"
status=0
python3 "$ROOT/bench/bench.py" || status=$?
if [[ -s $ROOT/bench/out/raw.json ]]; then
    python3 "$ROOT/bench/report.py" "$ROOT/bench/out/raw.json" \
        --markdown "$ROOT/bench/RESULTS.md" --json "$ROOT/bench/results.json"
    say "wrote bench/RESULTS.md and bench/results.json"
fi
[[ $status == 0 ]] || die "the benchmark stopped early (exit $status); RESULTS.md holds what was measured"
