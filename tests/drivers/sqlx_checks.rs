//! sqlx (PostgreSQL, runtime-tokio, no TLS) through pgtenant: the common checks with
//! its own API. `sqlx::query` is persistent by default: each distinct SQL text is
//! prepared once per connection as a named statement and kept in its statement cache.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use sqlx::postgres::{PgConnection, PgListener};
use sqlx::{Connection, Row};

use crate::records::*;

const DRIVER: &str = "sqlx";

fn err(e: sqlx::Error) -> String {
    match e.as_database_error() {
        Some(db) => format!(
            "{} {}",
            db.code().map(|c| c.into_owned()).unwrap_or_default(),
            db.message()
        ),
        None => e.to_string(),
    }
}

fn code(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

async fn connect(m: Modes, mode: &str, tenant: &str) -> Result<PgConnection, String> {
    PgConnection::connect(&m.url(mode, tenant))
        .await
        .map_err(err)
}

async fn direct(m: Modes) -> Result<PgConnection, String> {
    PgConnection::connect(&format!(
        "postgres://postgres@127.0.0.1:{}/erp",
        m.direct_port
    ))
    .await
    .map_err(err)
}

async fn items(conn: &mut PgConnection) -> Result<Vec<String>, String> {
    let rows = sqlx::query("SELECT name FROM items ORDER BY id")
        .fetch_all(conn)
        .await
        .map_err(err)?;
    Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
}

async fn expect_items(conn: &mut PgConnection, want: &[&str], what: &str) -> Result<(), String> {
    let got = items(conn).await?;
    expect_eq(
        got.iter().map(String::as_str).collect::<Vec<_>>(),
        want.to_vec(),
        what,
    )
}

struct Noise {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), String>>>,
}

impl Noise {
    async fn start(m: Modes, mode: &str, count: usize) -> Result<Noise, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for i in 0..count {
            let tenant = if i % 4 == 3 { "globex" } else { "acme" };
            let mut conn = connect(m, mode, tenant).await?;
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    sqlx::query(PREPARED_SQL)
                        .bind(7i32)
                        .fetch_one(&mut conn)
                        .await
                        .map_err(err)?;
                }
                conn.close().await.map_err(err)
            }));
        }
        Ok(Noise { stop, tasks })
    }

    async fn finish(self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("background connection failed: {e}"))?;
        }
        Ok(())
    }
}

async fn check_connect(m: Modes, mode: &str) -> CheckResult {
    let mut conn = connect(m, mode, "acme").await?;
    let row = sqlx::query("SELECT current_database()::text, current_setting('search_path')")
        .fetch_one(&mut conn)
        .await
        .map_err(err)?;
    expect_eq(
        row.get::<String, _>(0).as_str(),
        "erp",
        "current_database()",
    )?;
    let path: String = row.get(1);
    ensure!(path.contains("tenant_acme"), "search_path is {path:?}");
    Ok(String::new())
}

async fn check_isolation(m: Modes, mode: &str) -> CheckResult {
    let mut acme = connect(m, mode, "acme").await?;
    let mut globex = connect(m, mode, "globex").await?;
    expect_items(&mut acme, ACME_ITEMS, "acme items").await?;
    expect_items(&mut globex, GLOBEX_ITEMS, "globex items").await?;
    for _ in 0..20 {
        let a: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
            .fetch_one(&mut acme)
            .await
            .map_err(err)?;
        let g: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
            .fetch_one(&mut globex)
            .await
            .map_err(err)?;
        expect_eq((a, g), (2, 3), "prepared counts (acme, globex)")?;
    }
    Ok(String::new())
}

async fn check_prepared(m: Modes, mode: &str) -> CheckResult {
    let mut conn = connect(m, mode, "acme").await?;
    let noise = Noise::start(m, mode, 4).await?;
    let mut pids = HashSet::new();
    for i in 0..PREPARED_RUNS {
        let row = sqlx::query(PREPARED_SQL)
            .bind(i)
            .fetch_one(&mut conn)
            .await
            .map_err(err)?;
        expect_eq(row.get::<i32, _>(0), i + 1, "result")?;
        expect_eq(row.get::<i64, _>(1), ACME_ITEMS.len() as i64, "items seen")?;
        pids.insert(row.get::<i32, _>(2));
    }
    noise.finish().await?;
    ensure!(
        conn.cached_statements_size() >= 1,
        "sqlx did not cache the statement"
    );
    switch_detail(mode, &pids, PREPARED_RUNS as usize)
}

