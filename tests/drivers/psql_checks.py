"""psql through pgtenant (stdlib only): the common checks, done the way a person
or a shell script does them with psql.

psql has no prepared-statement API of its own before psql 16 (\\bind) and 18
(\\parse, \\bind_named): prepared statements are SQL PREPARE / EXECUTE, which in
transaction mode pins the client to its server connection. Parameters (bytea)
are literals before psql 16. Cancel is Ctrl-C on an interactive psql (run on a
pseudo-terminal here), which sends a CancelRequest through libpq.
"""

import fcntl
import os
import pty
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pgt_common import (  # noqa: E402
    ACME_ITEMS,
    CANCEL_AFTER,
    CANCEL_LIMIT,
    CONCURRENT_CLIENTS,
    COPY_CHECK_SQL,
    COPY_ROWS,
    GLOBEX_ITEMS,
    PREPARED_RUNS,
    RESULT_ROWS,
    RESULT_SUM,
    TRANSACTIONS_PER_CLIENT,
    CheckFailed,
    Env,
    copy_data,
    expect,
    expect_eq,
    info,
    md5,
    run_all,
)

DRIVER = "psql"
env = Env()
PSQL = os.environ.get("PGT_PSQL") or shutil.which("psql") or "/usr/bin/psql"
COPY_OUT_QUERY = "SELECT g, 'row-' || g || '-é' FROM generate_series(1, %d) g ORDER BY g" % COPY_ROWS


def psql_version():
    out = subprocess.run([PSQL, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+)(?:\.(\d+))?", out)
    return out.strip(), int(m.group(1)) if m else 0


VERSION_TEXT, MAJOR = psql_version()


def base_args(mode, tenant=None, port=None, user=None, db=None):
    return [
        PSQL, "-X", "-q", "-A", "-t",
        "-v", "VERBOSITY=verbose",
        "-h", env.host,
        "-p", str(port or env.port(mode)),
        "-U", user or env.user,
        "-d", db or tenant or env.tenant,
    ]


def run_env():
    e = dict(os.environ)
    for k in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGOPTIONS", "PGSERVICE"):
        e.pop(k, None)
    e["PGCONNECT_TIMEOUT"] = "10"
    e["PGSSLMODE"] = "prefer"
    return e


def psql(mode, script, tenant=None, stop_on_error=True, timeout=60, direct=False):
    """Runs a script through psql's stdin; returns (stdout lines, stderr text)."""
    if direct:
        args = base_args(mode, port=env.direct_port, user="postgres", db="erp")
    else:
        args = base_args(mode, tenant)
    if stop_on_error:
        args += ["-v", "ON_ERROR_STOP=1"]
    proc = subprocess.run(
        args + ["-f", "-"], input=script.encode(), capture_output=True, timeout=timeout, env=run_env()
    )
    out = proc.stdout.decode()
    err = proc.stderr.decode()
    if stop_on_error and proc.returncode != 0:
        raise CheckFailed("psql exited %d: %s" % (proc.returncode, err.strip()[:500]))
    return [line for line in out.splitlines() if line != ""], err


def one_line(mode, sql, **kw):
    lines, _ = psql(mode, sql, **kw)
    expect(len(lines) == 1, "expected one line from %r, got %r" % (sql, lines[:5]))
    return lines[0]


class Noise:
    """Other psql sessions (3 acme, 1 globex) running short queries until stopped."""

    def __init__(self, mode, count=4):
        self.procs = []
        script = "SELECT count(*) FROM items;\n" * 100000
        for i in range(count):
            args = base_args(mode, env.other if i % 4 == 3 else None) + ["-f", "-"]
            p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, env=run_env())
            self.procs.append((p, script))

    def __enter__(self):
        import threading

        def feed(p, script):
            try:
                p.stdin.write(script.encode())
                p.stdin.close()
            except (BrokenPipeError, ValueError):
                pass

        self.feeders = [threading.Thread(target=feed, args=pair, daemon=True) for pair in self.procs]
        for t in self.feeders:
            t.start()
        time.sleep(0.1)
        return self

    def __exit__(self, *exc):
        errors = []
        for p, _ in self.procs:
            if p.poll() is not None and p.returncode != 0:
                errors.append(p.stderr.read().decode().strip()[:200])
            p.terminate()
        for p, _ in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        if errors and exc[0] is None:
            raise CheckFailed("background psql failed: %s" % "; ".join(errors))
        return False


