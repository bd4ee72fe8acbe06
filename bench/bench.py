#!/usr/bin/env python3
"""Runs the measurements for bench/run.sh and writes bench/out/raw.json.

Called by run.sh, which builds the binaries, installs missing tools and exports their
paths (PG_BIN_DIR, PGBENCH, PSQL, PGBOUNCER, STRACE, PGTENANT_BIN, LOAD_BIN).

What happens, in order:
  1. a throwaway PostgreSQL cluster in a temp dir; `pgbench -i -s 10` into `bench`;
     1000 schemas tenant_0001.. with a table kv(id, v) of 100 rows in `many`;
  2. pgtenant (release build) and PgBouncer started with the same pool size, the same
     transaction pooling and the same server-connection budget;
  3. pgbench tests, each run on direct / pgtenant / pgbouncer back to back, repeated for
     BENCH_ROUNDS rounds (the order of the targets rotates each round);
  4. many tenants (load tool), idle clients' memory, CPU per 100k transactions,
     syscalls per round trip.
Every result is appended to raw.json as soon as it is measured, so an interrupted run
still leaves something to report. Standard library only.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")


def env_int(name, default):
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def env_list(name, default):
    value = os.environ.get(name, "").strip() or default
    return [int(v) for v in value.split(",") if v.strip()]


SECONDS = env_int("BENCH_SECONDS", 10)
ROUNDS = env_int("BENCH_ROUNDS", 3)
POOL = env_int("BENCH_POOL_SIZE", 20)
HOST_BUDGET = env_int("BENCH_HOST_BUDGET", 100)
# Servers the shared set of the many-tenants database holds (pool.shared_pool_size):
# as many as the single tenant's pool, so both sides run on the same server count.
SHARED_POOL = env_int("BENCH_SHARED_POOL_SIZE", POOL)
# Seconds of unmeasured load per target and scenario before the many-tenants rounds.
TENANT_WARMUP = env_int("BENCH_TENANT_WARMUP", SECONDS)
TENANTS = env_int("BENCH_TENANTS", 1000)
# The wide run: this many tenants × 1 client (0 skips it).
WIDE = env_int("BENCH_WIDE_TENANTS", 10000)
SCHEMAS = max(TENANTS, WIDE)
CLIENTS = env_list("BENCH_CLIENTS", "1,16,64,256")
IDLE_COUNTS = env_list("BENCH_IDLE_COUNTS", "2000,10000")
CPU_TXNS = env_int("BENCH_CPU_TXNS", 100000)
SYSCALL_TXNS = env_int("BENCH_SYSCALL_TXNS", 2000)
TENANT_POOL = 2  # server connections per tenant in the many-tenants test
MAX_CLIENT_CONN = max(12000, max(IDLE_COUNTS, default=0) + 2000)
SCALE = 10

PG_BIN = os.environ["PG_BIN_DIR"]
PGBENCH = os.environ["PGBENCH"]
PSQL = os.environ["PSQL"]
PGBOUNCER = os.environ["PGBOUNCER"]
STRACE = os.environ["STRACE"]
PGTENANT_BIN = os.environ["PGTENANT_BIN"]
LOAD_BIN = os.environ["LOAD_BIN"]

IS_ROOT = os.geteuid() == 0
TARGETS = [t.strip() for t in (os.environ.get("BENCH_TARGETS") or "direct,pgtenant,pgbouncer").split(",")
           if t.strip()]
# pgtenant's proxy.workers (unset: pgtenant's default).
WORKERS = env_int("BENCH_WORKERS", 0)
PROXIES = ["pgtenant", "pgbouncer"]
# The many-tenants runs also put pgtenant with sharing off beside them, and with
# sharing strictly first come, first served (pool.share_streak = 0).
TENANT_TARGETS = ["pgtenant", "pgtenant-fifo", "pgtenant-noshare", "pgbouncer"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc=None, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def as_postgres(cmd):
    """PostgreSQL and PgBouncer refuse to run as root: run them as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--"] + cmd if IS_ROOT else cmd


def owned_dir(path):
    os.makedirs(path, exist_ok=True)
    if IS_ROOT:
        shutil.chown(path, "postgres", "postgres")
    return path


