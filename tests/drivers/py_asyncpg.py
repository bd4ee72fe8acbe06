"""asyncpg through pgtenant, with the driver's defaults: its statement cache
(statement_cache_size=100, every query prepared as a named statement and reused)
and, for the concurrency check, its connection pool with the pool's reset query.
"""

import asyncio
import io
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import asyncpg  # noqa: E402

import pgt_common  # noqa: E402
from pgt_common import (  # noqa: E402
    ACME_ITEMS,
    CANCEL_AFTER,
    CANCEL_LIMIT,
    CHECK_TIMEOUT,
    CONCURRENT_CLIENTS,
    COPY_CHECK_SQL,
    COPY_ROWS,
    GLOBEX_ITEMS,
    MODES,
    PREPARED_RUNS,
    PREPARED_SQL,
    RESULT_ROWS,
    RESULT_SUM,
    TRANSACTIONS_PER_CLIENT,
    CheckFailed,
    Env,
    copy_data,
    describe_error,
    emit,
    expect,
    expect_eq,
    info,
    md5,
    switch_detail,
)

DRIVER = "asyncpg"
env = Env()
SQL = PREPARED_SQL.format(p="$1")
# COPY_OUT_SQL's query, for copy_from_query (which wraps it in COPY (...) TO STDOUT).
COPY_OUT_QUERY = "SELECT g, 'row-' || g || '-é' FROM generate_series(1, %d) g ORDER BY g" % COPY_ROWS


async def connect(mode, tenant=None, **kw):
    return await asyncpg.connect(env.dsn(mode, tenant), timeout=10, **kw)


async def direct():
    return await asyncpg.connect(env.direct_dsn())


async def items(conn):
    return [r[0] for r in await conn.fetch("SELECT name FROM items ORDER BY id")]


class Noise:
    """Other clients running the same statement until the block ends (3 acme, 1 globex)."""

    def __init__(self, mode, count=4):
        self.mode, self.count, self.stop = mode, count, False

    async def _loop(self, i):
        conn = await connect(self.mode, env.other if i % 4 == 3 else None)
        try:
            while not self.stop:
                await conn.fetchrow(SQL, 7)
        finally:
            await conn.close()

    async def __aenter__(self):
        self.tasks = [asyncio.create_task(self._loop(i)) for i in range(self.count)]
        await asyncio.sleep(0.05)
        return self

    async def __aexit__(self, *exc):
        self.stop = True
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        errors = [describe_error(r) for r in results if isinstance(r, BaseException)]
        if errors and exc[0] is None:
            raise CheckFailed("background connections failed: %s" % "; ".join(errors))
        return False


async def check_connect(mode):
    conn = await connect(mode)
    try:
        db, path = await conn.fetchrow("SELECT current_database(), current_setting('search_path')")
        expect_eq(db, "erp", "current_database()")
        expect("tenant_acme" in path, "search_path is %r" % path)
    finally:
        await conn.close()


async def check_isolation(mode):
    a, g = await connect(mode), await connect(mode, env.other)
    try:
        for _ in range(20):
            expect_eq(await items(a), ACME_ITEMS, "acme items")
            expect_eq(await items(g), GLOBEX_ITEMS, "globex items")
            expect_eq(
                (await a.fetchval("SELECT count(*) FROM items"), await g.fetchval("SELECT count(*) FROM items")),
                (2, 3),
                "counts (acme, globex)",
            )
    finally:
        await a.close()
        await g.close()


async def check_prepared(mode):
    conn = await connect(mode)
    try:
        async with Noise(mode):
            pids = []
            for i in range(PREPARED_RUNS):
                n, count, pid = await conn.fetchrow(SQL, i)
                expect_eq((n, count), (i + 1, len(ACME_ITEMS)), "execution %d" % i)
                pids.append(pid)
        expect(len(conn._stmt_cache) >= 1, "asyncpg did not cache the statement")
        return switch_detail(mode, pids)
    finally:
        await conn.close()


async def check_savepoint(mode):
    table = "tx_%s" % mode
    conn = await connect(mode)
    try:
        await conn.execute("DELETE FROM %s WHERE id < 1000" % table)
        async with conn.transaction():
            await conn.execute("INSERT INTO %s VALUES (1, 'kept')" % table)
            try:
                async with conn.transaction():  # SAVEPOINT
                    await conn.execute("INSERT INTO %s VALUES (2, 'rolled back')" % table)
                    await conn.execute("SELECT 1/0")
            except asyncpg.DivisionByZeroError:
                pass
            await conn.execute("INSERT INTO %s VALUES (3, 'after the savepoint')" % table)
        ids = [r[0] for r in await conn.fetch("SELECT id FROM %s WHERE id < 1000 ORDER BY id" % table)]
        expect_eq(ids, [1, 3], "rows after the transaction")
    finally:
        await conn.close()


