#!/usr/bin/env bash
# The test command: formatting, lints, and every test (unit and integration tests
# against real throwaway PostgreSQL clusters).
#
#   scripts/test.sh                        everything (cargo test --all-targets --no-fail-fast)
#   scripts/test.sh -- <cargo test args>   the same checks, then `cargo test <args>`
#                                          instead, e.g.
#                                            scripts/test.sh -- resolve
#                                            scripts/test.sh -- --test core -- --nocapture
#                                          (a name filter cannot go with --all-targets:
#                                          the bench binaries would get it too)
#
# The fuzz targets (proptest, in the unit tests: `cargo test --lib fuzz`) run
# PGTENANT_FUZZ_CASES cases each (default 2,000, under a minute for all of them);
# raise it for a longer hunt, e.g. PGTENANT_FUZZ_CASES=100000 cargo test --lib fuzz.
#
# Needs Rust (cargo). PostgreSQL server binaries (initdb, pg_ctl, postgres), psql and
# pgbench are installed with apt-get when missing (Debian/Ubuntu); set PG_BIN to use
# a PostgreSQL installation of your own.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo_test_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --)
            shift
            cargo_test_args=("$@")
            break
            ;;
        -h | --help)
            sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "scripts/test.sh: unknown argument '$1' (extra cargo test arguments go after --)" >&2
            exit 2
            ;;
    esac
done

started=$(date +%s)
step() {
    echo
    echo "==> [$(($(date +%s) - started))s] $*"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "scripts/test.sh: need root (or sudo) to run: $*" >&2
        exit 1
    fi
}

apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "scripts/test.sh: apt-get not found; install $* yourself (or set PG_BIN)" >&2
        exit 1
    fi
    step "installing $* with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

have_server_binaries() {
    [ -n "${PG_BIN:-}" ] && return 0
    command -v initdb >/dev/null 2>&1 && return 0
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

# psql and pgbench: on PATH, in PG_BIN, or in a Debian server package's bin dir.
have_tool() {
    command -v "$1" >/dev/null 2>&1 && return 0
    [ -n "${PG_BIN:-}" ] && [ -x "$PG_BIN/$1" ] && return 0
    compgen -G "/usr/lib/postgresql/*/bin/$1" >/dev/null
}

step "checking the toolchain"
if ! command -v cargo >/dev/null 2>&1; then
    echo "scripts/test.sh: cargo not found; install Rust from https://rustup.rs" >&2
    exit 1
fi
for component in rustfmt clippy; do
    subcommand=${component/rustfmt/fmt}
    if ! cargo "$subcommand" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            step "installing the Rust component $component"
            rustup component add "$component"
        else
            echo "scripts/test.sh: 'cargo $subcommand' is missing and rustup is not there to add it" >&2
            exit 1
        fi
    fi
done
cargo --version

step "checking for PostgreSQL (server binaries, psql, pgbench)"
if ! have_server_binaries; then
    apt_install postgresql postgresql-client
fi
if ! have_tool psql || ! have_tool pgbench; then
    apt_install postgresql postgresql-client postgresql-contrib
fi
step "checking for headless Chromium (the status page test)"
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    apt_install chromium
fi
if [ -n "${PG_BIN:-}" ]; then
    echo "PG_BIN=$PG_BIN"
else
    echo "initdb: $(command -v initdb || compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n 1)"
fi

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

full_run=0
if [ ${#cargo_test_args[@]} -eq 0 ]; then
    cargo_test_args=(--all-targets --no-fail-fast)
    full_run=1
fi
step "cargo test ${cargo_test_args[*]}"
RUST_BACKTRACE=1 cargo test "${cargo_test_args[@]}"

# The driver suite (tests/drivers.rs, part of the run above; it installs its Python
# venv, npm packages and the JDBC jar under target/drivers) leaves its results in
# target/driver-results; the compatibility matrix in README.md is generated from them.
if [ "$full_run" = 1 ]; then
    step "driver compatibility matrix: python3 tests/drivers/matrix.py"
    python3 tests/drivers/matrix.py
    git diff --stat -- README.md tests/drivers/MATRIX.md 2>/dev/null || true
fi

step "all checks passed"