def check_connect(mode):
    line = one_line(mode, "SELECT current_database(), current_setting('search_path');")
    db, path = line.split("|", 1)
    expect_eq(db, "erp", "current_database()")
    expect("tenant_acme" in path, "search_path is %r" % path)


def check_isolation(mode):
    a, _ = psql(mode, "SELECT name FROM items ORDER BY id;")
    g, _ = psql(mode, "SELECT name FROM items ORDER BY id;", tenant=env.other)
    expect_eq(a, ACME_ITEMS, "acme items")
    expect_eq(g, GLOBEX_ITEMS, "globex items")


def check_prepared(mode):
    script = ["PREPARE pgt_stmt(int) AS SELECT $1 + 1, (SELECT count(*) FROM items), pg_backend_pid();"]
    script += ["EXECUTE pgt_stmt(%d);" % i for i in range(PREPARED_RUNS)]
    with Noise(mode):
        lines, _ = psql(mode, "\n".join(script) + "\n")
    expect_eq(len(lines), PREPARED_RUNS, "EXECUTE results")
    pids = set()
    for i, line in enumerate(lines):
        n, count, pid = line.split("|")
        expect_eq((int(n), int(count)), (i + 1, len(ACME_ITEMS)), "execution %d" % i)
        pids.add(pid)
    expect_eq(len(pids), 1, "server connections used after PREPARE")
    note = "SQL PREPARE/EXECUTE (psql %d has no protocol-level prepared statements)" % MAJOR
    if mode == "transaction":
        note += "; PREPARE pins the client to its server connection"
    return note


def check_savepoint(mode):
    t = "tx_%s" % mode
    lines, err = psql(
        mode,
        f"""
DELETE FROM {t} WHERE id < 1000;
BEGIN;
INSERT INTO {t} VALUES (1, 'kept');
SAVEPOINT sp;
INSERT INTO {t} VALUES (2, 'rolled back');
SELECT 1/0;
ROLLBACK TO SAVEPOINT sp;
INSERT INTO {t} VALUES (3, 'after the savepoint');
COMMIT;
SELECT string_agg(id::text, ',' ORDER BY id) FROM {t} WHERE id < 1000;
""",
        stop_on_error=False,
    )
    expect("22012" in err, "no division_by_zero error from SELECT 1/0: %r" % err)
    expect_eq(lines[-1:], ["1,3"], "rows after the transaction")


def check_error_rollback(mode):
    t = "tx_%s" % mode
    lines, err = psql(
        mode,
        f"""
BEGIN;
INSERT INTO {t} VALUES (10, 'never committed');
SELECT * FROM no_such_table;
SELECT 'in the aborted transaction';
ROLLBACK;
SELECT name FROM items ORDER BY id;
SELECT name FROM items ORDER BY id;
SELECT count(*) FROM {t} WHERE id = 10;
""",
        stop_on_error=False,
    )
    expect("42P01" in err, "no undefined_table error: %r" % err)
    expect("25P02" in err, "no in_failed_sql_transaction error: %r" % err)
    expect_eq(lines, ACME_ITEMS + ACME_ITEMS + ["0"], "output after ROLLBACK")


def check_copy_in(mode):
    data = copy_data()
    t = "copy_%s" % mode
    with tempfile.NamedTemporaryFile(suffix=".tsv") as f:
        f.write(data)
        f.flush()
        lines, _ = psql(
            mode,
            "TRUNCATE %s;\n\\copy %s (id, name) FROM %s\n%s;\n"
            % (t, t, quote_literal(f.name), COPY_CHECK_SQL.format(table=t)),
        )
    expect_eq(lines[-1:], ["%d|%s" % (COPY_ROWS, md5(data))], "count and checksum through the proxy")
    got = one_line(mode, COPY_CHECK_SQL.format(table="tenant_acme." + t) + ";", direct=True)
    expect_eq(got, "%d|%s" % (COPY_ROWS, md5(data)), "count and checksum on the server")
    return "\\copy … FROM file"


