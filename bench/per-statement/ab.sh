#!/bin/bash
# usage: ab.sh ROUNDS SECONDS "label:bin[:config] ..." "testname:pgbench args|..."
# Interleaved A/B: each round runs every test on every binary back to back; prints
# one line per run: label test tps cpu_us_per_txn
ROUNDS=$1; SECS=$2; BINS=$3; TESTS=$4
cd /tmp/prof
TCK=$(getconf CLK_TCK)
cpu() { awk -v t=$TCK '{split($0,a,")"); split(a[2],f," "); print (f[12]+f[13])/t}' /proc/$1/stat; }
for r in $(seq 1 $ROUNDS); do
  IFS='|' read -ra TL <<< "$TESTS"
  for t in "${TL[@]}"; do
    name=${t%%:*}; args=${t#*:}
    for b in $BINS; do
      label=${b%%:*}; rest=${b#*:}; bin=${rest%%:*}; conf=/tmp/prof/pgtenant.toml
      [[ $rest == *:* ]] && conf=${rest#*:}
      $bin serve --config $conf > /tmp/prof/ab-$label.log 2>&1 &
      pid=$!
      sleep 0.7
      if [[ $name == tpcb* ]]; then
        psql -h 127.0.0.1 -p 47311 -U postgres bench -qc "VACUUM pgbench_branches" -c "VACUUM pgbench_tellers" -c "TRUNCATE pgbench_history" >/dev/null 2>&1
      fi
      c0=$(cpu $pid)
      out=$(pgbench -h 127.0.0.1 -p 47312 -U postgres -n -T $SECS $args bench 2>&1)
      c1=$(cpu $pid)
      kill $pid; wait $pid 2>/dev/null
      tps=$(echo "$out" | awk '/^tps/ {print $3}')
      n=$(echo "$out" | awk -F': ' '/actually processed/ {print $2}' | cut -d/ -f1)
      us=$(awk -v a=$c0 -v b=$c1 -v n=$n 'BEGIN{ if (n>0) printf "%.1f", (b-a)/n*1e6; else print "nan"}')
      echo "$r $label $name $tps $us $(cut -d' ' -f1 /proc/loadavg)"
    done
  done
done