def run(cmd, **kw):
    kw.setdefault("check", True)
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    try:
        return subprocess.run(cmd, **kw)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{e.stdout}\n{e.stderr}") from None


def tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def threads(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return None


def cpu_seconds(pid):
    """utime + stime of the whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def server_cpu_seconds(postmaster):
    """CPU of a PostgreSQL cluster: the postmaster, its live children (the backends and
    background processes) and the children it already reaped (cutime + cstime)."""
    with open(f"/proc/{postmaster}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    total = sum(int(v) for v in fields[11:15]) / CLK_TCK
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


class Results:
    """raw.json, rewritten after every measurement."""

    def __init__(self, path, meta):
        self.path = path
        self.data = {"meta": meta, "pgbench": [], "tenants": [], "idle": [], "cpu": [],
                     "syscalls": [], "incidents": [], "skipped": []}
        self.save()

    def add(self, section, item):
        # Other work on the machine shows in the load average: sample it with every result.
        self.data["meta"].setdefault("loadavg_1min_samples", []).append(float(loadavg().split()[0]))
        self.data[section].append(item)
        self.save()

    def save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)


class Cluster:
    def __init__(self, base):
        self.dir = owned_dir(os.path.join(base, "pg"))
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")
        self.port = free_port()

    def start(self):
        run(as_postgres([f"{PG_BIN}/initdb", "-D", self.data, "-U", "postgres", "--auth=trust",
                         "-E", "UTF8", "--locale=C"]))
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"""
# pgtenant bench
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.dir}'
max_connections = 600
shared_buffers = 128MB
fsync = off
""")
        run(as_postgres([f"{PG_BIN}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60",
                         "start"]))

    def stop(self):
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            run(as_postgres([f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"]),
                check=False)

    def pid(self):
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            return int(f.readline())

    def psql(self, db, sql):
        return run([PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                    "-p", str(self.port), "-U", "postgres", "-d", db, "-f", "-"],
                   input=sql).stdout

    def seed(self):
        self.psql("postgres", "CREATE DATABASE bench;\nCREATE DATABASE many;\n")
        log(f"pgbench -i -s {SCALE} bench")
        run([PGBENCH, "-i", "-s", str(SCALE), "-q", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", "postgres", "bench"])
        log(f"creating {SCHEMAS} schemas with kv(id, v) in database many")
        for start in range(1, SCHEMAS + 1, 100):
            end = min(start + 99, SCHEMAS)
            self.psql("many", f"""
DO $$
DECLARE s text;
BEGIN
  FOR i IN {start}..{end} LOOP
    s := 'tenant_' || CASE WHEN i < 10000 THEN lpad(i::text, 4, '0') ELSE i::text END;
    EXECUTE format('CREATE SCHEMA %I', s);
    EXECUTE format('CREATE TABLE %I.kv (id int PRIMARY KEY, v int)', s);
    EXECUTE format('INSERT INTO %I.kv SELECT g, g * %s FROM generate_series(1, 100) g', s, i);
  END LOOP;
