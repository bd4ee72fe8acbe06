#!/bin/bash
# usage: uring_sys.sh MODE TXNS_PER_CLIENT PGBENCH-ARGS...
MODE=$1; T=$2; shift 2
# Build first: cargo build --release --manifest-path bench/uring-spike/Cargo.toml
BIN=${BIN:-$(dirname "$0")/target/release/uring_relay}
mkdir -p /tmp/prof
$BIN $MODE 47320 127.0.0.1:47311 > /tmp/prof/spike-$MODE.log 2>&1 &
PID=$!
sleep 0.5
strace -c -f -o /tmp/prof/spike-$MODE.strace -p $PID 2>/dev/null &
ST=$!
sleep 1
out=$(pgbench -h 127.0.0.1 -p 47320 -U postgres -n -t $T "$@" bench 2>&1)
kill -INT $ST; wait $ST
kill $PID; wait $PID 2>/dev/null
N=$(echo "$out" | awk -F': ' '/actually processed/ {print $2}' | cut -d/ -f1)
echo "$MODE $* : transactions $N"
awk -v n=$N '/^ *[0-9]/ && NF>=5 {name=$NF; calls=$4; printf "  %-16s %8d %6.2f/txn\n", name, calls, calls/n}' /tmp/prof/spike-$MODE.strace | sort -k2 -nr | head -6
