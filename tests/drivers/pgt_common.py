"""Shared by the Python driver scripts of the compatibility suite (stdlib only).

tests/drivers.rs starts PostgreSQL, one pgtenant in session mode and one in
transaction mode, and runs a driver script with these variables:

    PGT_HOST            127.0.0.1
    PGT_SESSION_PORT    the session-mode proxy
    PGT_TXN_PORT        the transaction-mode proxy
    PGT_DIRECT_PORT     PostgreSQL itself (superuser postgres, database erp)
    PGT_USER            app
    PGT_TENANT          acme     (sees ACME_ITEMS in its unqualified `items`)
    PGT_OTHER_TENANT    globex   (sees GLOBEX_ITEMS)

A script prints one JSON line per (driver, mode, feature) on stdout:

    {"driver": "psycopg3", "mode": "transaction", "feature": "cancel",
     "status": "pass" | "fail" | "na", "detail": "...", "error": "...", "ms": 123}

and one {"driver": ..., "info": {...}} line naming the driver and its version.
The feature names and their meaning are listed in FEATURES below; every driver
implements the same checks with its own API.
"""

import hashlib
import json
import os
import sys
import threading
import time
import traceback

MODES = ("session", "transaction")

# Feature id -> what it checks. matrix.py keeps the human labels.
FEATURES = (
    "connect",  # connect with the tenant as database name, server answers
    "isolation",  # acme sees its 2 items, globex its 3, by unqualified name
    "prepared",  # one prepared statement executed 1,000 times while others run
    "savepoint",  # BEGIN, SAVEPOINT, error, ROLLBACK TO SAVEPOINT, COMMIT
    "error_rollback",  # error inside a transaction, ROLLBACK, connection usable
    "copy_in",  # COPY FROM STDIN 10,000 rows, checksum on the server
    "copy_out",  # COPY TO STDOUT 10,000 rows, checksum on the client
    "listen_notify",  # LISTEN on one connection, NOTIFY from another
    "cancel",  # pg_sleep(10) cancelled after 300 ms through the driver's API
    "bytea_1mb",  # 1 MiB bytea parameter round trip
    "rows_1e5",  # a 100,000-row result
    "concurrency",  # 50 connections x 20 short transactions, counts checked
)

ACME_ITEMS = ["acme anvil", "acme rocket skates"]
GLOBEX_ITEMS = ["globex hammock", "globex doomsday device", "globex coupon"]

PREPARED_RUNS = 1000
COPY_ROWS = 10_000
RESULT_ROWS = 100_000
RESULT_SUM = RESULT_ROWS * (RESULT_ROWS + 1) // 2
CONCURRENT_CLIENTS = 50
TRANSACTIONS_PER_CLIENT = 20
CANCEL_AFTER = 0.3
# A cancelled pg_sleep(10) must end well before it would have finished.
CANCEL_LIMIT = 5.0
# One check may take this long before it is recorded as failed.
CHECK_TIMEOUT = 60

# The prepared statement every driver reuses; {p} is the driver's placeholder.
PREPARED_SQL = (
    "SELECT {p}::int + 1 AS n, (SELECT count(*) FROM items) AS items, "
    "pg_backend_pid() AS pid"
)

# COPY TO STDOUT of this query gives exactly copy_data() (text format).
COPY_OUT_SQL = (
    "COPY (SELECT g, 'row-' || g || '-é' FROM generate_series(1, %d) g ORDER BY g) "
    "TO STDOUT" % COPY_ROWS
)
# The same checksum over a table that COPY FROM STDIN filled with copy_data().
COPY_CHECK_SQL = (
    "SELECT count(*), md5(string_agg(id::text || E'\\t' || name || E'\\n', '' "
    "ORDER BY id)) FROM {table}"
)


def copy_data():
    """The 10,000 rows of the COPY checks, as COPY text (id TAB name NL), UTF-8."""
    return "".join("%d\trow-%d-é\n" % (i, i) for i in range(1, COPY_ROWS + 1)).encode()


def md5(data):
    return hashlib.md5(data).hexdigest()


class Env:
    def __init__(self):
        e = os.environ
        try:
            self.host = e["PGT_HOST"]
            self.ports = {"session": int(e["PGT_SESSION_PORT"]), "transaction": int(e["PGT_TXN_PORT"])}
            self.direct_port = int(e["PGT_DIRECT_PORT"])
        except KeyError as missing:
            sys.exit("missing environment variable %s (run through cargo test --test drivers)" % missing)
        self.user = e.get("PGT_USER", "app")
        self.tenant = e.get("PGT_TENANT", "acme")
        self.other = e.get("PGT_OTHER_TENANT", "globex")

    def port(self, mode):
        return self.ports[mode]

    def dsn(self, mode, tenant=None):
        return "postgres://%s@%s:%d/%s" % (self.user, self.host, self.port(mode), tenant or self.tenant)

    def direct_dsn(self):
        return "postgres://postgres@%s:%d/erp" % (self.host, self.direct_port)