def check_copy_out(mode):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "out.tsv")
        lines, _ = psql(mode, "\\copy (%s) TO %s\nSELECT name FROM items ORDER BY id;\n" % (COPY_OUT_QUERY, quote_literal(path)))
        with open(path, "rb") as f:
            got = f.read()
    expect_eq(md5(got), md5(copy_data()), "checksum of \\copy … TO")
    expect_eq(lines, ACME_ITEMS, "items after COPY")
    return "\\copy (query) TO file"


def quote_literal(s):
    return "'" + s.replace("'", "''") + "'"


def check_listen_notify(mode):
    channel = "jobs_%s" % mode
    notify = " ".join(shlex.quote(a) for a in base_args(mode)) + " -c %s"
    script = "LISTEN %s;\n" % channel
    script += "\\! " + notify % shlex.quote("NOTIFY %s, 'hello from %s'" % (channel, mode)) + "\n"
    script += "SELECT pg_backend_pid();\n" * 20
    script += "\\! " + notify % shlex.quote("SELECT pg_notify('%s', 'again')" % channel) + "\n"
    script += "SELECT pg_backend_pid();\n"
    with Noise(mode, 3):
        lines, _ = psql(mode, script)
    notes = [line for line in lines if line.startswith("Asynchronous notification")]
    expect_eq(
        [re.sub(r" received from server process with PID \d+\.", "", n) for n in notes],
        [
            'Asynchronous notification "%s" with payload "hello from %s"' % (channel, mode),
            'Asynchronous notification "%s" with payload "again"' % channel,
        ],
        "notifications psql printed",
    )
    pids = {line for line in lines if line.isdigit()}
    expect_eq(len(pids), 1, "server connections the listener used after LISTEN")
    note = "notifications printed after the next command (psql does not wait for them)"
    if mode == "transaction":
        note += "; LISTEN pins the client to its server connection"
    return note


def check_cancel(mode):
    """Ctrl-C on an interactive psql: libpq sends a CancelRequest."""
    master, slave = pty.openpty()
    args = base_args(mode) + ["-n", "-P", "pager=off"]  # no readline, no pager

    def make_controlling_tty():
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=run_env(),
                            preexec_fn=make_controlling_tty, close_fds=True)
    os.close(slave)
    output = bytearray()

    def read_until(pattern, timeout):
        deadline = time.monotonic() + timeout
        while not re.search(pattern, output.decode(errors="replace")):
            left = deadline - time.monotonic()
            if left <= 0:
                raise CheckFailed("psql did not print %r within %.0fs; it printed: %r"
                                  % (pattern, timeout, output.decode(errors="replace")[-500:]))
            ready, _, _ = select.select([master], [], [], left)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise CheckFailed("psql ended: %r" % output.decode(errors="replace")[-500:])
                output.extend(chunk)

    try:
        with Noise(mode, 2):
            os.write(master, b"SELECT 'rea' || 'dy';\n")  # the echo of the line has no 'ready'
            read_until(r"ready", 10)
            os.write(master, b"SELECT pg_sleep(10);\n")
            time.sleep(CANCEL_AFTER)
            # Ctrl-C: the terminal sends SIGINT to psql. On a loaded machine the query
            # may not have reached the server yet, and a cancel that arrives first is
            # ignored by PostgreSQL; so press it again each second, as a person would.
            deadline = time.monotonic() + CANCEL_LIMIT
            while True:
                os.write(master, b"\x03")
                try:
                    read_until(r"57014", min(1.0, max(0.1, deadline - time.monotonic())))
                    break
                except CheckFailed:
                    if time.monotonic() >= deadline:
                        raise
            del output[:]
            os.write(master, b"SELECT name FROM items ORDER BY id;\n")
            read_until(re.escape(ACME_ITEMS[-1]), 10)
            os.write(master, b"\\q\n")
            proc.wait(10)
        return "Ctrl-C on an interactive psql: 57014, then the session answers again"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(5)
        os.close(master)


