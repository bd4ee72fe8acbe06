"""psycopg 3 through pgtenant: the common checks plus pipeline mode.

Server-side prepared statements: prepare_threshold=0 (prepare at the first
execution) for the `prepared` and `pipeline` checks; everything else runs with the
driver's defaults (autocommit off, prepare_threshold=5).
"""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psycopg  # noqa: E402
from psycopg import errors  # noqa: E402

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
    PREPARED_SQL,
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
    switch_detail,
)

DRIVER = "psycopg3"
env = Env()
SQL = PREPARED_SQL.format(p="%s")


def connect(mode, tenant=None, **kw):
    return psycopg.connect(env.dsn(mode, tenant), connect_timeout=10, **kw)


def direct():
    return psycopg.connect(env.direct_dsn(), autocommit=True)


def items(conn):
    return [r[0] for r in conn.execute("SELECT name FROM items ORDER BY id").fetchall()]


def noise(mode, count=4):
    """Other clients running the same prepared statement (acme and globex)."""

    def open_(i):
        return connect(mode, env.other if i % 4 == 3 else None, autocommit=True, prepare_threshold=0)

    return Noise(open_, lambda c: c.execute(SQL, (7,)).fetchone(), count)


def check_connect(mode):
    with connect(mode) as conn:
        db, path = conn.execute("SELECT current_database(), current_setting('search_path')").fetchone()
        expect_eq(db, "erp", "current_database()")
        expect("tenant_acme" in path, "search_path is %r" % path)


def check_isolation(mode):
    with connect(mode) as a, connect(mode, env.other) as g:
        expect_eq(items(a), ACME_ITEMS, "acme items")
        expect_eq(items(g), GLOBEX_ITEMS, "globex items")
        # The same statement text on both tenants at once, prepared on the server.
        for _ in range(20):
            n_a = a.execute("SELECT count(*) FROM items", prepare=True).fetchone()[0]
            n_g = g.execute("SELECT count(*) FROM items", prepare=True).fetchone()[0]
            expect_eq((n_a, n_g), (2, 3), "prepared counts (acme, globex)")


def check_prepared(mode):
    with connect(mode, autocommit=True, prepare_threshold=0) as conn, noise(mode) as bg:
        pids = []
        for i in range(PREPARED_RUNS):
            n, count, pid = conn.execute(SQL, (i,)).fetchone()
            expect_eq(n, i + 1, "execution %d" % i)
            expect_eq(count, len(ACME_ITEMS), "items seen by execution %d" % i)
            pids.append(pid)
        expect(conn._prepared._names, "psycopg did not prepare the statement server-side")
        bg.check()
        return switch_detail(mode, pids)


def check_pipeline(mode):
    with connect(mode, autocommit=True, prepare_threshold=0) as conn, noise(mode) as bg:
        conn.execute("DELETE FROM tx_%s WHERE id >= 1000" % mode)
        pids = set()
        for rnd in range(5):
            with conn.pipeline() as p:
                curs = [conn.execute(SQL, (i,)) for i in range(100)]
                with conn.transaction():
                    for i in range(20):
                        conn.execute(
                            "INSERT INTO tx_%s (id, note) VALUES (%%s, %%s)" % mode,
                            (1000 + rnd * 100 + i, "pipelined"),
                        )
                p.sync()
                for i, cur in enumerate(curs):
                    n, count, pid = cur.fetchone()
                    expect_eq((n, count), (i + 1, len(ACME_ITEMS)), "pipelined result %d" % i)
                    pids.add(pid)
            # An error inside a pipeline aborts the rest of it, then the pipeline goes on.
            try:
                with conn.pipeline():
                    conn.execute("SELECT 1/0")
                    conn.execute("SELECT 1")
            except errors.DivisionByZero:
                pass
            else:
                raise AssertionError("no error from SELECT 1/0 in a pipeline")
        n = conn.execute("SELECT count(*) FROM tx_%s WHERE id >= 1000" % mode).fetchone()[0]
        expect_eq(n, 100, "rows inserted in pipelined transactions")
        bg.check()
        if mode == "transaction":
            expect(len(pids) > 1, "every pipeline ran on one server: the check proves nothing")
        return "5 pipelines of 100 prepared queries and a 20-insert transaction"


