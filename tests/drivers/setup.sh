#!/usr/bin/env bash
# Installs what the driver compatibility suite (tests/drivers.rs) needs, into folders
# under target/drivers/. Idempotent and fast when already done.
#
#   tests/drivers/setup.sh python   target/drivers/venv: psycopg 3, psycopg2, asyncpg
#   tests/drivers/setup.sh node     target/drivers/node: node-postgres (pg)
#   tests/drivers/setup.sh java     /usr/share/java/postgresql.jar (Debian's
#                                   libpostgresql-jdbc-java) and the compiled test in
#                                   target/drivers/java
#   tests/drivers/setup.sh ruby     Debian's ruby-pg and ruby-activerecord
#   tests/drivers/setup.sh php      Debian's php-cli and php-pgsql (PDO pgsql, pgsql)
#   tests/drivers/setup.sh perl     Debian's libdbd-pg-perl (DBI, DBD::Pg)
#   tests/drivers/setup.sh go       Debian's golang-go and golang-github-jackc-pgx-v4-dev;
#                                   pgx_checks.go + pgx_common.go built offline
#                                   (GOPATH mode) into
#                                   target/drivers/go
#   tests/drivers/setup.sh all      all of them
#
# Exits non-zero with a message naming what is missing when an install fails (no
# network, no apt-get, ...): the driver tests fail on that, they do not skip.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$root/tests/drivers"
out="${CARGO_TARGET_DIR:-$root/target}/drivers"
mkdir -p "$out"

die() {
    echo "tests/drivers/setup.sh: $*" >&2
    exit 1
}

# One installer per folder at a time (cargo runs the driver tests in parallel threads).
lock() {
    exec 9>"$out/.$1.lock"
    flock 9
}

setup_python() {
    lock python
    local venv="$out/venv"
    local stamp="$venv/.pgtenant-drivers-1"
    if [ -f "$stamp" ] && "$venv/bin/python" -c 'import psycopg, psycopg2, asyncpg' 2>/dev/null; then
        return 0
    fi
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
    rm -rf "$venv"
    if ! python3 -m venv "$venv"; then
        rm -rf "$venv"
        apt_install python3-venv
        python3 -m venv "$venv" || die "python3 -m venv failed"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "psycopg[binary]>=3.1" "psycopg2-binary>=2.9" "asyncpg>=0.29" \
        || die "pip install of psycopg[binary], psycopg2-binary, asyncpg failed (network to PyPI?)"
    "$venv/bin/python" -c 'import psycopg, psycopg2, asyncpg' \
        || die "the drivers do not import after installing them"
    touch "$stamp"
}

setup_node() {
    lock node
    local dir="$out/node"
    local stamp="$dir/.pgtenant-drivers-1"
    if [ -f "$stamp" ] && [ -f "$dir/node_modules/pg/package.json" ]; then
        return 0
    fi
    command -v node >/dev/null 2>&1 || apt_install nodejs npm
    command -v npm >/dev/null 2>&1 || apt_install npm
    mkdir -p "$dir"
    [ -f "$dir/package.json" ] || echo '{"name":"pgtenant-driver-tests","private":true}' >"$dir/package.json"
    (cd "$dir" && npm install --silent --no-audit --no-fund "pg@^8" "pg-copy-streams@^6") \
        || die "npm install pg pg-copy-streams failed (network to the npm registry?)"
    touch "$stamp"
}

# apt-get install, with an apt-get update first if the package lists are stale.
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "need $*, and apt-get is not there to install it"
    echo "tests/drivers/setup.sh: apt-get install $*" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 \
        || { as_root env DEBIAN_FRONTEND=noninteractive apt-get update >/dev/null \
            && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null; } \
        || die "apt-get install $* failed"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

