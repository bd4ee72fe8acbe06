#!/bin/bash
# usage: uring_ab.sh ROUNDS SECONDS "test:args|..."   CPU per txn of the spike relay, epoll vs uring
ROUNDS=$1; SECS=$2; TESTS=$3
# Build first: cargo build --release --manifest-path bench/uring-spike/Cargo.toml
BIN=${BIN:-$(dirname "$0")/target/release/uring_relay}
mkdir -p /tmp/prof
TCK=$(getconf CLK_TCK)
cpu() { awk -v t=$TCK '{split($0,a,")"); split(a[2],f," "); print (f[12]+f[13])/t}' /proc/$1/stat; }
for r in $(seq 1 $ROUNDS); do
  IFS='|' read -ra TL <<< "$TESTS"
  for t in "${TL[@]}"; do
    name=${t%%:*}; args=${t#*:}
    for mode in epoll uring; do
      $BIN $mode 47320 127.0.0.1:47311 > /tmp/prof/spike-$mode.log 2>&1 &
      pid=$!
      sleep 0.5
      [[ $name == tpcb* ]] && psql -h 127.0.0.1 -p 47311 -U postgres bench -qc "VACUUM pgbench_branches" -c "VACUUM pgbench_tellers" -c "TRUNCATE pgbench_history" >/dev/null 2>&1
      c0=$(cpu $pid)
      out=$(pgbench -h 127.0.0.1 -p 47320 -U postgres -n -T $SECS $args bench 2>&1)
      c1=$(cpu $pid)
      kill $pid; wait $pid 2>/dev/null
      tps=$(echo "$out" | awk '/^tps/ {print $3}')
      n=$(echo "$out" | awk -F': ' '/actually processed/ {print $2}' | cut -d/ -f1)
      us=$(awk -v a=$c0 -v b=$c1 -v n=$n 'BEGIN{ if (n>0) printf "%.1f", (b-a)/n*1e6; else print "nan"}')
      echo "$r $mode $name $tps $us $(cut -d' ' -f1 /proc/loadavg)"
    done
  done
done