def check_savepoint(mode):
    table = "tx_%s" % mode
    with connect(mode) as conn:
        conn.execute("DELETE FROM %s WHERE id < 1000" % table)
        conn.commit()
        with conn.transaction():
            conn.execute("INSERT INTO %s VALUES (1, 'kept')" % table)
            try:
                with conn.transaction():  # SAVEPOINT
                    conn.execute("INSERT INTO %s VALUES (2, 'rolled back')" % table)
                    conn.execute("SELECT 1/0")
            except errors.DivisionByZero:
                pass
            conn.execute("INSERT INTO %s VALUES (3, 'after the savepoint')" % table)
        ids = [r[0] for r in conn.execute("SELECT id FROM %s WHERE id < 1000 ORDER BY id" % table)]
        expect_eq(ids, [1, 3], "rows after the transaction")
        conn.commit()


def check_error_rollback(mode):
    table = "tx_%s" % mode
    with connect(mode) as conn:
        conn.execute("INSERT INTO %s VALUES (10, 'never committed')" % table)
        try:
            conn.execute("SELECT * FROM no_such_table")
            raise AssertionError("no error for a missing table")
        except errors.UndefinedTable:
            pass
        try:
            conn.execute("SELECT 1")
            raise AssertionError("an aborted transaction accepted a query")
        except errors.InFailedSqlTransaction:
            pass
        conn.rollback()
        for _ in range(5):
            expect_eq(items(conn), ACME_ITEMS, "items after ROLLBACK")
            conn.commit()
        n = conn.execute("SELECT count(*) FROM %s WHERE id = 10" % table).fetchone()[0]
        expect_eq(n, 0, "rows of the rolled back transaction")


def check_copy_in(mode):
    data = copy_data()
    table = "copy_%s" % mode
    with connect(mode) as conn:
        conn.execute("TRUNCATE %s" % table)
        with conn.cursor() as cur:
            with cur.copy("COPY %s (id, name) FROM STDIN" % table) as copy:
                for start in range(0, len(data), 64 * 1024):
                    copy.write(data[start:start + 64 * 1024])
            expect_eq(cur.rowcount, COPY_ROWS, "COPY row count")
        conn.commit()
        got = conn.execute(COPY_CHECK_SQL.format(table=table)).fetchone()
        expect_eq(tuple(got), (COPY_ROWS, md5(data)), "count and checksum through the proxy")
        conn.commit()
    with direct() as d:
        got = d.execute(COPY_CHECK_SQL.format(table="tenant_acme." + table)).fetchone()
        expect_eq(tuple(got), (COPY_ROWS, md5(data)), "count and checksum on the server")


def check_copy_out(mode):
    with connect(mode, autocommit=True) as conn:
        chunks = []
        with conn.cursor() as cur:
            with cur.copy(COPY_OUT_SQL) as copy:
                for chunk in copy:
                    chunks.append(bytes(chunk))
        data = b"".join(chunks)
        expect_eq(md5(data), md5(copy_data()), "checksum of COPY TO STDOUT")
        expect_eq(items(conn), ACME_ITEMS, "items after COPY")