setup_java() {
    lock java
    local jar=/usr/share/java/postgresql.jar
    if [ ! -f "$jar" ]; then
        apt_install libpostgresql-jdbc-java
        [ -f "$jar" ] || die "$jar not found after installing libpostgresql-jdbc-java"
    fi
    command -v javac >/dev/null 2>&1 || apt_install default-jdk-headless
    local classes="$out/java"
    local src="$here/JdbcDriverTest.java"
    # Recompiled when the source or the driver changes (by content, not by date).
    local sum
    sum=$(cat "$src" "$jar" | sha256sum | cut -d' ' -f1)
    if [ -f "$classes/JdbcDriverTest.class" ] && [ "$(cat "$classes/.source-sum" 2>/dev/null)" = "$sum" ]; then
        return 0
    fi
    rm -rf "$classes"
    mkdir -p "$classes"
    javac -nowarn -d "$classes" -cp "$jar" "$src" || die "javac $src failed"
    echo "$sum" >"$classes/.source-sum"
}

setup_ruby() {
    lock ruby
    ruby -e 'require "pg"; require "active_record"' 2>/dev/null && return 0
    apt_install ruby ruby-pg ruby-activerecord
    ruby -e 'require "pg"; require "active_record"' || die "pg / active_record do not load after installing them"
}

setup_php() {
    lock php
    local probe='exit(extension_loaded("pdo_pgsql") && extension_loaded("pgsql") && function_exists("pcntl_fork") ? 0 : 1);'
    php -r "$probe" 2>/dev/null && return 0
    apt_install php-cli php-pgsql
    php -r "$probe" || die "php has no pdo_pgsql, pgsql or pcntl after installing php-cli and php-pgsql"
}

setup_perl() {
    lock perl
    perl -MDBD::Pg -MJSON::PP -e1 2>/dev/null && return 0
    apt_install libdbd-pg-perl
    perl -MDBD::Pg -MJSON::PP -e1 || die "DBD::Pg does not load after installing libdbd-pg-perl"
}

# pgx from Debian's source package, in GOPATH mode: no module download, no proxy.
setup_go() {
    lock go
    local gopath=/usr/share/gocode
    if ! command -v go >/dev/null 2>&1 || [ ! -d "$gopath/src/github.com/jackc/pgx/v4" ]; then
        apt_install golang-go golang-github-jackc-pgx-v4-dev
    fi
    [ -d "$gopath/src/github.com/jackc/pgx/v4" ] || die "pgx v4 not in $gopath after installing golang-github-jackc-pgx-v4-dev"
    local dir="$out/go"
    local src=("$here/pgx_checks.go" "$here/pgx_common.go")
    local version
    version=$(dpkg-query -W -f='${Version}' golang-github-jackc-pgx-v4-dev 2>/dev/null || echo '?')
    # Rebuilt when the source or pgx changes (by content, not by date).
    local sum
    sum=$( (cat "${src[@]}"; echo "$version") | sha256sum | cut -d' ' -f1)
    if [ -x "$dir/pgx_checks" ] && [ "$(cat "$dir/.source-sum" 2>/dev/null)" = "$sum" ]; then
        return 0
    fi
    mkdir -p "$dir"
    (cd "$dir" && env GO111MODULE=off GOPATH="$gopath" GOFLAGS= GOPROXY=off GOTOOLCHAIN=local \
        GOCACHE="$dir/cache" go build -ldflags "-X main.pgxVersion=$version" -o pgx_checks "${src[@]}") \
        || die "go build ${src[*]} failed"
    echo "$sum" >"$dir/.source-sum"
}

case "${1:-all}" in
    python) setup_python ;;
    node) setup_node ;;
    java) setup_java ;;
    ruby) setup_ruby ;;
    php) setup_php ;;
    perl) setup_perl ;;
    go) setup_go ;;
    all)
        setup_python
        setup_node
        setup_java
        setup_ruby
        setup_php
        setup_perl
        setup_go
        ;;
    *) die "unknown argument '${1}' (python | node | java | ruby | php | perl | go | all)" ;;
esac
