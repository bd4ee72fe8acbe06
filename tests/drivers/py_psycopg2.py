"""psycopg2 through pgtenant, with the driver's defaults (autocommit off).

psycopg2 has no protocol-level prepared statements: it interpolates parameters on
the client and sends simple queries. Its way to reuse a plan is SQL PREPARE /
EXECUTE, which in transaction mode pins the client to its server connection.
"""

import io
import os
import select
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psycopg2  # noqa: E402
import psycopg2.errors as errors  # noqa: E402
import psycopg2.extensions  # noqa: E402

from pgt_common import (  # noqa: E402
    ACME_ITEMS,
    CANCEL_AFTER,
    CANCEL_LIMIT,
    CONCURRENT_CLIENTS,
    COPY_CHECK_SQL,
    COPY_OUT_SQL,
    COPY_ROWS,
    GLOBEX_ITEMS,
    PREPARED_RUNS,
    RESULT_ROWS,
    RESULT_SUM,
    TRANSACTIONS_PER_CLIENT,
    Env,
    Noise,
    copy_data,
    expect,
    expect_eq,
    info,
    md5,
    run_all,
)

DRIVER = "psycopg2"
env = Env()


def connect(mode, tenant=None, autocommit=False):
    conn = psycopg2.connect(env.dsn(mode, tenant), connect_timeout=10)
    conn.autocommit = autocommit
    return conn


def direct():
    conn = psycopg2.connect(env.direct_dsn())
    conn.autocommit = True
    return conn


