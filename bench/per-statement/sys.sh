#!/bin/bash
# usage: sys.sh BIN NAME PGBENCH-ARGS...   syscalls per transaction (strace -c -f)
BIN=$1; NAME=$2; shift 2
cd /tmp/prof
$BIN serve --config /tmp/prof/pgtenant.toml > /tmp/prof/$NAME.log 2>&1 &
PID=$!
sleep 1
pgbench -h 127.0.0.1 -p 47312 -U postgres -n -T 1 "$@" bench >/dev/null 2>&1
strace -c -f -o /tmp/prof/$NAME.strace -p $PID &
ST=$!
sleep 1
pgbench -h 127.0.0.1 -p 47312 -U postgres -n -t 500 "$@" bench > /tmp/prof/$NAME.pgbench 2>&1
kill -INT $ST; wait $ST
kill $PID; wait $PID 2>/dev/null
N=$(grep "actually processed" /tmp/prof/$NAME.pgbench | awk -F': ' '{print $2}' | cut -d/ -f1)
echo "transactions $N"
awk -v n=$N '/^ *[0-9]/ && NF>=5 {name=$NF; calls=$4; printf "%-16s %8d %6.2f/txn\n", name, calls, calls/n}' /tmp/prof/$NAME.strace | sort -k2 -nr | head -10