async def check_error_rollback(mode):
    table = "tx_%s" % mode
    conn = await connect(mode)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("INSERT INTO %s VALUES (10, 'never committed')" % table)
        try:
            await conn.fetch("SELECT * FROM no_such_table")
            raise AssertionError("no error for a missing table")
        except asyncpg.UndefinedTableError:
            pass
        try:
            await conn.fetch("SELECT 1")
            raise AssertionError("an aborted transaction accepted a query")
        except asyncpg.InFailedSQLTransactionError:
            pass
        await tx.rollback()
        for _ in range(5):
            expect_eq(await items(conn), ACME_ITEMS, "items after ROLLBACK")
        expect_eq(await conn.fetchval("SELECT count(*) FROM %s WHERE id = 10" % table), 0, "rolled back rows")
    finally:
        await conn.close()


async def check_copy_in(mode):
    data = copy_data()
    table = "copy_%s" % mode
    conn = await connect(mode)
    try:
        await conn.execute("TRUNCATE %s" % table)
        status = await conn.copy_to_table(table, source=io.BytesIO(data), columns=["id", "name"])
        expect_eq(status, "COPY %d" % COPY_ROWS, "COPY status")
        got = await conn.fetchrow(COPY_CHECK_SQL.format(table=table))
        expect_eq(tuple(got), (COPY_ROWS, md5(data)), "count and checksum through the proxy")
    finally:
        await conn.close()
    d = await direct()
    try:
        got = await d.fetchrow(COPY_CHECK_SQL.format(table="tenant_acme." + table))
        expect_eq(tuple(got), (COPY_ROWS, md5(data)), "count and checksum on the server")
    finally:
        await d.close()


async def check_copy_out(mode):
    conn = await connect(mode)
    try:
        out = io.BytesIO()
        await conn.copy_from_query(COPY_OUT_QUERY, output=out)
        expect_eq(md5(out.getvalue()), md5(copy_data()), "checksum of COPY TO STDOUT")
        expect_eq(await items(conn), ACME_ITEMS, "items after COPY")
    finally:
        await conn.close()


async def check_listen_notify(mode):
    channel = "jobs_%s" % mode
    listener, notifier = await connect(mode), await connect(mode)
    received = asyncio.Queue()
    try:
        await listener.add_listener(channel, lambda _c, _pid, _ch, payload: received.put_nowait(payload))
        async with Noise(mode, 3):
            await notifier.execute("NOTIFY %s, 'hello from %s'" % (channel, mode))
            got = await asyncio.wait_for(received.get(), 5)
            expect_eq(got, "hello from %s" % mode, "notification")
            pids = {await listener.fetchval("SELECT pg_backend_pid()") for _ in range(20)}
        expect_eq(len(pids), 1, "server connections the listener used after LISTEN")
        await notifier.execute("SELECT pg_notify($1, 'again')", channel)
        expect_eq(await asyncio.wait_for(received.get(), 5), "again", "second notification")
    finally:
        await listener.close()
        await notifier.close()
    if mode == "transaction":
        return "LISTEN pins the client to its server connection for the rest of its session"


async def check_cancel(mode):
    conn = await connect(mode)
    d = await direct()
    try:
        async with Noise(mode, 2):
            started = time.monotonic()
            try:
                await conn.fetch("SELECT pg_sleep(10)", timeout=CANCEL_AFTER)
                raise AssertionError("pg_sleep(10) was not cancelled")
            except asyncio.TimeoutError:
                pass
            # asyncpg sends a CancelRequest and waits for the server's answer before
            # the connection takes the next query.
            expect_eq(await items(conn), ACME_ITEMS, "items after the cancel")
            elapsed = time.monotonic() - started
        expect(elapsed < CANCEL_LIMIT, "cancel took %.1fs" % elapsed)
        running = await d.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(10)' AND state = 'active'"
        )
        expect_eq(running, 0, "pg_sleep(10) still running on the server")
        return (
            "fetch(timeout=0.3) raised TimeoutError; asyncpg sent a CancelRequest (the server's "
            "57014 stays inside asyncpg) and the connection answered again at once"
        )
    finally:
        await conn.close()
        await d.close()


