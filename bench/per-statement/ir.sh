#!/bin/bash
# usage: ir.sh BIN NAME TXNS_PER_CLIENT PGBENCH-ARGS...  -> total user-space instructions (callgrind)
BIN=$1; NAME=$2; T=$3; shift 3
cd /tmp/prof
valgrind --tool=callgrind --callgrind-out-file=/tmp/prof/cg-$NAME.out $BIN serve --config /tmp/prof/pgtenant.toml > /tmp/prof/cg-$NAME.log 2>&1 &
PID=$!
for i in $(seq 1 60); do pg_isready -h 127.0.0.1 -p 47312 -q && break; sleep 0.5; done
psql -h 127.0.0.1 -p 47311 -U postgres bench -qc "VACUUM pgbench_branches" -c "VACUUM pgbench_tellers" -c "TRUNCATE pgbench_history" >/dev/null 2>&1
pgbench -h 127.0.0.1 -p 47312 -U postgres -n -t $T "$@" bench > /tmp/prof/cg-$NAME.pgbench 2>&1
kill -INT $PID; wait $PID
grep -E "actually processed" /tmp/prof/cg-$NAME.pgbench
callgrind_annotate /tmp/prof/cg-$NAME.out 2>/dev/null | grep -m1 "PROGRAM TOTALS"