END $$;
""")
        self.psql("many", "VACUUM ANALYZE;\n")
        self.psql("bench", "VACUUM ANALYZE;\n")


def tenant_name(i):
    return f"t{i:04d}"


def schema_name(i):
    return f"tenant_{i:04d}"


class Proxy:
    """A proxy process we started; restartable, with its log kept in the temp dir."""

    def __init__(self, name, cmd, log_path, user_postgres):
        self.name, self.cmd, self.log_path = name, cmd, log_path
        self.user_postgres = user_postgres
        self.port = None
        self.proc = None

    def start(self):
        logf = open(self.log_path, "a")
        kw = {}
        if self.user_postgres and IS_ROOT:
            # Popen(user=...) execs the proxy itself, so proc.pid is the proxy's pid.
            kw = {"user": "postgres", "group": "postgres", "extra_groups": []}
        self.proc = subprocess.Popen(self.cmd, stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, **kw)
        logf.close()
        if not wait_port(self.port, self.proc):
            raise RuntimeError(f"{self.name} did not start:\n{tail(self.log_path)}")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self):
        self.stop()
        time.sleep(0.5)
        self.start()

    @property
    def pid(self):
        return self.proc.pid


def pgtenant_proxy(base, pg_port, share=True, streak=None):
    name = "pgtenant" if share else "pgtenant-noshare"
    if streak is not None:
        name = "pgtenant-fifo" if streak == 0 else f"pgtenant-streak{streak}"
    d = owned_dir(os.path.join(base, name))
    port = free_port()
    lines = [
        "# Registry written by bench/bench.py.",
        "[hosts.pg]",
        f'address = "127.0.0.1:{pg_port}"',
        f"max_connections = {HOST_BUDGET}",
        "",
        "[tenants.bench]",
        'host = "pg"',
        'database = "bench"',
        'search_path = ["public"]',
        "",
        "# One tenant of the many-tenants schema layout, with the full pool size:",
        "# the single-tenant side of the many-tenants comparison.",
        "[tenants.single]",
        'host = "pg"',
        'database = "many"',
        f'search_path = ["{schema_name(1)}"]',
        "",
    ]
    for i in range(1, SCHEMAS + 1):
        lines += [f"[tenants.{tenant_name(i)}]", 'host = "pg"', 'database = "many"',
                  f'search_path = ["{schema_name(i)}"]', f"pool_size = {TENANT_POOL}", ""]
    tenants = os.path.join(d, "tenants.toml")
    with open(tenants, "w") as f:
        f.write("\n".join(lines))
    config = os.path.join(d, "pgtenant.toml")
    with open(config, "w") as f:
        f.write(f"""# Proxy settings written by bench/bench.py.
[proxy]
listen = "127.0.0.1:{port}"
pool_mode = "transaction"
tenant_from = ["database", "user_suffix"]
auth = "trust"
max_client_conn = {MAX_CLIENT_CONN}
{f"workers = {WORKERS}" if WORKERS else ""}
[pool]
pool_size = {POOL}
share_schema_tenants = {"true" if share else "false"}
shared_pool_size = {SHARED_POOL}
{"" if streak is None else f"share_streak = {streak}"}

[registry]
file = "{tenants}"
""")
    proxy = Proxy(name, [PGTENANT_BIN, "serve", "--config", config],
                  os.path.join(d, f"{name}.log"), user_postgres=False)
    proxy.port = port
    proxy.config_files = [] if not share else [config, tenants]
    return proxy


def pgbouncer_proxy(base, pg_port):
    d = owned_dir(os.path.join(base, "pgbouncer"))
    port = free_port()
    userlist = os.path.join(d, "userlist.txt")
    with open(userlist, "w") as f:
        f.write('"postgres" ""\n')
    server = f"host=127.0.0.1 port={pg_port}"
    dbs = [
        f"bench = {server} dbname=bench",
        # PgBouncer 1.18 has no `options` for [databases]; connect_query sets the
        # search_path once per server connection, which is what pgtenant's startup
        # option does too.
        f"single = {server} dbname=many connect_query='SET search_path TO {schema_name(1)}'",
    ]
    for i in range(1, SCHEMAS + 1):
        dbs.append(f"{tenant_name(i)} = {server} dbname=many pool_size={TENANT_POOL} "
                   f"connect_query='SET search_path TO {schema_name(i)}'")
    ini = os.path.join(d, "pgbouncer.ini")
    with open(ini, "w") as f:
        f.write(f"""; written by bench/bench.py
