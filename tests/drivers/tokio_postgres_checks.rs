//! tokio-postgres through pgtenant: the common checks, written with its own API
//! (prepare/query, transaction/savepoint, copy_in/copy_out, cancel tokens).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};

use crate::common;
use crate::records::*;

const DRIVER: &str = "tokio-postgres";

fn err(e: tokio_postgres::Error) -> String {
    common::describe(&e)
}

fn config(modes: Modes, mode: &str, tenant: &str) -> Config {
    let mut config = Config::new();
    config
        .host("127.0.0.1")
        .port(modes.port(mode))
        .user("app")
        .dbname(tenant)
        .connect_timeout(std::time::Duration::from_secs(10));
    config
}

async fn connect(modes: Modes, mode: &str, tenant: &str) -> Result<Client, String> {
    common::connect(&config(modes, mode, tenant))
        .await
        .map_err(err)
}

async fn direct(modes: Modes) -> Result<Client, String> {
    let mut config = Config::new();
    config
        .host("127.0.0.1")
        .port(modes.direct_port)
        .user("postgres")
        .dbname("erp");
    common::connect(&config).await.map_err(err)
}

async fn items(client: &Client) -> Result<Vec<String>, String> {
    let rows = client
        .query("SELECT name FROM items ORDER BY id", &[])
        .await
        .map_err(err)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn expect_items(client: &Client, want: &[&str], what: &str) -> Result<(), String> {
    let got = items(client).await?;
    expect_eq(
        got.iter().map(String::as_str).collect::<Vec<_>>(),
        want.to_vec(),
        what,
    )
}

/// Other clients running the prepared statement until dropped (3 acme, 1 globex).
struct Noise {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), String>>>,
}