async fn check_savepoint(m: Modes, mode: &str) -> CheckResult {
    let table = format!("tx_{mode}");
    let mut conn = connect(m, mode, "acme").await?;
    sqlx::query(&format!("DELETE FROM {table} WHERE id < 1000"))
        .execute(&mut conn)
        .await
        .map_err(err)?;
    let mut tx = conn.begin().await.map_err(err)?;
    sqlx::query(&format!("INSERT INTO {table} VALUES (1, 'kept')"))
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    {
        let mut sp = tx.begin().await.map_err(err)?; // SAVEPOINT
        sqlx::query(&format!("INSERT INTO {table} VALUES (2, 'rolled back')"))
            .execute(&mut *sp)
            .await
            .map_err(err)?;
        let e = sqlx::query("SELECT 1/0")
            .execute(&mut *sp)
            .await
            .err()
            .ok_or("no error for SELECT 1/0")?;
        expect_eq(code(&e).as_deref(), Some("22012"), "error code")?;
        sp.rollback().await.map_err(err)?;
    }
    sqlx::query(&format!(
        "INSERT INTO {table} VALUES (3, 'after the savepoint')"
    ))
    .execute(&mut *tx)
    .await
    .map_err(err)?;
    tx.commit().await.map_err(err)?;
    let ids: Vec<i32> = sqlx::query_scalar(&format!(
        "SELECT id FROM {table} WHERE id < 1000 ORDER BY id"
    ))
    .fetch_all(&mut conn)
    .await
    .map_err(err)?;
    expect_eq(ids, vec![1, 3], "rows after the transaction")?;
    Ok(String::new())
}

async fn check_error_rollback(m: Modes, mode: &str) -> CheckResult {
    let table = format!("tx_{mode}");
    let mut conn = connect(m, mode, "acme").await?;
    let mut tx = conn.begin().await.map_err(err)?;
    sqlx::query(&format!(
        "INSERT INTO {table} VALUES (10, 'never committed')"
    ))
    .execute(&mut *tx)
    .await
    .map_err(err)?;
    let e = sqlx::query("SELECT * FROM no_such_table")
        .fetch_all(&mut *tx)
        .await
        .err()
        .ok_or("no error for a missing table")?;
    expect_eq(code(&e).as_deref(), Some("42P01"), "error code")?;
    let e = sqlx::query("SELECT 1")
        .fetch_all(&mut *tx)
        .await
        .err()
        .ok_or("an aborted transaction accepted a query")?;
    expect_eq(
        code(&e).as_deref(),
        Some("25P02"),
        "error code in the aborted transaction",
    )?;
    tx.rollback().await.map_err(err)?;
    for _ in 0..5 {
        expect_items(&mut conn, ACME_ITEMS, "items after ROLLBACK").await?;
    }
    let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE id = 10"))
        .fetch_one(&mut conn)
        .await
        .map_err(err)?;
    expect_eq(n, 0, "rows of the rolled back transaction")?;
    Ok(String::new())
}

async fn server_md5(direct: &mut PgConnection, data: &[u8]) -> Result<String, String> {
    sqlx::query_scalar("SELECT md5($1::bytea)")
        .bind(data)
        .fetch_one(direct)
        .await
        .map_err(err)
}

async fn copy_checksum(conn: &mut PgConnection, table: &str) -> Result<(i64, String), String> {
    let row = sqlx::query(&copy_check_sql(table))
        .fetch_one(conn)
        .await
        .map_err(err)?;
    Ok((row.get(0), row.get(1)))
}

