#!/usr/bin/env python3
"""Per-tenant server-side statements against one statement shared by all tenants.

On a shared server the search_path changes with each tenant. PostgreSQL re-analyses
and re-plans a prepared statement whose search_path changed since it was planned, so
one statement shared by every tenant pays a re-plan at every tenant switch, while a
statement per tenant (what pgtenant does: each tenant's statements have names of
their own) keeps its plan. This measures both straight against PostgreSQL, with the
same SET search_path before every execution, so only the statement keying differs.
Reported: executions per second, and the server backends' CPU time per execution
(utime + stime from /proc, so the PostgreSQL server must run on this machine); the
CPU figure holds up on a busy machine where the rate does not.

usage: bench/plans.py HOST PORT DATABASE [SECONDS] [PROCESSES] [TENANTS]
The database needs schemas tenant_0001.. with a table kv(id, v) (bench/bench.py's
`many` database).
"""
import multiprocessing as mp
import os
import socket
import struct
import sys
import time

QUERY = "SELECT v FROM kv WHERE id = $1"


def msg(tag, body):
    return tag + struct.pack("!i", len(body) + 4) + body


def cstr(s):
    return s.encode() + b"\0"


def startup(user, db):
    body = struct.pack("!i", 196608) + cstr("user") + cstr(user) + cstr("database") + cstr(db) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def parse(name, sql):
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!h", 0))


def bind_execute(name, value):
    v = str(value).encode()
    # No parameter format codes (text), one parameter, no result format codes.
    bind = msg(b"B", cstr("") + cstr(name) + struct.pack("!hh", 0, 1)
               + struct.pack("!i", len(v)) + v + struct.pack("!h", 0))
    return bind + msg(b"E", cstr("") + struct.pack("!i", 0)) + msg(b"S", b"")


def query(sql):
    return msg(b"Q", cstr(sql))


class Conn:
    def __init__(self, host, port, db):
        self.s = socket.create_connection((host, port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.s.sendall(startup("postgres", db))
        self.ready(1)

    def ready(self, n):
        """Reads until the n-th ReadyForQuery; raises on an ErrorResponse."""
        seen = 0
        while True:
            while len(self.buf) >= 5:
                tag = self.buf[0:1]
                length = struct.unpack("!i", self.buf[1:5])[0]
                if len(self.buf) < 1 + length:
                    break
                body, self.buf = self.buf[5:1 + length], self.buf[1 + length:]
                if tag == b"D":
                    # one text column: int16 count, int32 length, value
                    self.last_row = body[6:].decode()
                if tag == b"E":
                    raise RuntimeError(body.decode(errors="replace"))
                if tag == b"Z":
                    seen += 1
                    if seen == n:
                        return
            chunk = self.s.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed")
            self.buf += chunk


def backend_cpu(pid):
    """CPU seconds a process has used (utime + stime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_pid(c):
    c.s.sendall(query("SELECT pg_backend_pid()"))
    c.ready(1)
    return int(c.last_row)


def worker(mode, host, port, db, seconds, tenants, out):
    c = Conn(host, port, db)
    pid = backend_pid(c)
    cpu = backend_cpu(pid)
    names = [f"s{t}" if mode == "per-tenant" else "s" for t in range(tenants)]
    prepared = set()
    done, i, end = 0, 0, time.time() + seconds
    while time.time() < end:
        t = i % tenants
        i += 1
        out_bytes = query(f'SET search_path TO "tenant_{t + 1:04d}"')
        if names[t] not in prepared:
            out_bytes += parse(names[t], QUERY)
            prepared.add(names[t])
        out_bytes += bind_execute(names[t], i % 100 + 1)
        c.s.sendall(out_bytes)
        c.ready(2)
        done += 1
    out.put((done, backend_cpu(pid) - cpu))


def rounds(modes, worker, host, port, db, seconds, procs, tenants, unit):
    """Three rounds of each mode, `procs` processes of `worker` at once; per mode the
    median rate and server CPU per `unit` (µs)."""
    results = {}
    for rnd in range(3):
        for mode in modes:
            out = mp.Queue()
            ps = [mp.Process(target=worker, args=(mode, host, port, db, seconds, tenants, out))
                  for _ in range(procs)]
            for p in ps:
                p.start()
            got = [out.get() for _ in ps]
            for p in ps:
                p.join()
            total = sum(n for n, _ in got)
            cpu_us = sum(c for _, c in got) / total * 1e6
            results.setdefault(mode, []).append((total / seconds, cpu_us))
            print(f"round {rnd + 1} {mode:<10} {total / seconds:,.0f}/s, "
                  f"server CPU {cpu_us:.1f} µs per {unit}", flush=True)
    return {m: (sorted(r for r, _ in v)[len(v) // 2], sorted(c for _, c in v)[len(v) // 2])
            for m, v in results.items()}


def main():
    host, port, db = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 5
    procs = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    tenants = int(sys.argv[6]) if len(sys.argv) > 6 else 50
    med = rounds(("shared", "per-tenant"), worker, host, port, db, seconds, procs, tenants,
                 "execution")
    (rs, cs), (rt, ct) = med["shared"], med["per-tenant"]
    print(f"median: shared {rs:,.0f}/s {cs:.1f} µs, per-tenant {rt:,.0f}/s {ct:.1f} µs; "
          f"per-tenant / shared: rate {rt / rs:.2f}, server CPU {ct / cs:.2f}")


if __name__ == "__main__":
    main()