impl Noise {
    async fn start(modes: Modes, mode: &str, count: usize) -> Result<Noise, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for i in 0..count {
            let tenant = if i % 4 == 3 { "globex" } else { "acme" };
            let client = connect(modes, mode, tenant).await?;
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let statement = client.prepare(PREPARED_SQL).await.map_err(err)?;
                while !stop.load(Ordering::Relaxed) {
                    client.query_one(&statement, &[&7i32]).await.map_err(err)?;
                }
                Ok(())
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
    let client = connect(m, mode, "acme").await?;
    let row = client
        .query_one(
            "SELECT current_database(), current_setting('search_path')",
            &[],
        )
        .await
        .map_err(err)?;
    expect_eq(
        row.get::<_, String>(0).as_str(),
        "erp",
        "current_database()",
    )?;
    let path: String = row.get(1);
    ensure!(path.contains("tenant_acme"), "search_path is {path:?}");
    Ok(String::new())
}

async fn check_isolation(m: Modes, mode: &str) -> CheckResult {
    let acme = connect(m, mode, "acme").await?;
    let globex = connect(m, mode, "globex").await?;
    expect_items(&acme, ACME_ITEMS, "acme items").await?;
    expect_items(&globex, GLOBEX_ITEMS, "globex items").await?;
    let a = acme
        .prepare("SELECT count(*) FROM items")
        .await
        .map_err(err)?;
    let g = globex
        .prepare("SELECT count(*) FROM items")
        .await
        .map_err(err)?;
    for _ in 0..20 {
        let na: i64 = acme.query_one(&a, &[]).await.map_err(err)?.get(0);
        let ng: i64 = globex.query_one(&g, &[]).await.map_err(err)?.get(0);
        expect_eq((na, ng), (2, 3), "prepared counts (acme, globex)")?;
    }
    Ok(String::new())
}

async fn check_prepared(m: Modes, mode: &str) -> CheckResult {
    let client = connect(m, mode, "acme").await?;
    let noise = Noise::start(m, mode, 4).await?;
    let statement = client.prepare(PREPARED_SQL).await.map_err(err)?;
    let mut pids = HashSet::new();
    for i in 0..PREPARED_RUNS {
        let row = client.query_one(&statement, &[&i]).await.map_err(err)?;
        expect_eq(row.get::<_, i32>(0), i + 1, "result")?;
        expect_eq(row.get::<_, i64>(1), ACME_ITEMS.len() as i64, "items seen")?;
        pids.insert(row.get::<_, i32>(2));
    }
    noise.finish().await?;
    switch_detail(mode, &pids, PREPARED_RUNS as usize)
}

async fn check_savepoint(m: Modes, mode: &str) -> CheckResult {
    let table = format!("tx_{mode}");
    let mut client = connect(m, mode, "acme").await?;
    client
        .batch_execute(&format!("DELETE FROM {table} WHERE id < 1000"))
        .await
        .map_err(err)?;
    let mut tx = client.transaction().await.map_err(err)?;
    tx.execute(&format!("INSERT INTO {table} VALUES (1, 'kept')"), &[])
        .await
        .map_err(err)?;
    {
        let sp = tx.savepoint("sp").await.map_err(err)?;
        sp.execute(
            &format!("INSERT INTO {table} VALUES (2, 'rolled back')"),
            &[],
        )
        .await
        .map_err(err)?;
        let e = sp
            .execute("SELECT 1/0", &[])
            .await
            .err()
            .ok_or("no error for SELECT 1/0")?;
        expect_eq(e.code(), Some(&SqlState::DIVISION_BY_ZERO), "error code")?;
        sp.rollback().await.map_err(err)?;
    }
    tx.execute(
        &format!("INSERT INTO {table} VALUES (3, 'after the savepoint')"),
        &[],
    )
    .await
    .map_err(err)?;
    tx.commit().await.map_err(err)?;
    let ids: Vec<i32> = client
        .query(
            &format!("SELECT id FROM {table} WHERE id < 1000 ORDER BY id"),
            &[],
        )
        .await
        .map_err(err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    expect_eq(ids, vec![1, 3], "rows after the transaction")?;
    Ok(String::new())
}

async fn check_error_rollback(m: Modes, mode: &str) -> CheckResult {
    let table = format!("tx_{mode}");
    let client = connect(m, mode, "acme").await?;
    client
        .batch_execute(&format!(
            "BEGIN; INSERT INTO {table} VALUES (10, 'never committed')"
        ))
        .await
        .map_err(err)?;
    let e = client
        .query("SELECT * FROM no_such_table", &[])
        .await
        .err()
        .ok_or("no error for a missing table")?;
    expect_eq(e.code(), Some(&SqlState::UNDEFINED_TABLE), "error code")?;
    let e = client
        .query("SELECT 1", &[])
        .await
        .err()
        .ok_or("an aborted transaction accepted a query")?;
    expect_eq(
        e.code(),
        Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
        "error code in the aborted transaction",
    )?;
    client.batch_execute("ROLLBACK").await.map_err(err)?;
    for _ in 0..5 {
        expect_items(&client, ACME_ITEMS, "items after ROLLBACK").await?;
    }
    let n: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table} WHERE id = 10"), &[])
        .await
        .map_err(err)?
        .get(0);
    expect_eq(n, 0, "rows of the rolled back transaction")?;
    Ok(String::new())
}

/// md5 of `data` as the server computes it (the reference checksum).
async fn server_md5(direct: &Client, data: &[u8]) -> Result<String, String> {
    Ok(direct
        .query_one("SELECT md5($1::bytea)", &[&data])
        .await
        .map_err(err)?
        .get(0))
}

async fn check_copy_in(m: Modes, mode: &str) -> CheckResult {
    let table = format!("copy_{mode}");
    let data = copy_data();
    let client = connect(m, mode, "acme").await?;
    client
        .batch_execute(&format!("TRUNCATE {table}"))
        .await
        .map_err(err)?;
    let sink = client
        .copy_in::<_, Bytes>(&format!("COPY {table} (id, name) FROM STDIN"))
        .await
        .map_err(err)?;
    futures_util::pin_mut!(sink);
    for chunk in data.as_bytes().chunks(64 * 1024) {
        sink.send(Bytes::copy_from_slice(chunk))
            .await
            .map_err(err)?;
    }
    let rows = sink.finish().await.map_err(err)?;
    expect_eq(rows, COPY_ROWS as u64, "COPY row count")?;
    let direct = direct(m).await?;
    let want = (COPY_ROWS, server_md5(&direct, data.as_bytes()).await?);
    let row = client
        .query_one(&copy_check_sql(&table), &[])
        .await
        .map_err(err)?;
    expect_eq(
        (row.get::<_, i64>(0), row.get::<_, String>(1)),
        want.clone(),
        "count and checksum through the proxy",
    )?;
    let row = direct
        .query_one(&copy_check_sql(&format!("tenant_acme.{table}")), &[])
        .await
        .map_err(err)?;
    expect_eq(
        (row.get::<_, i64>(0), row.get::<_, String>(1)),
        want,
        "count and checksum on the server",
    )?;
    Ok(String::new())
}

async fn check_copy_out(m: Modes, mode: &str) -> CheckResult {
    let client = connect(m, mode, "acme").await?;
    let stream = client.copy_out(COPY_OUT_SQL).await.map_err(err)?;
    futures_util::pin_mut!(stream);
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk.map_err(err)?);
    }
    let direct = direct(m).await?;
    expect_eq(
        server_md5(&direct, &data).await?,
        server_md5(&direct, copy_data().as_bytes()).await?,
        "checksum of COPY TO STDOUT",
    )?;
    expect_items(&client, ACME_ITEMS, "items after COPY").await?;
    Ok(String::new())
}