[databases]
{chr(10).join(dbs)}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {userlist}
pool_mode = transaction
default_pool_size = {POOL}
; the same server-connection budget as pgtenant's host max_connections
max_user_connections = {HOST_BUDGET}
max_client_conn = {MAX_CLIENT_CONN}
listen_backlog = 4096
log_connections = 0
log_disconnections = 0
ignore_startup_parameters = extra_float_digits
""")
    for path in (userlist, ini):
        if IS_ROOT:
            shutil.chown(path, "postgres", "postgres")
    proxy = Proxy("pgbouncer", [PGBOUNCER, ini], os.path.join(d, "pgbouncer.log"),
                  user_postgres=True)
    proxy.port = port
    proxy.config_files = [ini]
    return proxy


# ---------------------------------------------------------------- pgbench

def first_error_line(stdout, stderr, code):
    lines = [l.strip() for l in (stderr + "\n" + stdout).splitlines() if l.strip()]
    for line in lines:
        if re.search(r"error|fatal|abort|could not|failed", line, re.I):
            return line
    return lines[0] if lines else f"exit code {code}"


def pgbench(port, args, timeout):
    cmd = [PGBENCH, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-n"] + \
          [str(a) for a in args] + ["bench"]
    started = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout} s", "cmd": " ".join(cmd)}
    out, err = p.stdout, p.stderr
    tps = re.search(r"^tps = ([\d.]+)", out, re.M)
    lat = re.search(r"^latency average = ([\d.]+) ms", out, re.M)
    done = re.search(r"^number of transactions actually processed: (\d+)", out, re.M)
    failed = re.search(r"^number of failed transactions: (\d+)", out, re.M)
    aborted = "aborted" in (out + err).lower()
    result = {
        "cmd": " ".join(cmd),
        "wall_seconds": round(time.time() - started, 3),
        "exit_code": p.returncode,
        "tps": float(tps.group(1)) if tps else None,
        "latency_ms": float(lat.group(1)) if lat else None,
        "transactions": int(done.group(1)) if done else None,
        "failed_transactions": int(failed.group(1)) if failed else 0,
    }
    ok = p.returncode == 0 and not aborted and tps is not None and result["failed_transactions"] == 0
    result["ok"] = ok
    result["error"] = None if ok else first_error_line(out, err, p.returncode)
    return result


def pgbench_tests():
    tests = []
    for mode in ("simple", "extended", "prepared"):
        for c in CLIENTS:
            tests.append({"id": f"select-{mode}-c{c}", "group": f"select-only, -M {mode}",
                          "clients": c,
                          "args": ["-S", "-M", mode, "-c", c, "-j", min(2, c), "-T", SECONDS]})
    for c in (16, 64):
        tests.append({"id": f"tpcb-c{c}", "group": "TPC-B-like (default script), -M simple",
                      "clients": c, "args": ["-M", "simple", "-c", c, "-j", 2, "-T", SECONDS],
                      "before": "tpcb"})
    tests.append({"id": "connect-c16", "group": "new connection per transaction (-C -S), -M simple",
                  "clients": 16, "args": ["-C", "-S", "-M", "simple", "-c", 16, "-j", 2,
                                          "-T", SECONDS]})
    return tests


def rotate(items, n):
    n %= len(items)
    return items[n:] + items[:n]


# ---------------------------------------------------------------- the run

class Bench:
    def __init__(self, base, results):
        self.base = base
        self.results = results
        self.cluster = Cluster(base)
        self.proxies = {}

    def port(self, target):
        return self.cluster.port if target == "direct" else self.proxies[target].port

    def check_alive(self, during):
        """A proxy that exited is an incident: record it with its log, restart it."""
        for name, proxy in self.proxies.items():
            if not proxy.alive():
                code = proxy.proc.returncode
                text = tail(proxy.log_path, 30)
                log(f"!! {name} exited (code {code}) during {during}; restarting it")
                self.results.add("incidents", {"target": name, "during": during,
                                               "exit_code": code, "log_tail": text})
                proxy.start()

    def setup(self):
        log(f"PostgreSQL cluster in {self.cluster.dir}, port {self.cluster.port}")
        self.cluster.start()
        self.cluster.seed()
        self.proxies["pgtenant"] = pgtenant_proxy(self.base, self.cluster.port)
        only = [s.strip() for s in os.environ.get("BENCH_ONLY", "").split(",") if s.strip()]
        if not only or "many" in only:
            self.proxies["pgtenant-noshare"] = pgtenant_proxy(self.base, self.cluster.port, share=False)
            self.proxies["pgtenant-fifo"] = pgtenant_proxy(self.base, self.cluster.port, streak=0)
        self.proxies["pgbouncer"] = pgbouncer_proxy(self.base, self.cluster.port)
        for proxy in self.proxies.values():
            proxy.start()
            log(f"{proxy.name} on port {proxy.port}, pid {proxy.pid}")
        # Copies of the generated configs, for the record.
        for proxy in self.proxies.values():
            for path in proxy.config_files:
                shutil.copy(path, os.path.join(OUT, os.path.basename(path)))

    def teardown(self):
        for proxy in self.proxies.values():
            try:
                proxy.stop()
            except Exception as e:  # keep tearing down
                log(f"stopping {proxy.name}: {e}")
        try:
            self.cluster.stop()
        except Exception as e:
            log(f"stopping PostgreSQL: {e}")
        for src in [self.cluster.log] + [p.log_path for p in self.proxies.values()]:
            if os.path.exists(src):
                shutil.copy(src, os.path.join(OUT, os.path.basename(src)))

    # -- pgbench tests, interleaved: every test runs on each target back to back.
    def run_pgbench(self):
        tests = pgbench_tests()
        wanted = [t.strip() for t in os.environ.get("BENCH_TESTS", "").split(",") if t.strip()]
        if wanted:
            tests = [t for t in tests if t["id"] in wanted]
        for rnd in range(ROUNDS):
            for test in tests:
                for target in rotate(TARGETS, rnd):
                    if test.get("before") == "tpcb":
                        # What pgbench does itself without -n, done directly for every target.
                        self.cluster.psql("bench", "VACUUM pgbench_branches;\nVACUUM pgbench_tellers;\n"
                                                   "TRUNCATE pgbench_history;\n")
                    proxy = self.proxies.get(target)
                    cpu_before = cpu_seconds(proxy.pid) if proxy else None
                    r = pgbench(self.port(target), test["args"], timeout=SECONDS + 120)
                    r.update({"test": test["id"], "group": test["group"],
                              "clients": test["clients"], "target": target, "round": rnd})
                    if proxy and proxy.alive():
                        # The proxy process's CPU (all threads, user + system) over the run,
                        # connecting the clients included, per transaction.
                        r["cpu_seconds"] = round(cpu_seconds(proxy.pid) - cpu_before, 3)
                        if r.get("transactions"):
                            r["cpu_us_per_txn"] = round(r["cpu_seconds"] / r["transactions"] * 1e6, 2)
                    self.results.add("pgbench", r)
                    shown = f"{r['tps']:.0f} tps, {r['latency_ms']} ms" if r["ok"] else \
                        f"FAILS: {r['error']}"
                    if r["ok"] and r.get("cpu_us_per_txn") is not None:
                        shown += f", proxy CPU {r['cpu_us_per_txn']:.1f} µs/txn"
                    log(f"round {rnd + 1}/{ROUNDS} {test['id']:<22} {target:<9} {shown}")
                    self.check_alive(f"pgbench {test['id']} on {target}")
                    time.sleep(0.5)

    # -- many tenants through the proxies (direct cannot hold 2 x 1000 connections).
    def load_tenants(self, target, scenario, seconds=SECONDS):
        if scenario == "many":
            who = ["--prefix", "t", "--count", str(TENANTS), "--clients-per-tenant", "2"]
        elif scenario == "wide":
            who = ["--prefix", "t", "--count", str(WIDE), "--clients-per-tenant", "1"]
        else:
            who = ["--tenants", "single", "--clients-per-tenant", str(2 * TENANTS)]
        cmd = [LOAD_BIN, "tenants", "--host", "127.0.0.1", "--port", str(self.port(target)),
               "--seconds", str(seconds)] + who
        opened, xacts = self.server_stats()
        proxy_pid, postmaster = self.proxies[target].pid, self.cluster.pid()
        cpu = (cpu_seconds(proxy_pid), server_cpu_seconds(postmaster))
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 300)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": "load tool timed out"}
        cpu = (cpu_seconds(proxy_pid) - cpu[0], server_cpu_seconds(postmaster) - cpu[1])
        time.sleep(1.5)  # idle backends flush their statistics within a second
        opened_after, xacts_after = self.server_stats()
        opens = opened_after - opened
        line = next((l for l in reversed(p.stdout.splitlines()) if l.startswith("{")), None)
        if p.returncode != 0 or line is None:
            return {"ok": False, "error": first_error_line(p.stdout, p.stderr, p.returncode)}
        r = json.loads(line)
        r["ok"] = r["errors"] == 0
        r["error"] = r.get("first_error")
        r["server_opens"] = opens
        # Each simple query is a transaction on the server, and so is each SET of a
        # search_path on a shared server: transactions per query - 1 = SETs per query.
        if r.get("queries"):
            r["server_xacts_per_query"] = (xacts_after - xacts) / r["queries"]
            # CPU time is what a loaded machine does not distort much: the proxy's and
            # PostgreSQL's (every backend, opened or closed during the run) per query.
            r["proxy_cpu_us_per_query"] = cpu[0] * 1e6 / r["queries"]
            r["server_cpu_us_per_query"] = cpu[1] * 1e6 / r["queries"]
        return r

    def server_stats(self):
        """Server sessions ever opened on database `many`, and transactions ended there
        (pg_stat_database.sessions, xact_commit + xact_rollback)."""
        out = self.cluster.psql("postgres", "SELECT sessions || ' ' || (xact_commit + xact_rollback) "
                                "FROM pg_stat_database WHERE datname = 'many';\n")
        for line in out.splitlines():
            words = line.split()
            if len(words) == 2 and all(w.isdigit() for w in words):
                return int(words[0]), int(words[1])
        return 0, 0

    def run_tenants(self):
        scenarios = ("many", "single", "wide") if WIDE else ("many", "single")
        # Steady state is what is measured: each target first runs each scenario once
        # unmeasured, so that every server backend has read the tenants' tables into
        # its caches (1,000 schemas × 20 backends otherwise fill the first round).
        if TENANT_WARMUP:
            for scenario in scenarios:
                for target in TENANT_TARGETS:
                    r = self.load_tenants(target, scenario, seconds=TENANT_WARMUP)
                    log(f"warm-up tenants {scenario:<6} {target:<9} {r.get('tps', 0):.0f} q/s")
                    self.check_alive(f"warm-up {scenario} on {target}")
        for rnd in range(ROUNDS):
            for scenario in scenarios:
                for target in rotate(TENANT_TARGETS, rnd):
                    r = self.load_tenants(target, scenario)
                    r.update({"scenario": scenario, "target": target, "round": rnd})
                    self.results.add("tenants", r)
                    if "tps" in r:
                        log(f"round {rnd + 1}/{ROUNDS} tenants {scenario:<6} {target:<9} "
                            f"{r['tps']:.0f} q/s p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms "
                            f"errors {r['errors']} server opens {r['server_opens']}"
                            + (f" ({r['error']})" if r["error"] else ""))
                    else:
                        log(f"round {rnd + 1}/{ROUNDS} tenants {scenario:<6} {target:<9} FAILS: {r['error']}")
                    self.check_alive(f"tenants {scenario} on {target}")
                    time.sleep(1)

    # -- memory of idle clients: a fresh proxy each time, so earlier tests do not count.
    def run_idle(self):
        for target in PROXIES:
            for count in IDLE_COUNTS:
                proxy = self.proxies[target]
                proxy.restart()
                warm = pgbench(proxy.port, ["-S", "-c", 4, "-j", 2, "-t", 200], timeout=60)
                time.sleep(1)
                before = rss_bytes(proxy.pid)
                cmd = [LOAD_BIN, "idle", "--host", "127.0.0.1", "--port", str(proxy.port),
                       "--db", "bench", "--count", str(count), "--hold-seconds", "600"]
                tool = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
                stats, ready = None, False
                for line in tool.stdout:
                    if line.startswith("{"):
                        stats = json.loads(line)
                    elif line.strip() == "ready":
                        ready = True
                        break
                r = {"target": target, "count": count, "warmup_ok": warm["ok"],
                     "rss_before": before}
                if ready:
                    time.sleep(3)  # see bench/README.md: clients idle 1 s park
                    r["rss_with_clients"] = rss_bytes(proxy.pid)
                    r.update({k: stats[k] for k in ("connected", "errors", "connect_seconds",
                                                    "first_error")})
                    r["ok"] = stats["connected"] == count
                else:
                    r["ok"] = False
                    r["first_error"] = first_error_line("", tool.stderr.read(), tool.poll())
                tool.terminate()
                try:
                    tool.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    tool.kill()
                    tool.wait()
                time.sleep(2)
                if proxy.alive():
                    r["rss_after_close"] = rss_bytes(proxy.pid)
                self.results.add("idle", r)
                if "rss_with_clients" in r:
                    per = (r["rss_with_clients"] - before) / max(1, r["connected"])
                    log(f"idle {target:<9} {count:>6} clients: RSS {before / 2**20:.1f} -> "
                        f"{r['rss_with_clients'] / 2**20:.1f} MiB, {per / 1024:.1f} KiB per client"
                        + (f" ({r['errors']} errors: {r['first_error']})" if r["errors"] else ""))
                else:
                    log(f"idle {target:<9} {count:>6} clients: FAILS: {r.get('first_error')}")
                self.check_alive(f"idle clients on {target}")
        for proxy in self.proxies.values():
            proxy.restart()  # later tests start from a fresh process too

    # -- CPU seconds of each proxy process over a fixed number of transactions.
    def run_cpu(self):
        per_client = max(1, CPU_TXNS // 16)
        for rnd in range(ROUNDS):
            for target in rotate(PROXIES, rnd):
                proxy = self.proxies[target]
                before = cpu_seconds(proxy.pid)
                r = pgbench(proxy.port, ["-S", "-M", "simple", "-c", 16, "-j", 2, "-t", per_client],
                            timeout=600)
                after = cpu_seconds(proxy.pid) if proxy.alive() else None
                r.update({"target": target, "round": rnd,
                          "threads": threads(proxy.pid) if proxy.alive() else None,
                          "cpu_seconds": None if after is None else round(after - before, 3)})
                self.results.add("cpu", r)
                if r["ok"] and after is not None:
                    log(f"cpu round {rnd + 1}/{ROUNDS} {target:<9} {after - before:.2f} s for "
                        f"{r['transactions']} transactions ({r['tps']:.0f} tps)")
                else:
                    log(f"cpu round {rnd + 1}/{ROUNDS} {target:<9} FAILS: {r['error']}")
                self.check_alive(f"cpu on {target}")

    # -- syscalls per simple-query round trip, counted by strace on the proxy process
    # (all threads); for direct, on the postmaster and the backend it forks.
    def run_syscalls(self):
        for target in TARGETS:
            r = self.trace_once(target)
            if r["ok"] and r["syscalls"] < SYSCALL_TXNS:
                # Fewer syscalls than round trips: strace missed threads. Say so, try again.
                log(f"syscalls {target:<9} only {r['syscalls']} calls counted ({r['strace_note']}); retrying")
                self.results.add("incidents", {"target": "strace", "during": f"syscalls on {target}",
                                               "exit_code": None,
                                               "log_tail": f"first attempt counted {r['syscalls']} "
                                                           f"calls; strace said: {r['strace_note']}"})
                r = self.trace_once(target)
            self.results.add("syscalls", r)
            if r["ok"]:
                log(f"syscalls {target:<9} {r['syscalls']} for {SYSCALL_TXNS} queries = "
                    f"{r['syscalls'] / SYSCALL_TXNS:.1f} per round trip")
            else:
                log(f"syscalls {target:<9} FAILS: {r['error']}")
            self.check_alive(f"syscalls on {target}")

    def trace_once(self, target):
        """strace -c on the process (all threads) while pgbench runs."""
        pid = self.cluster.pid() if target == "direct" else self.proxies[target].pid
        out = os.path.join(self.base, f"strace-{target}.txt")
        note_path = os.path.join(self.base, f"strace-{target}.log")
        tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
        # -f with -p attaches every thread of the process, and follows what it starts.
        cmd = [STRACE, "-c", "-f", "-o", out, "-p", str(pid)]
        with open(note_path, "w") as errf:
            tracer = subprocess.Popen(cmd, stdout=errf, stderr=errf)
            time.sleep(2)  # let strace attach
            r = pgbench(self.port(target), ["-S", "-M", "simple", "-c", 1, "-t", SYSCALL_TXNS],
                        timeout=600)
            tracer.send_signal(signal.SIGINT)
            try:
                tracer.wait(timeout=60)
            except subprocess.TimeoutExpired:
                tracer.kill()
                tracer.wait()
        calls, top = parse_strace(out)
        r.update({"target": target, "queries": SYSCALL_TXNS, "syscalls": calls, "top": top,
                  "threads": len(tids),
                  "strace_note": " ".join(tail(note_path, 5).split()),
                  "traced": "postmaster and its new children" if target == "direct"
                  else "proxy process, all threads"})
        if calls is None:
            r["ok"] = False
            r["error"] = r.get("error") or "no strace summary: " + tail(out, 5)
        return r


def parse_strace(path):
    """Total calls and the 6 most frequent syscalls as [name, calls, errors] from an
    `strace -c` summary (columns: % time, seconds, usecs/call, calls, errors, syscall)."""
    row = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?(\S+)\s*$")
    total, rows = None, []
    try:
        with open(path) as f:
            for line in f:
                m = row.match(line)
                if not m:
                    continue
                calls, errors, name = int(m.group(1)), int(m.group(2) or 0), m.group(3)
                if name == "total":
                    total = calls
                else:
                    rows.append([name, calls, errors])
    except OSError:
        return None, []
    rows.sort(key=lambda r: -r[1])
    return total, rows[:6]


def version(cmd):
    try:
        return run(cmd, check=False).stdout.strip().splitlines()[0]
    except Exception:
        return "unknown"


def git_rev():
    rev = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
    dirty = run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml",
                 "Cargo.lock"], check=False).stdout.strip()
    return (rev or "unknown") + (" + uncommitted changes in src/ or Cargo.*" if dirty else "")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main():
    os.makedirs(OUT, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": os.uname().release,
        "memory_mib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20,
        "loadavg_start": loadavg(),
        "open_files_limit": run(["sh", "-c", "ulimit -n"]).stdout.strip(),
        "pgtenant_rev": git_rev(),
        "postgres_version": version([f"{PG_BIN}/postgres", "--version"]),
        "pgbouncer_version": version([PGBOUNCER, "--version"]),
        "pgbench_version": version([PGBENCH, "--version"]),
        "settings": {"seconds": SECONDS, "rounds": ROUNDS, "pool_size": POOL,
                     "host_budget": HOST_BUDGET, "shared_pool_size": SHARED_POOL, "tenant_warmup_seconds": TENANT_WARMUP, "tenants": TENANTS, "wide_tenants": WIDE,
                     "tenant_pool_size": TENANT_POOL, "clients": CLIENTS,
                     "idle_counts": IDLE_COUNTS, "cpu_transactions": (CPU_TXNS // 16) * 16,
                     "syscall_transactions": SYSCALL_TXNS, "pgbench_scale": SCALE,
                     "proxy_workers": WORKERS or "default", "targets": TARGETS,
                     "max_connections": 600, "shared_buffers": "128MB", "fsync": "off",
                     "quick": os.environ.get("QUICK", "0") == "1"},
    }
    results = Results(os.path.join(OUT, "raw.json"), meta)
    keep = os.environ.get("BENCH_KEEP") == "1"
    base = tempfile.mkdtemp(prefix="pgtenant-bench-")
    os.chmod(base, 0o755)  # the postgres user must reach its dirs inside
    bench = Bench(base, results)
    try:
        bench.setup()
        steps = [("pgbench", bench.run_pgbench), ("many tenants", bench.run_tenants),
                 ("idle clients", bench.run_idle), ("cpu", bench.run_cpu),
                 ("syscalls", bench.run_syscalls)]
        only = [s.strip() for s in os.environ.get("BENCH_ONLY", "").split(",") if s.strip()]
        for name, step in steps:
            if only and name.split()[0] not in only:
                results.add("skipped", {"step": name, "reason": "BENCH_ONLY"})
                continue
            log(f"== {name}")
            step()
    finally:
        results.data["meta"]["loadavg_end"] = loadavg()
        results.data["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        results.save()
        bench.teardown()
        if keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
