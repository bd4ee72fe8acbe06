#!/bin/bash
# usage: profile.sh BIN NAME PGBENCH-ARGS...
BIN=$1; NAME=$2; shift 2
cd /tmp/prof
$BIN serve --config /tmp/prof/pgtenant.toml > /tmp/prof/$NAME.log 2>&1 &
PID=$!
sleep 1
pgbench -h 127.0.0.1 -p 47312 -U postgres -n -T 2 "$@" bench >/dev/null 2>&1
psql -h 127.0.0.1 -p 47311 -U postgres bench -qc "VACUUM pgbench_branches; VACUUM pgbench_tellers; TRUNCATE pgbench_history" 
perf record -F 1999 -g -o /tmp/prof/$NAME.perf -p $PID -- sleep 8 2>/dev/null &
PERF=$!
pgbench -h 127.0.0.1 -p 47312 -U postgres -n -T 8 "$@" bench > /tmp/prof/$NAME.pgbench 2>&1
wait $PERF
kill $PID; wait $PID 2>/dev/null
grep -E "tps|processed" /tmp/prof/$NAME.pgbench
perf report -i /tmp/prof/$NAME.perf --no-children --sort dso,sym --stdio 2>/dev/null | grep -v "^#" | grep -E "^ +[0-9]" | head -45 > /tmp/prof/$NAME.top
perf report -i /tmp/prof/$NAME.perf --no-children --sort dso --stdio 2>/dev/null | grep -E "^ +[0-9]" | head -8 >> /tmp/prof/$NAME.top