async fn next_notification(
    messages: &mut tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>,
) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, messages.recv()).await {
            Ok(Some(AsyncMessage::Notification(n))) => return Ok(n.payload().to_string()),
            Ok(Some(_)) => continue,
            Ok(None) => return Err("the listener's connection closed".into()),
            Err(_) => return Err("no notification within 5 s".into()),
        }
    }
}

async fn check_listen_notify(m: Modes, mode: &str) -> CheckResult {
    let channel = format!("jobs_{mode}");
    let (listener, mut messages) = common::connect_with_messages(&config(m, mode, "acme"))
        .await
        .map_err(err)?;
    let notifier = connect(m, mode, "acme").await?;
    listener
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .map_err(err)?;
    let noise = Noise::start(m, mode, 3).await?;
    notifier
        .batch_execute(&format!("NOTIFY {channel}, 'hello from {mode}'"))
        .await
        .map_err(err)?;
    expect_eq(
        next_notification(&mut messages).await?,
        format!("hello from {mode}"),
        "notification",
    )?;
    let mut pids = HashSet::new();
    for _ in 0..20 {
        let pid: i32 = listener
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(err)?
            .get(0);
        pids.insert(pid);
    }
    noise.finish().await?;
    expect_eq(
        pids.len(),
        1,
        "server connections the listener used after LISTEN",
    )?;
    notifier
        .execute("SELECT pg_notify($1, 'again')", &[&channel])
        .await
        .map_err(err)?;
    expect_eq(
        next_notification(&mut messages).await?,
        "again".to_string(),
        "second notification",
    )?;
    Ok(if mode == "transaction" {
        "LISTEN pins the client to its server connection for the rest of its session".into()
    } else {
        String::new()
    })
}

async fn check_cancel(m: Modes, mode: &str) -> CheckResult {
    let client = connect(m, mode, "acme").await?;
    let noise = Noise::start(m, mode, 2).await?;
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(CANCEL_AFTER).await;
        token.cancel_query(NoTls).await
    });
    let started = Instant::now();
    let result = client.simple_query("SELECT pg_sleep(10)").await;
    let elapsed = started.elapsed();
    canceller
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("sending the cancel request: {}", err(e)))?;
    let e = result.err().ok_or("pg_sleep(10) was not cancelled")?;
    expect_eq(e.code(), Some(&SqlState::QUERY_CANCELED), "error code")?;
    ensure!(elapsed < CANCEL_LIMIT, "cancel took {elapsed:?}");
    expect_items(&client, ACME_ITEMS, "items after the cancel").await?;
    noise.finish().await?;
    Ok("57014 via CancelToken::cancel_query".into())
}

