#!/usr/bin/env python3
"""What serving many tenants' tables costs PostgreSQL itself, with no proxy between.

A shared server of pgtenant serves each query of another tenant: another schema's
table and index, and, at each tenant switch, a `SET search_path`. This measures the
server's side of that straight against PostgreSQL, one connection per process,
simple queries as the load tool sends them:

  one        SELECT v FROM tenant_0001.kv WHERE id = n         (one tenant's table)
  many       SELECT v FROM tenant_NNNN.kv WHERE id = n         (a different tenant's each time)
  many+set   SET search_path TO "tenant_NNNN"; then SELECT v FROM kv WHERE id = n
             (two queries in one write, as a shared server gets at a tenant switch)

Reported: queries per second, and the server backends' CPU time per query (utime +
stime from /proc, so the server must run on this machine); the CPU figure holds up
on a busy machine where the rate does not. Each process warms its backend on every
tenant's table first, so the figures are steady state.

usage: bench/tables.py HOST PORT DATABASE [SECONDS] [PROCESSES] [TENANTS]
The database needs schemas tenant_0001.. with a table kv(id, v) (bench/bench.py's
`many` database).
"""
import random
import sys
import time

from plans import Conn, backend_cpu, backend_pid, query, rounds

MODES = ("one", "many", "many+set")


def statements(mode, t, n):
    if mode == "one":
        return query(f"SELECT v FROM tenant_0001.kv WHERE id = {n}"), 1
    if mode == "many":
        return query(f"SELECT v FROM tenant_{t:04d}.kv WHERE id = {n}"), 1
    return query(f'SET search_path TO "tenant_{t:04d}"') + query(
        f"SELECT v FROM kv WHERE id = {n}"), 2


def worker(mode, host, port, db, seconds, tenants, out):
    c = Conn(host, port, db)
    order = list(range(1, tenants + 1))
    random.shuffle(order)
    for t in order:
        sql, answers = statements(mode, t, 1)
        c.s.sendall(sql)
        c.ready(answers)
    pid = backend_pid(c)
    cpu = backend_cpu(pid)
    done, end = 0, time.time() + seconds
    while time.time() < end:
        sql, answers = statements(mode, order[done % tenants], done % 100 + 1)
        c.s.sendall(sql)
        c.ready(answers)
        done += 1
    out.put((done, backend_cpu(pid) - cpu))


def main():
    host, port, db = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 3
    procs = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    tenants = int(sys.argv[6]) if len(sys.argv) > 6 else 1000
    med = rounds(MODES, worker, host, port, db, seconds, procs, tenants, "query")
    one = med["one"][1]
    for mode in MODES:
        rate, cpu = med[mode]
        print(f"median {mode:<9} {rate:,.0f} queries/s, server CPU {cpu:.1f} µs per query "
              f"({cpu / one:.2f}× one)")


if __name__ == "__main__":
    main()