def check_bytea(mode):
    data = os.urandom(1 << 20)
    hexed = "\\x" + data.hex()
    if MAJOR >= 16:
        script = "SELECT md5(b), length(b), b FROM (SELECT $1::bytea AS b) s \\bind '%s' \\g\n" % hexed
        note = "a real parameter (\\bind)"
    else:
        script = "SELECT md5(b), length(b), b FROM (SELECT '%s'::bytea AS b) s;\n" % hexed
        note = "psql %d has no bind parameters (\\bind came in psql 16): sent as a bytea literal" % MAJOR
    lines, _ = psql(mode, script)
    expect_eq(len(lines), 1, "result lines")
    digest, length, back = lines[0].split("|")
    expect_eq((digest, int(length)), (md5(data), len(data)), "md5 and length on the server")
    expect(back == hexed, "the bytea came back different")
    return note


def check_rows(mode):
    lines, _ = psql(mode, "SELECT g, 'row ' || g FROM generate_series(1, %d) g;\n" % RESULT_ROWS)
    expect_eq(len(lines), RESULT_ROWS, "rows")
    expect_eq(sum(int(line.split("|")[0]) for line in lines), RESULT_SUM, "sum")
    expect_eq(lines[-1], "%d|row %d" % (RESULT_ROWS, RESULT_ROWS), "last row")


def check_concurrency(mode):
    psql(mode, "UPDATE tenant_acme.counters SET n = 0 WHERE mode = '%s';\n"
         "DELETE FROM tenant_acme.events WHERE mode = '%s';\n" % (mode, mode), direct=True)
    procs = []
    for k in range(CONCURRENT_CLIENTS):
        # Connected first, then a pause so that all 50 sessions are open together.
        script = "\\! sleep 1\n"
        for seq in range(TRANSACTIONS_PER_CLIENT):
            script += (
                "BEGIN;\nUPDATE counters SET n = n + 1 WHERE mode = '%s';\n"
                "INSERT INTO events VALUES ('%s', %d, %d);\nCOMMIT;\n" % (mode, mode, k, seq)
            )
        p = subprocess.Popen(base_args(mode) + ["-v", "ON_ERROR_STOP=1", "-f", "-"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env=run_env())
        procs.append((p, script))
    for p, script in procs:  # small scripts: they fit in the pipe
        p.stdin.write(script.encode())
        p.stdin.close()
    failures = []
    for k, (p, script) in enumerate(procs):
        try:
            p.wait(timeout=120)
            err = p.stderr.read()
        except subprocess.TimeoutExpired:
            p.kill()
            err = b"timed out"
        if p.returncode != 0:
            failures.append("client %d: %s" % (k, err.decode().strip()[:200]))
    expect(not failures, "; ".join(failures[:3]))
    total = CONCURRENT_CLIENTS * TRANSACTIONS_PER_CLIENT
    got = one_line(mode, "SELECT n, (SELECT count(*) FROM tenant_acme.events WHERE mode = '%s') "
                   "FROM tenant_acme.counters WHERE mode = '%s';" % (mode, mode), direct=True)
    expect_eq(got, "%d|%d" % (total, total), "counter and events after %d transactions" % total)
    return "50 psql processes, 20 BEGIN/UPDATE/INSERT/COMMIT each"


CHECKS = {
    "connect": check_connect,
    "isolation": check_isolation,
    "prepared": check_prepared,
    "savepoint": check_savepoint,
    "error_rollback": check_error_rollback,
    "copy_in": check_copy_in,
    "copy_out": check_copy_out,
    "listen_notify": check_listen_notify,
    "cancel": check_cancel,
    "bytea_1mb": check_bytea,
    "rows_1e5": check_rows,
    "concurrency": check_concurrency,
}

if __name__ == "__main__":
    info(DRIVER, "psql", VERSION_TEXT.replace("psql (PostgreSQL) ", ""), "defaults (libpq)")
    run_all(DRIVER, CHECKS)