async fn check_bytea(m: Modes, mode: &str) -> CheckResult {
    let data: Vec<u8> = (0..1 << 20).map(|_| rand::random::<u8>()).collect();
    let client = connect(m, mode, "acme").await?;
    let row = client
        .query_one(
            "SELECT md5(b), length(b), b FROM (SELECT $1::bytea AS b) s",
            &[&data],
        )
        .await
        .map_err(err)?;
    let direct = direct(m).await?;
    expect_eq(
        (row.get::<_, String>(0), row.get::<_, i32>(1)),
        (server_md5(&direct, &data).await?, data.len() as i32),
        "md5 and length on the server",
    )?;
    ensure!(
        row.get::<_, Vec<u8>>(2) == data,
        "the bytea came back different"
    );
    Ok(String::new())
}

async fn check_rows(m: Modes, mode: &str) -> CheckResult {
    let client = connect(m, mode, "acme").await?;
    let rows = client
        .query(
            "SELECT g, 'row ' || g FROM generate_series(1, $1::int) g",
            &[&(RESULT_ROWS as i32)],
        )
        .await
        .map_err(err)?;
    expect_eq(rows.len() as i64, RESULT_ROWS, "rows")?;
    let sum: i64 = rows.iter().map(|r| r.get::<_, i32>(0) as i64).sum();
    expect_eq(sum, RESULT_ROWS * (RESULT_ROWS + 1) / 2, "sum")?;
    expect_eq(
        rows.last().map(|r| r.get::<_, String>(1)),
        Some(format!("row {RESULT_ROWS}")),
        "last row",
    )?;
    Ok(String::new())
}

async fn check_concurrency(m: Modes, mode: &str) -> CheckResult {
    let direct = direct(m).await?;
    direct
        .execute(
            "UPDATE tenant_acme.counters SET n = 0 WHERE mode = $1",
            &[&mode],
        )
        .await
        .map_err(err)?;
    direct
        .execute("DELETE FROM tenant_acme.events WHERE mode = $1", &[&mode])
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
            let mut client = connected?;
            for seq in 0..TRANSACTIONS_PER_CLIENT {
                let tx = client.transaction().await.map_err(err)?;
                tx.execute("UPDATE counters SET n = n + 1 WHERE mode = $1", &[&mode])
                    .await
                    .map_err(err)?;
                tx.execute("INSERT INTO events VALUES ($1, $2, $3)", &[&mode, &k, &seq])
                    .await
                    .map_err(err)?;
                tx.commit().await.map_err(err)?;
            }
            Ok::<_, String>(())
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
    let n: i64 = direct
        .query_one(
            "SELECT n FROM tenant_acme.counters WHERE mode = $1",
            &[&mode],
        )
        .await
        .map_err(err)?
        .get(0);
    let events: i64 = direct
        .query_one(
            "SELECT count(*) FROM tenant_acme.events WHERE mode = $1",
            &[&mode],
        )
        .await
        .map_err(err)?
        .get(0);
    expect_eq((n, events), (total, total), "counter and events")?;
    Ok(String::new())
}

pub async fn run(m: Modes) -> Vec<serde_json::Value> {
    let mut r = Records::new(DRIVER);
    r.info(
        "tokio-postgres",
        &locked_version("tokio-postgres"),
        "defaults: every query is a named statement (prepared, then closed when dropped)",
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
        r.check(mode, "cancel", check_cancel(m, mode)).await;
        r.check(mode, "bytea_1mb", check_bytea(m, mode)).await;
        r.check(mode, "rows_1e5", check_rows(m, mode)).await;
        r.check(mode, "concurrency", check_concurrency(m, mode))
            .await;
    }
    r.out
}