class CheckFailed(Exception):
    """A check saw a wrong answer (as opposed to a driver error)."""


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def expect_eq(got, want, what):
    if got != want:
        raise CheckFailed("%s: got %r, expected %r" % (what, got, want))


_print_lock = threading.Lock()


def emit(record):
    with _print_lock:
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        sys.stdout.flush()


def info(driver, name, version, notes=""):
    emit({"driver": driver, "info": {"name": name, "version": version, "notes": notes}})


def describe_error(e):
    """SQLSTATE and message of a driver error, else its type and text."""
    code = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
    text = str(e).strip() or repr(e)
    if isinstance(e, CheckFailed):
        return text
    if code:
        return "%s %s: %s" % (type(e).__name__, code, text.splitlines()[0])
    return "%s: %s" % (type(e).__name__, text.splitlines()[0] if text else "")


def run_check(driver, mode, feature, fn, *args):
    """Runs one check in a thread, at most CHECK_TIMEOUT seconds; emits pass (with the
    detail fn returns) or fail (with the error). A check that hangs is left behind
    (daemon thread) so that the others still run."""
    started = time.monotonic()
    sys.stderr.write("[%s %s] %s ...\n" % (driver, mode, feature))
    sys.stderr.flush()
    record = {"driver": driver, "mode": mode, "feature": feature}
    outcome = {}

    def target():
        try:
            outcome["detail"] = fn(mode, *args)
        except BaseException as e:  # noqa: BLE001 - every failure becomes a record
            outcome["error"] = describe_error(e)
            traceback.print_exc(file=sys.stderr)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(CHECK_TIMEOUT)
    if thread.is_alive():
        record.update(status="fail", error="no answer within %d s (hung)" % CHECK_TIMEOUT)
    elif "error" in outcome:
        record.update(status="fail", error=outcome["error"])
    else:
        record.update(status="pass", detail=outcome.get("detail") or "")
    record["ms"] = int((time.monotonic() - started) * 1000)
    emit(record)
    return record["status"] == "pass"


def na(driver, mode, feature, reason):
    emit({"driver": driver, "mode": mode, "feature": feature, "status": "na", "detail": reason, "ms": 0})


def run_all(driver, checks):
    """Runs checks[feature](mode) for both modes, in the dict's order. A value that is
    a string instead of a function marks a feature the driver has no API for (na,
    with that reason). Every common feature must be there."""
    missing = [f for f in FEATURES if f not in checks]
    if missing:
        sys.exit("%s: no check for %s" % (driver, ", ".join(missing)))
    for mode in MODES:
        for feature, fn in checks.items():
            if isinstance(fn, str):
                na(driver, mode, feature, fn)
            else:
                run_check(driver, mode, feature, fn)
    # A hung check's threads must not keep the script alive.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class Noise:
    """Threads that keep other connections busy so a transaction-mode client meets
    other servers: each opens a connection with connect(i), calls step(conn) until
    stopped, then close(conn)."""

    def __init__(self, connect, step, count, close=lambda conn: conn.close()):
        self.stop_flag = threading.Event()
        self.errors = []
        self.runs = 0
        self.threads = [
            threading.Thread(target=self._loop, args=(connect, step, close, i), daemon=True)
            for i in range(count)
        ]

    def _loop(self, connect, step, close, i):
        conn = None
        try:
            conn = connect(i)
            while not self.stop_flag.is_set():
                step(conn)
                self.runs += 1
        except Exception as e:  # noqa: BLE001
            self.errors.append(describe_error(e))
        finally:
            if conn is not None:
                try:
                    close(conn)
                except Exception:  # noqa: BLE001
                    pass

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(10)
        return False

    def check(self):
        expect(not self.errors, "background connections failed: %s" % "; ".join(self.errors))


def switch_detail(mode, pids):
    """Detail text about the servers a client used; in transaction mode a client that
    never switched proves nothing, so that fails."""
    n = len(set(pids))
    if mode == "transaction":
        expect(n > 1, "all %d executions ran on one server: the check proves nothing" % len(pids))
        return "executions switched server connections"
    expect_eq(n, 1, "server connections used by one session-mode client")
    return ""