async def check_bytea(mode):
    data = os.urandom(1 << 20)
    conn = await connect(mode)
    try:
        digest, length, back = await conn.fetchrow(
            "SELECT md5(b), length(b), b FROM (SELECT $1::bytea AS b) s", data
        )
        expect_eq((digest, length), (md5(data), len(data)), "md5 and length on the server")
        expect(bytes(back) == data, "the bytea came back different")
    finally:
        await conn.close()


async def check_rows(mode):
    conn = await connect(mode)
    try:
        rows = await conn.fetch("SELECT g, 'row ' || g FROM generate_series(1, $1::int) g", RESULT_ROWS)
        expect_eq(len(rows), RESULT_ROWS, "rows")
        expect_eq(sum(r[0] for r in rows), RESULT_SUM, "sum")
        expect_eq(rows[-1][1], "row %d" % RESULT_ROWS, "last row")
    finally:
        await conn.close()


async def check_concurrency(mode):
    d = await direct()
    try:
        await d.execute("UPDATE tenant_acme.counters SET n = 0 WHERE mode = $1", mode)
        await d.execute("DELETE FROM tenant_acme.events WHERE mode = $1", mode)
    finally:
        await d.close()
    # asyncpg's own pool: 50 connections; each task takes one per transaction and
    # gives it back (the pool runs its reset query on release).
    pool = await asyncpg.create_pool(env.dsn(mode), min_size=CONCURRENT_CLIENTS, max_size=CONCURRENT_CLIENTS)
    try:

        async def worker(k):
            for seq in range(TRANSACTIONS_PER_CLIENT):
                async with pool.acquire() as conn:
                    async with conn.transaction():
                        await conn.execute("UPDATE counters SET n = n + 1 WHERE mode = $1", mode)
                        await conn.execute("INSERT INTO events VALUES ($1, $2, $3)", mode, k, seq)

        results = await asyncio.wait_for(
            asyncio.gather(*(worker(k) for k in range(CONCURRENT_CLIENTS)), return_exceptions=True), 120
        )
        failures = ["client %d: %s" % (k, describe_error(r)) for k, r in enumerate(results) if r is not None]
        expect(not failures, "; ".join(failures[:3]))
    finally:
        await pool.close()
    total = CONCURRENT_CLIENTS * TRANSACTIONS_PER_CLIENT
    d = await direct()
    try:
        n = await d.fetchval("SELECT n FROM tenant_acme.counters WHERE mode = $1", mode)
        events = await d.fetchval("SELECT count(*) FROM tenant_acme.events WHERE mode = $1", mode)
    finally:
        await d.close()
    expect_eq((n, events), (total, total), "counter and events after %d transactions" % total)
    return "asyncpg.create_pool(min_size=50, max_size=50), a connection per transaction"


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


async def run_check(mode, feature, fn):
    """Runs one check, at most CHECK_TIMEOUT seconds. A check that hangs is cancelled
    and left behind without waiting for it (asyncpg may wait forever on a stuck
    connection), so that the others still run."""
    started = time.monotonic()
    sys.stderr.write("[%s %s] %s ...\n" % (DRIVER, mode, feature))
    record = {"driver": DRIVER, "mode": mode, "feature": feature}
    task = asyncio.ensure_future(fn(mode))
    done, _ = await asyncio.wait({task}, timeout=CHECK_TIMEOUT)
    if not done:
        task.cancel()
        record.update(status="fail", error="no answer within %d s (hung)" % CHECK_TIMEOUT)
    elif task.exception() is not None:
        e = task.exception()
        import traceback

        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
        if isinstance(e, asyncio.TimeoutError):
            error = "TimeoutError: a wait inside the check timed out"
        else:
            error = describe_error(e) if str(e) else "%s (no message)" % type(e).__name__
        record.update(status="fail", error=error)
    else:
        record.update(status="pass", detail=task.result() or "")
    record["ms"] = int((time.monotonic() - started) * 1000)
    emit(record)


async def main():
    info(DRIVER, "asyncpg", asyncpg.__version__, "defaults: statement cache (statement_cache_size=100)")
    missing = [f for f in pgt_common.FEATURES if f not in CHECKS]
    expect(not missing, "no check for %s" % missing)
    for mode in MODES:
        for feature, fn in CHECKS.items():
            await run_check(mode, feature, fn)


if __name__ == "__main__":
    loop = asyncio.new_event_loop()
    loop.run_until_complete(main())
    # Not asyncio.run: it would wait for a hung check's task to end.
    sys.stdout.flush()
    os._exit(0)