def check_listen_notify(mode):
    channel = "jobs_%s" % mode
    with connect(mode, autocommit=True) as listener, connect(mode, autocommit=True) as notifier:
        listener.execute("LISTEN %s" % channel)
        with noise(mode, 3):
            notifier.execute("NOTIFY %s, 'hello from %s'" % (channel, mode))
            got = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
            expect_eq(got, ["hello from %s" % mode], "notifications received")
            pids = {listener.execute("SELECT pg_backend_pid()").fetchone()[0] for _ in range(20)}
        expect_eq(len(pids), 1, "server connections the listener used after LISTEN")
        # A second notification after queries on the listener.
        notifier.execute("SELECT pg_notify(%s, 'again')", (channel,))
        got = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
        expect_eq(got, ["again"], "second notification")
    if mode == "transaction":
        return "LISTEN pins the client to its server connection for the rest of its session"


def check_cancel(mode):
    with connect(mode, autocommit=True) as conn, noise(mode, 2):
        timer = threading.Timer(CANCEL_AFTER, conn.cancel_safe)
        started = time.monotonic()
        timer.start()
        try:
            conn.execute("SELECT pg_sleep(10)")
            raise AssertionError("pg_sleep(10) was not cancelled")
        except errors.QueryCanceled:
            elapsed = time.monotonic() - started
        finally:
            timer.join()
        expect(elapsed < CANCEL_LIMIT, "cancel took %.1fs" % elapsed)
        expect_eq(items(conn), ACME_ITEMS, "items after the cancel")
        return "QueryCanceled (57014) via Connection.cancel_safe()"


def check_bytea(mode):
    data = os.urandom(1 << 20)
    with connect(mode) as conn:
        digest, length, back = conn.execute(
            "SELECT md5(b), length(b), b FROM (SELECT %s::bytea AS b) s", (data,)
        ).fetchone()
        expect_eq((digest, length), (md5(data), len(data)), "md5 and length on the server")
        expect(bytes(back) == data, "the bytea came back different")


def check_rows(mode):
    with connect(mode) as conn:
        rows = conn.execute(
            "SELECT g, 'row ' || g FROM generate_series(1, %d) g" % RESULT_ROWS
        ).fetchall()
        expect_eq(len(rows), RESULT_ROWS, "rows")
        expect_eq(sum(r[0] for r in rows), RESULT_SUM, "sum")
        expect_eq(rows[-1][1], "row %d" % RESULT_ROWS, "last row")


def check_concurrency(mode):
    with direct() as d:
        d.execute("UPDATE tenant_acme.counters SET n = 0 WHERE mode = %s", (mode,))
        d.execute("DELETE FROM tenant_acme.events WHERE mode = %s", (mode,))
    barrier = threading.Barrier(CONCURRENT_CLIENTS, timeout=60)
    errors_seen = []

    def worker(k):
        try:
            with connect(mode) as conn:
                barrier.wait()
                for seq in range(TRANSACTIONS_PER_CLIENT):
                    with conn.transaction():
                        conn.execute("UPDATE counters SET n = n + 1 WHERE mode = %s", (mode,))
                        conn.execute("INSERT INTO events VALUES (%s, %s, %s)", (mode, k, seq))
        except Exception as e:  # noqa: BLE001
            errors_seen.append("client %d: %s" % (k, e))
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(CONCURRENT_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    expect(not errors_seen, "; ".join(errors_seen[:3]))
    total = CONCURRENT_CLIENTS * TRANSACTIONS_PER_CLIENT
    with direct() as d:
        n = d.execute("SELECT n FROM tenant_acme.counters WHERE mode = %s", (mode,)).fetchone()[0]
        events = d.execute("SELECT count(*) FROM tenant_acme.events WHERE mode = %s", (mode,)).fetchone()[0]
    expect_eq((n, events), (total, total), "counter and events after %d transactions" % total)


CHECKS = {
    "connect": check_connect,
    "isolation": check_isolation,
    "prepared": check_prepared,
    "pipeline": check_pipeline,
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
        "psycopg 3",
        "%s (libpq %s)" % (psycopg.__version__, psycopg.pq.version()),
        "prepare_threshold=0 for the prepared and pipeline checks, defaults elsewhere",
    )
    run_all(DRIVER, CHECKS)