async fn check_copy_in(m: Modes, mode: &str) -> CheckResult {
    let table = format!("copy_{mode}");
    let data = copy_data();
    let mut conn = connect(m, mode, "acme").await?;
    sqlx::query(&format!("TRUNCATE {table}"))
        .execute(&mut conn)
        .await
        .map_err(err)?;
    let mut copy = conn
        .copy_in_raw(&format!("COPY {table} (id, name) FROM STDIN"))
        .await
        .map_err(err)?;
    for chunk in data.as_bytes().chunks(64 * 1024) {
        copy.send(chunk).await.map_err(err)?;
    }
    let rows = copy.finish().await.map_err(err)?;
    expect_eq(rows, COPY_ROWS as u64, "COPY row count")?;
    let mut direct = direct(m).await?;
    let want = (COPY_ROWS, server_md5(&mut direct, data.as_bytes()).await?);
    expect_eq(
        copy_checksum(&mut conn, &table).await?,
        want.clone(),
        "count and checksum through the proxy",
    )?;
    expect_eq(
        copy_checksum(&mut direct, &format!("tenant_acme.{table}")).await?,
        want,
        "count and checksum on the server",
    )?;
    Ok(String::new())
}

async fn check_copy_out(m: Modes, mode: &str) -> CheckResult {
    let mut conn = connect(m, mode, "acme").await?;
    let mut data = Vec::new();
    {
        let mut stream = conn.copy_out_raw(COPY_OUT_SQL).await.map_err(err)?;
        while let Some(chunk) = stream.next().await {
            data.extend_from_slice(&chunk.map_err(err)?);
        }
    }
    let mut direct = direct(m).await?;
    expect_eq(
        server_md5(&mut direct, &data).await?,
        server_md5(&mut direct, copy_data().as_bytes()).await?,
        "checksum of COPY TO STDOUT",
    )?;
    expect_items(&mut conn, ACME_ITEMS, "items after COPY").await?;
    Ok(String::new())
}

async fn next_notification(listener: &mut PgListener) -> Result<String, String> {
    match tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv()).await {
        Ok(Ok(n)) => Ok(n.payload().to_string()),
        Ok(Err(e)) => Err(err(e)),
        Err(_) => Err("no notification within 5 s".into()),
    }
}

async fn check_listen_notify(m: Modes, mode: &str) -> CheckResult {
    let channel = format!("jobs_{mode}");
    let mut listener = PgListener::connect(&m.url(mode, "acme"))
        .await
        .map_err(err)?;
    listener.listen(&channel).await.map_err(err)?;
    let mut notifier = connect(m, mode, "acme").await?;
    let noise = Noise::start(m, mode, 3).await?;
    sqlx::query(&format!("NOTIFY {channel}, 'hello from {mode}'"))
        .execute(&mut notifier)
        .await
        .map_err(err)?;
    expect_eq(
        next_notification(&mut listener).await?,
        format!("hello from {mode}"),
        "notification",
    )?;
    let mut pids = HashSet::new();
    for _ in 0..20 {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut listener)
            .await
            .map_err(err)?;
        pids.insert(pid);
    }
    noise.finish().await?;
    expect_eq(
        pids.len(),
        1,
        "server connections the listener used after LISTEN",
    )?;
    sqlx::query("SELECT pg_notify($1, 'again')")
        .bind(&channel)
        .execute(&mut notifier)
        .await
        .map_err(err)?;
    expect_eq(
        next_notification(&mut listener).await?,
        "again".to_string(),
        "second notification",
    )?;
    Ok(if mode == "transaction" {
        "LISTEN pins the client to its server connection for the rest of its session".into()
    } else {
        String::new()
    })
}

async fn check_bytea(m: Modes, mode: &str) -> CheckResult {
    let data: Vec<u8> = (0..1 << 20).map(|_| rand::random::<u8>()).collect();
    let mut conn = connect(m, mode, "acme").await?;
    let row = sqlx::query("SELECT md5(b), length(b), b FROM (SELECT $1::bytea AS b) s")
        .bind(&data)
        .fetch_one(&mut conn)
        .await
        .map_err(err)?;
    let mut direct = direct(m).await?;
    expect_eq(
        (row.get::<String, _>(0), row.get::<i32, _>(1)),
        (server_md5(&mut direct, &data).await?, data.len() as i32),
        "md5 and length on the server",
    )?;
    ensure!(
        row.get::<Vec<u8>, _>(2) == data,
        "the bytea came back different"
    );
    Ok(String::new())
}