def one(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def items(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT name FROM items ORDER BY id")
        return [r[0] for r in cur.fetchall()]


def noise(mode, count=4):
    def open_(i):
        return connect(mode, env.other if i % 4 == 3 else None, autocommit=True)

    return Noise(open_, lambda c: one(c, "SELECT count(*) FROM items"), count)


def check_connect(mode):
    conn = connect(mode)
    try:
        db, path = one(conn, "SELECT current_database(), current_setting('search_path')")
        expect_eq(db, "erp", "current_database()")
        expect("tenant_acme" in path, "search_path is %r" % path)
    finally:
        conn.close()


def check_isolation(mode):
    a, g = connect(mode), connect(mode, env.other)
    try:
        for _ in range(20):
            expect_eq(items(a), ACME_ITEMS, "acme items")
            expect_eq(items(g), GLOBEX_ITEMS, "globex items")
            a.commit()
            g.commit()
    finally:
        a.close()
        g.close()


def check_prepared(mode):
    conn = connect(mode, autocommit=True)
    try:
        with noise(mode) as bg:
            with conn.cursor() as cur:
                cur.execute(
                    "PREPARE pgt_stmt(int) AS SELECT $1 + 1, (SELECT count(*) FROM items), pg_backend_pid()"
                )
                pids = set()
                for i in range(PREPARED_RUNS):
                    cur.execute("EXECUTE pgt_stmt(%s)", (i,))
                    n, count, pid = cur.fetchone()
                    expect_eq((n, count), (i + 1, len(ACME_ITEMS)), "execution %d" % i)
                    pids.add(pid)
            bg.check()
        expect_eq(len(pids), 1, "server connections used after PREPARE")
        if mode == "transaction":
            return (
                "SQL PREPARE/EXECUTE (psycopg2 has no protocol-level prepared statements): "
                "PREPARE pins the client to its server connection"
            )
        return "SQL PREPARE/EXECUTE (psycopg2 has no protocol-level prepared statements)"
    finally:
        conn.close()


def check_savepoint(mode):
    table = "tx_%s" % mode
    conn = connect(mode)
    try:
        cur = conn.cursor()
        cur.execute("DELETE FROM %s WHERE id < 1000" % table)
        conn.commit()
        cur.execute("INSERT INTO %s VALUES (1, 'kept')" % table)
        cur.execute("SAVEPOINT sp")
        cur.execute("INSERT INTO %s VALUES (2, 'rolled back')" % table)
        try:
            cur.execute("SELECT 1/0")
            raise AssertionError("no error for SELECT 1/0")
        except errors.DivisionByZero:
            pass
        cur.execute("ROLLBACK TO SAVEPOINT sp")
        cur.execute("INSERT INTO %s VALUES (3, 'after the savepoint')" % table)
        conn.commit()
        cur.execute("SELECT id FROM %s WHERE id < 1000 ORDER BY id" % table)
        expect_eq([r[0] for r in cur.fetchall()], [1, 3], "rows after the transaction")
        conn.commit()
    finally:
        conn.close()


def check_error_rollback(mode):
    table = "tx_%s" % mode
    conn = connect(mode)
    try:
        cur = conn.cursor()
        cur.execute("INSERT INTO %s VALUES (10, 'never committed')" % table)
        try:
            cur.execute("SELECT * FROM no_such_table")
            raise AssertionError("no error for a missing table")
        except errors.UndefinedTable:
            pass
        try:
            cur.execute("SELECT 1")
            raise AssertionError("an aborted transaction accepted a query")
        except errors.InFailedSqlTransaction:
            pass
        conn.rollback()
        for _ in range(5):
            expect_eq(items(conn), ACME_ITEMS, "items after ROLLBACK")
            conn.commit()
        expect_eq(one(conn, "SELECT count(*) FROM %s WHERE id = 10" % table)[0], 0, "rolled back rows")
        conn.commit()
    finally:
        conn.close()


def check_copy_in(mode):
    data = copy_data()
    table = "copy_%s" % mode
    conn = connect(mode)
    try:
        cur = conn.cursor()
        cur.execute("TRUNCATE %s" % table)
        cur.copy_expert("COPY %s (id, name) FROM STDIN" % table, io.BytesIO(data), size=64 * 1024)
        expect_eq(cur.rowcount, COPY_ROWS, "COPY row count")
        conn.commit()
        expect_eq(one(conn, COPY_CHECK_SQL.format(table=table)), (COPY_ROWS, md5(data)), "checksum via proxy")
        conn.commit()
    finally:
        conn.close()
    d = direct()
    try:
        got = one(d, COPY_CHECK_SQL.format(table="tenant_acme." + table))
        expect_eq(got, (COPY_ROWS, md5(data)), "count and checksum on the server")
    finally:
        d.close()


def check_copy_out(mode):
    conn = connect(mode, autocommit=True)
    try:
        out = io.BytesIO()
        conn.cursor().copy_expert(COPY_OUT_SQL, out)
        expect_eq(md5(out.getvalue()), md5(copy_data()), "checksum of COPY TO STDOUT")
        expect_eq(items(conn), ACME_ITEMS, "items after COPY")
    finally:
        conn.close()


def wait_notification(conn, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not conn.notifies:
        left = deadline - time.monotonic()
        expect(left > 0, "no notification within %.0f s" % timeout)
        select.select([conn], [], [], left)
        conn.poll()
    return conn.notifies.pop(0).payload


def check_listen_notify(mode):
    channel = "jobs_%s" % mode
    listener = connect(mode, autocommit=True)
    notifier = connect(mode, autocommit=True)
    try:
        listener.cursor().execute("LISTEN %s" % channel)
        with noise(mode, 3):
            notifier.cursor().execute("NOTIFY %s, 'hello from %s'" % (channel, mode))
            expect_eq(wait_notification(listener), "hello from %s" % mode, "notification")
            pids = {one(listener, "SELECT pg_backend_pid()")[0] for _ in range(20)}
        expect_eq(len(pids), 1, "server connections the listener used after LISTEN")
        notifier.cursor().execute("SELECT pg_notify(%s, 'again')", (channel,))
        expect_eq(wait_notification(listener), "again", "second notification")
    finally:
        listener.close()
        notifier.close()
    if mode == "transaction":
        return "LISTEN pins the client to its server connection for the rest of its session"


def check_cancel(mode):
    conn = connect(mode, autocommit=True)
    try:
        with noise(mode, 2):
            timer = threading.Timer(CANCEL_AFTER, conn.cancel)
            started = time.monotonic()
            timer.start()
            try:
                conn.cursor().execute("SELECT pg_sleep(10)")
                raise AssertionError("pg_sleep(10) was not cancelled")
            except errors.QueryCanceled:
                elapsed = time.monotonic() - started
            finally:
                timer.join()
        expect(elapsed < CANCEL_LIMIT, "cancel took %.1fs" % elapsed)
        expect_eq(items(conn), ACME_ITEMS, "items after the cancel")
        return "QueryCanceled (57014) via connection.cancel()"
    finally:
        conn.close()


def check_bytea(mode):
    data = os.urandom(1 << 20)
    conn = connect(mode)
    try:
        digest, length, back = one(
            conn, "SELECT md5(b), length(b), b FROM (SELECT %s::bytea AS b) s", (psycopg2.Binary(data),)
        )
        expect_eq((digest, length), (md5(data), len(data)), "md5 and length on the server")
        expect(bytes(back) == data, "the bytea came back different")
        conn.commit()
        return "psycopg2 interpolates parameters on the client: sent as a bytea literal"
    finally:
        conn.close()


def check_rows(mode):
    conn = connect(mode)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT g, 'row ' || g FROM generate_series(1, %s) g", (RESULT_ROWS,))
            rows = cur.fetchall()
        expect_eq(len(rows), RESULT_ROWS, "rows")
        expect_eq(sum(r[0] for r in rows), RESULT_SUM, "sum")
        expect_eq(rows[-1][1], "row %d" % RESULT_ROWS, "last row")
        conn.commit()
    finally:
        conn.close()


def check_concurrency(mode):
    d = direct()
    try:
        d.cursor().execute("UPDATE tenant_acme.counters SET n = 0 WHERE mode = %s", (mode,))
        d.cursor().execute("DELETE FROM tenant_acme.events WHERE mode = %s", (mode,))
    finally:
        d.close()
    barrier = threading.Barrier(CONCURRENT_CLIENTS, timeout=60)
    failures = []

    def worker(k):
        conn = None
        try:
            conn = connect(mode)
            barrier.wait()
            cur = conn.cursor()
            for seq in range(TRANSACTIONS_PER_CLIENT):
                cur.execute("UPDATE counters SET n = n + 1 WHERE mode = %s", (mode,))
                cur.execute("INSERT INTO events VALUES (%s, %s, %s)", (mode, k, seq))
                conn.commit()
        except Exception as e:  # noqa: BLE001
            failures.append("client %d: %s" % (k, e))
            barrier.abort()
        finally:
            if conn is not None:
                conn.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(CONCURRENT_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    expect(not failures, "; ".join(failures[:3]))
    total = CONCURRENT_CLIENTS * TRANSACTIONS_PER_CLIENT
    d = direct()
    try:
        n = one(d, "SELECT n FROM tenant_acme.counters WHERE mode = %s", (mode,))[0]
        events = one(d, "SELECT count(*) FROM tenant_acme.events WHERE mode = %s", (mode,))[0]
    finally:
        d.close()
    expect_eq((n, events), (total, total), "counter and events after %d transactions" % total)


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
    info(
        DRIVER,
        "psycopg2",
        "%s (libpq %s)" % (psycopg2.__version__.split()[0], psycopg2.extensions.libpq_version()),
        "defaults (autocommit off; parameters interpolated on the client)",
    )
    run_all(DRIVER, CHECKS)