async fn check_rows(m: Modes, mode: &str) -> CheckResult {
    let mut conn = connect(m, mode, "acme").await?;
    let rows = sqlx::query("SELECT g, 'row ' || g FROM generate_series(1, $1::int) g")
        .bind(RESULT_ROWS as i32)
        .fetch_all(&mut conn)
        .await
        .map_err(err)?;
    expect_eq(rows.len() as i64, RESULT_ROWS, "rows")?;
    let sum: i64 = rows.iter().map(|r| r.get::<i32, _>(0) as i64).sum();
    expect_eq(sum, RESULT_ROWS * (RESULT_ROWS + 1) / 2, "sum")?;
    expect_eq(
        rows.last().map(|r| r.get::<String, _>(1)),
        Some(format!("row {RESULT_ROWS}")),
        "last row",
    )?;
    Ok(String::new())
}

async fn check_concurrency(m: Modes, mode: &str) -> CheckResult {
    let mut direct = direct(m).await?;
    sqlx::query("UPDATE tenant_acme.counters SET n = 0 WHERE mode = $1")
        .bind(mode)
        .execute(&mut direct)
        .await
        .map_err(err)?;
    sqlx::query("DELETE FROM tenant_acme.events WHERE mode = $1")
        .bind(mode)
        .execute(&mut direct)
        .await
        .map_err(err)?;
    let barrier = Arc::new(tokio::sync::Barrier::new(CONCURRENT_CLIENTS));
    let mut tasks = Vec::new();
    for k in 0..CONCURRENT_CLIENTS as i32 {
        let barrier = barrier.clone();
        let mode = mode.to_string();
        tasks.push(tokio::spawn(async move {
            let connected = connect(m, &mode, "acme").await;
            barrier.wait().await;
            let mut conn = connected?;
            for seq in 0..TRANSACTIONS_PER_CLIENT {
                let mut tx = conn.begin().await.map_err(err)?;
                sqlx::query("UPDATE counters SET n = n + 1 WHERE mode = $1")
                    .bind(&mode)
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
                sqlx::query("INSERT INTO events VALUES ($1, $2, $3)")
                    .bind(&mode)
                    .bind(k)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
                tx.commit().await.map_err(err)?;
            }
            conn.close().await.map_err(err)
        }));
    }
    let mut failures = Vec::new();
    for (k, task) in tasks.into_iter().enumerate() {
        if let Err(e) = task.await.map_err(|e| e.to_string()).and_then(|r| r) {
            failures.push(format!("client {k}: {e}"));
        }
    }
    ensure!(
        failures.is_empty(),
        "{}",
        failures[..failures.len().min(3)].join("; ")
    );
    let total = (CONCURRENT_CLIENTS as i64) * TRANSACTIONS_PER_CLIENT as i64;
    let n: i64 = sqlx::query_scalar("SELECT n FROM tenant_acme.counters WHERE mode = $1")
        .bind(mode)
        .fetch_one(&mut direct)
        .await
        .map_err(err)?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM tenant_acme.events WHERE mode = $1")
        .bind(mode)
        .fetch_one(&mut direct)
        .await
        .map_err(err)?;
    expect_eq((n, events), (total, total), "counter and events")?;
    Ok(String::new())
}

pub async fn run(m: Modes) -> Vec<serde_json::Value> {
    let mut r = Records::new(DRIVER);
    r.info(
        "sqlx",
        &locked_version("sqlx-postgres"),
        "defaults: persistent (named, cached) statements for sqlx::query",
    );
    for mode in MODES {
        r.check(mode, "connect", check_connect(m, mode)).await;
        r.check(mode, "isolation", check_isolation(m, mode)).await;
        r.check(mode, "prepared", check_prepared(m, mode)).await;
        r.check(mode, "savepoint", check_savepoint(m, mode)).await;
        r.check(mode, "error_rollback", check_error_rollback(m, mode))
            .await;
        r.check(mode, "copy_in", check_copy_in(m, mode)).await;
        r.check(mode, "copy_out", check_copy_out(m, mode)).await;
        r.check(mode, "listen_notify", check_listen_notify(m, mode))
            .await;
        r.na(
            mode,
            "cancel",
            "sqlx has no API to cancel a running query (it never sends a CancelRequest)",
        );
        r.check(mode, "bytea_1mb", check_bytea(m, mode)).await;
        r.check(mode, "rows_1e5", check_rows(m, mode)).await;
        r.check(mode, "concurrency", check_concurrency(m, mode))
            .await;
    }
    r.out
}
