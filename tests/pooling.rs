//! Per-tenant pools and transaction mode against real clusters: pool sizes and host
//! budgets hold (counted in pg_stat_activity), prepared statements and client settings
//! survive server switches, and nothing a client leaves behind reaches the next one.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgtenant::cluster::ClusterOptions;
use tokio_postgres::error::SqlState;

/// One host with database `erp` (tenants acme, globex) in transaction mode.
fn txn_env(pool_size: usize) -> EnvBuilder {
    EnvBuilder::erp().settings(&format!(
        "[proxy]\npool_mode = \"transaction\"\n[pool]\npool_size = {pool_size}\n"
    ))
}

/// Samples the number of server connections to `db` until stopped; returns the max.
fn watch_backends(
    env: &Env,
    host: &str,
    db: &str,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<i64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let max = Arc::new(AtomicI64::new(0));
    let port = env.host(host).port();
    let db = db.to_string();
    let flag = stop.clone();
    let handle = tokio::spawn(async move {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user("postgres")
            .dbname("postgres");
        let client = connect(&config).await.expect("monitor connection");
        while !flag.load(Ordering::Relaxed) {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                     AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                    &[&db],
                )
                .await
                .expect("sampling backends")
                .get(0);
            max.fetch_max(n, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        max.load(Ordering::Relaxed)
    });
    (stop, handle)
}

async fn stop_watch((stop, handle): (Arc<AtomicBool>, tokio::task::JoinHandle<i64>)) -> i64 {
    stop.store(true, Ordering::Relaxed);
    handle.await.expect("monitor task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_200_clients_share_10_servers_in_every_query_mode() {
    let env = EnvBuilder::new()
        .host("pg-a")
        .seed("postgres", "CREATE DATABASE benchdb;")
        .registry(
            r#"
            [hosts.pg-a]
            address = "${pg-a}"
            max_connections = 50
            [tenants.bench]
            host = "pg-a"
            database = "benchdb"
            backend_user = "postgres"
            "#,
        )
        .settings("[proxy]\npool_mode = \"transaction\"\n[pool]\npool_size = 10\n")
        .start()
        .await;
    let init = tokio::process::Command::new("pgbench")
        .args([
            "-i",
            "-q",
            "-s",
            "1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
        ])
        .arg(env.host("pg-a").port().to_string())
        .arg("benchdb")
        .output()
        .await
        .expect("pgbench -i");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );

    for mode in ["simple", "extended", "prepared"] {
        let watch = watch_backends(&env, "pg-a", "benchdb");
        let out = tokio::process::Command::new("pgbench")
            .args([
                "-c",
                "200",
                "-j",
                "2",
                "-T",
                "3",
                "-M",
                mode,
                "-h",
                "127.0.0.1",
                "-U",
                "app",
                "-p",
            ])
            .arg(env.addr().port().to_string())
            .arg("bench")
            .output()
            .await
            .expect("pgbench");
        let max = stop_watch(watch).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "pgbench -M {mode} failed:\n{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains("number of failed transactions: 0 (0.000%)"),
            "-M {mode}:\n{stdout}\n{stderr}"
        );
        assert!(!stderr.contains("error"), "-M {mode}: {stderr}");
        let processed = stdout
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(
            processed > 200,
            "-M {mode} processed only {processed}:\n{stdout}"
        );
        assert!(
            max <= 10,
            "-M {mode}: {max} server connections for pool_size 10"
        );
        assert!(
            max >= 1,
            "-M {mode}: the monitor saw no server connection at all"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_survive_switching_servers() {
    let env = txn_env(3).start().await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let client = env
            .connect("app", if i % 2 == 0 { "acme" } else { "globex" })
            .await;
        tasks.push(tokio::spawn(async move {
            let statement = client
                .prepare("SELECT $1::int + 1, pg_backend_pid(), (SELECT count(*) FROM items)")
                .await
                .expect("prepare");
            let mut pids = HashSet::new();
            for n in 0..300i32 {
                let row = client.query_one(&statement, &[&n]).await.expect("execute");
                assert_eq!(row.get::<_, i32>(0), n + 1);
                let expected = if i % 2 == 0 {
                    ACME_ITEMS.len()
                } else {
                    GLOBEX_ITEMS.len()
                };
                assert_eq!(
                    row.get::<_, i64>(2),
                    expected as i64,
                    "client {i} saw another tenant"
                );
                pids.insert(row.get::<_, i32>(1));
            }
            pids.len()
        }));
    }
    let mut switched = 0;
    for task in tasks {
        if task.await.expect("client task") > 1 {
            switched += 1;
        }
    }
    assert!(
        switched > 0,
        "no client ever ran on a second server; the test proves nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_keeps_its_settings_across_switches() {
    let env = txn_env(2).start().await;
    let zones = ["UTC", "Asia/Tokyo", "America/New_York", "Europe/Paris"];
    let mut tasks = Vec::new();
    for (i, zone) in zones.iter().enumerate() {
        let mut config = env.config("app", Some("acme"));
        config.application_name(format!("client-{i}"));
        if i % 2 == 0 {
            config.options(format!("-c TimeZone={zone}"));
        }
        let client = connect(&config).await.expect("connect");
        if i % 2 == 1 {
            client
                .batch_execute(&format!("SET TimeZone = '{zone}'"))
                .await
                .expect("SET");
        }
        let zone = zone.to_string();
        tasks.push(tokio::spawn(async move {
            let mut pids = HashSet::new();
            for _ in 0..100 {
                let row = client
                    .query_one(
                        "SELECT current_setting('TimeZone'), current_setting('application_name'), pg_backend_pid()",
                        &[],
                    )
                    .await
                    .expect("query");
                assert_eq!(row.get::<_, String>(0), zone);
                assert_eq!(row.get::<_, String>(1), format!("client-{i}"));
                pids.insert(row.get::<_, i32>(2));
            }
            pids.len()
        }));
    }
    let mut switched = false;
    for task in tasks {
        switched |= task.await.expect("client task") > 1;
    }
    assert!(
        switched,
        "no client ran on a second server; the test proves nothing"
    );
}

/// Sends a transaction that takes a lock, then drops the socket without Terminate.
async fn abandon_transaction(env: &Env) {
    let mut raw = Raw::acme(env.addr()).await;
    raw.send(&query_message(
        "BEGIN; UPDATE items SET name = 'locked' WHERE id = 1; SELECT pg_advisory_xact_lock(42);",
    ))
    .await;
    let replies = raw.read_until_ready().await;
    assert_eq!(
        replies.last().map(|m| m.body.clone()),
        Some(b"T".to_vec()),
        "{replies:?}"
    );
    drop(raw);
}

async fn assert_nothing_left_behind(env: &Env) {
    let direct = env.direct("pg-a", "erp").await;
    let clean = eventually(Duration::from_secs(5), || async {
        let open: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'erp' AND state LIKE 'idle in transaction%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let locks: i64 = direct
            .query_one("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'", &[])
            .await
            .unwrap()
            .get(0);
        (open == 0 && locks == 0).then_some(())
    })
    .await;
    assert!(
        clean.is_some(),
        "an abandoned transaction or its locks stayed open"
    );
    // The row is not locked and was not changed.
    let client = env.connect("app", "acme").await;
    client
        .batch_execute("SET lock_timeout = '1s'")
        .await
        .unwrap();
    client
        .batch_execute("BEGIN; UPDATE items SET name = name WHERE id = 1; COMMIT")
        .await
        .unwrap_or_else(|e| panic!("row still locked: {}", describe(&e)));
    assert_eq!(items(&client).await, ACME_ITEMS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_client_leaves_no_transaction_or_lock_transaction_mode() {
    let env = txn_env(1).start().await;
    abandon_transaction(&env).await;
    assert_nothing_left_behind(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_client_leaves_no_transaction_or_lock_session_mode() {
    let env = EnvBuilder::erp()
        .settings("[pool]\npool_size = 1\n")
        .start()
        .await;
    abandon_transaction(&env).await;
    assert_nothing_left_behind(&env).await;
}

/// Three tenants, pool_size 3 each, on a host whose budget is 4.
fn three_tenants_small_host(mode: &str) -> EnvBuilder {
    EnvBuilder::erp()
        .seed(
            "erp",
            "CREATE SCHEMA tenant_initech AUTHORIZATION app;
             SET ROLE app;
             CREATE TABLE tenant_initech.items (id int PRIMARY KEY, name text);
             INSERT INTO tenant_initech.items VALUES (1, 'initech stapler');",
        )
        .registry(&ERP_REGISTRY.replace("max_connections = 50", "max_connections = 4"))
        .registry_extra(
            r#"
            [tenants.initech]
            host = "pg-a"
            database = "erp"
            search_path = ["tenant_initech"]
            backend_user = "app"
            "#,
        )
        .settings(&format!(
            "[proxy]\npool_mode = \"{mode}\"\n[pool]\npool_size = 3\ncheckout_timeout = \"3s\"\n"
        ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_competing_on_a_small_host_stay_within_its_budget() {
    let env = three_tenants_small_host("transaction").start().await;
    let watch = watch_backends(&env, "pg-a", "erp");
    let mut tasks = Vec::new();
    for tenant in ["acme", "globex", "initech"] {
        for _ in 0..10 {
            let client = env.connect("app", tenant).await;
            tasks.push(tokio::spawn(async move {
                for _ in 0..50 {
                    let n: i64 = client
                        .query_one("SELECT count(*) FROM items", &[])
                        .await
                        .expect("query")
                        .get(0);
                    assert!(n >= 1);
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("every client finishes");
    }
    let max = stop_watch(watch).await;
    assert!(max <= 4, "{max} server connections on a host with budget 4");
    assert!(
        env.server()
            .app()
            .pools
            .open_connections(&env.host_address("pg-a"))
            <= 4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_host_closes_another_tenants_idle_connection_first() {
    let env = three_tenants_small_host("session").start().await;
    // acme leaves three idle server connections behind: the host has one to spare.
    let acme: Vec<_> =
        futures_util::future::join_all((0..3).map(|_| env.connect("app", "acme"))).await;
    drop(acme);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // globex needs three at once: two must come from closing acme's idle ones, not
    // from waiting out checkout_timeout.
    let started = std::time::Instant::now();
    let globex =
        futures_util::future::join_all((0..3).map(|_| env.try_connect("app", "globex"))).await;
    for client in &globex {
        let client = client.as_ref().map_err(describe).expect("globex connects");
        assert_eq!(items(client).await, GLOBEX_ITEMS);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "globex waited for the pool timeout"
    );
    assert!(env.backends("pg-a", "erp").await <= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_wait_timeout_is_53300_naming_tenant_and_size() {
    let env = EnvBuilder::erp()
        .settings("[pool]\npool_size = 1\ncheckout_timeout = \"300ms\"\n")
        .start()
        .await;
    let holder = env.connect("app", "acme").await;
    let err = env
        .try_connect("app", "acme")
        .await
        .expect_err("second client must wait and fail");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(db.code(), &SqlState::TOO_MANY_CONNECTIONS);
    assert!(
        db.message().contains("acme") && db.message().contains("pool_size 1"),
        "{}",
        db.message()
    );
    // The holder is undisturbed and another tenant has its own pool.
    assert_eq!(items(&holder).await, ACME_ITEMS);
    assert_eq!(
        items(&env.connect("app", "globex").await).await,
        GLOBEX_ITEMS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_died_while_idle_is_replaced_unnoticed() {
    let env = txn_env(2).start().await;
    let client = env.connect("app", "acme").await;
    assert_eq!(items(&client).await, ACME_ITEMS);
    let direct = env.direct("pg-a", "erp").await;
    let killed: i64 = direct
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = 'erp' AND usename = 'app') t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1, "no idle server connection to kill");
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..5 {
        assert_eq!(items(&client).await, ACME_ITEMS);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_idle_connections_are_kept_warm() {
    let env = EnvBuilder::erp()
        .settings("[proxy]\npool_mode = \"transaction\"\n[pool]\npool_size = 5\nmin_idle = 3\n")
        .start()
        .await;
    let client = env.connect("app", "acme").await;
    assert_eq!(items(&client).await, ACME_ITEMS);
    let warm = eventually(Duration::from_secs(5), || async {
        (env.backends("pg-a", "erp").await >= 3).then_some(())
    })
    .await;
    assert!(warm.is_some(), "pool did not warm up to min_idle = 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_and_transactions_keep_their_server() {
    let env = txn_env(2).start().await;
    let client = env.connect("app", "acme").await;
    let statement = client.prepare("SELECT $1::int * 2").await.unwrap();
    // tokio-postgres pipelines concurrent queries on one connection: many Syncs in flight.
    let results = futures_util::future::join_all((0..200i32).map(|n| {
        let client = &client;
        let statement = &statement;
        async move {
            client
                .query_one(statement, &[&n])
                .await
                .map(|r| r.get::<_, i32>(0))
        }
    }))
    .await;
    for (n, result) in results.into_iter().enumerate() {
        assert_eq!(result.expect("pipelined query"), n as i32 * 2);
    }
    // A transaction keeps one server from BEGIN to COMMIT while others run.
    let other = env.connect("app", "acme").await;
    let busy = tokio::spawn(async move {
        for _ in 0..100 {
            other.simple_query("SELECT 1").await.unwrap();
        }
    });
    client.batch_execute("BEGIN").await.unwrap();
    let pid = value(&client, "SELECT pg_backend_pid()").await;
    for _ in 0..20 {
        assert_eq!(value(&client, "SELECT pg_backend_pid()").await, pid);
    }
    client.batch_execute("COMMIT").await.unwrap();
    busy.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_cache_per_server_is_bounded() {
    let env = EnvBuilder::erp()
        .settings("[proxy]\npool_mode = \"transaction\"\n[pool]\npool_size = 1\nmax_prepared_statements = 2\n")
        .start()
        .await;
    let client = env.connect("app", "acme").await;
    let mut statements = Vec::new();
    for k in 0..5 {
        statements.push(
            client
                .prepare(&format!("SELECT $1::int + {k}"))
                .await
                .unwrap(),
        );
    }
    for round in 0..20i32 {
        for (k, statement) in statements.iter().enumerate() {
            let row = client
                .query_one(statement, &[&round])
                .await
                .expect("execute");
            assert_eq!(row.get::<_, i32>(0), round + k as i32);
        }
    }
    let held: i64 = client
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        held <= 2,
        "server holds {held} statements with max_prepared_statements = 2"
    );
    // Closing a statement is answered, and others still work.
    let first = statements.remove(0);
    drop(first);
    assert_eq!(
        client
            .query_one(&statements[0], &[&1i32])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_features_pin_the_client_in_transaction_mode() {
    let env = txn_env(3).start().await;
    // LISTEN: the notification reaches the listener on its own server.
    let (listener, mut messages) = env.connect_with_messages("app", "acme").await;
    listener.batch_execute("LISTEN jobs").await.unwrap();
    let notifier = env.connect("app", "acme").await;
    for _ in 0..5 {
        notifier.batch_execute("SELECT 1").await.unwrap();
    }
    notifier
        .batch_execute("NOTIFY jobs, 'hello'")
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            // A query lets the proxy read from the listener's server.
            listener.batch_execute("SELECT 1").await.unwrap();
            if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = messages.try_recv() {
                return n.payload().to_string();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("notification delivered");
    assert_eq!(got, "hello");

    // Temporary tables, SQL PREPARE, WITH HOLD cursors: later transactions see them.
    let client = env.connect("app", "acme").await;
    client
        .batch_execute("CREATE TEMP TABLE scratch (x int)")
        .await
        .unwrap();
    client
        .batch_execute("PREPARE twice(int) AS SELECT $1 * 2")
        .await
        .unwrap();
    client
        .batch_execute(
            "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT name FROM items ORDER BY id; COMMIT",
        )
        .await
        .unwrap();
    for n in 0..10 {
        client
            .batch_execute(&format!("INSERT INTO scratch VALUES ({n})"))
            .await
            .unwrap();
        assert_eq!(
            value(&client, &format!("EXECUTE twice({n})")).await,
            (n * 2).to_string()
        );
    }
    assert_eq!(value(&client, "SELECT count(*) FROM scratch").await, "10");
    assert_eq!(value(&client, "FETCH 1 FROM c").await, ACME_ITEMS[0]);
    // Unpinned clients still share the remaining servers.
    let others = futures_util::future::join_all((0..6).map(|_| env.connect("app", "globex"))).await;
    for other in &others {
        assert_eq!(items(other).await, GLOBEX_ITEMS);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_resets_servers_between_clients() {
    let env = EnvBuilder::erp_with(ClusterOptions::default())
        .settings("[pool]\npool_size = 1\n")
        .start()
        .await;
    let first = env.connect("app", "acme").await;
    let pid = value(&first, "SELECT pg_backend_pid()").await;
    first
        .batch_execute(
            "SET statement_timeout = '7s'; SET search_path = public; PREPARE p AS SELECT 1",
        )
        .await
        .unwrap();
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = env.connect("app", "acme").await;
    assert_eq!(
        value(&second, "SELECT pg_backend_pid()").await,
        pid,
        "server was not reused"
    );
    assert_eq!(value(&second, "SHOW statement_timeout").await, "0");
    assert_eq!(value(&second, "SHOW search_path").await, "tenant_acme");
    assert_eq!(
        value(&second, "SELECT count(*) FROM pg_prepared_statements").await,
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_both_ways_with_prepared_statements_in_transaction_mode() {
    let env = txn_env(2)
        .seed(
            "erp",
            "SET ROLE app; CREATE TABLE tenant_acme.copied (n int, t text);",
        )
        .start()
        .await;
    let client = env.connect("app", "acme").await;
    let other = env.connect("app", "acme").await;
    for round in 0..3 {
        other.simple_query("SELECT 1").await.unwrap();
        let sink = client
            .copy_in("COPY copied FROM STDIN")
            .await
            .unwrap_or_else(|e| panic!("round {round}: {}", describe(&e)));
        let rows: String = (0..10_000).map(|n| format!("{n}\trow {n}\n")).collect();
        futures_util::pin_mut!(sink);
        use futures_util::SinkExt;
        sink.send(bytes::Bytes::from(rows)).await.unwrap();
        let copied = sink
            .finish()
            .await
            .unwrap_or_else(|e| panic!("{}", describe(&e)));
        assert_eq!(copied, 10_000);
    }
    assert_eq!(value(&client, "SELECT count(*) FROM copied").await, "30000");
    let stream = client.copy_out("COPY copied TO STDOUT").await.unwrap();
    use futures_util::TryStreamExt;
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let lines = chunks
        .iter()
        .map(|c| c.iter().filter(|&&b| b == b'\n').count())
        .sum::<usize>();
    assert_eq!(lines, 30_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_settings_never_reach_another() {
    let env = txn_env(1).start().await;
    let mut config = env.config("app", Some("acme"));
    config.application_name("first");
    config.options("-c statement_timeout=123s -c work_mem=7MB");
    let first = connect(&config).await.unwrap();
    first
        .batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    assert_eq!(value(&first, "SHOW statement_timeout").await, "123s");
    // The second client asked for nothing and shares the only server connection.
    let second = env.connect("app", "acme").await;
    for _ in 0..3 {
        assert_eq!(value(&second, "SHOW statement_timeout").await, "0");
        assert_eq!(value(&second, "SHOW work_mem").await, "4MB");
        assert_eq!(value(&second, "SHOW application_name").await, "");
        assert_ne!(value(&second, "SHOW TimeZone").await, "Asia/Tokyo");
        // And the first keeps its own on the same server.
        assert_eq!(value(&first, "SHOW statement_timeout").await, "123s");
        assert_eq!(value(&first, "SHOW application_name").await, "first");
        assert_eq!(value(&first, "SHOW TimeZone").await, "Asia/Tokyo");
    }
    // A SET to the value the server already holds is not reported by the server; the
    // client's value must still follow it.
    second
        .batch_execute("SET application_name = 'first'")
        .await
        .unwrap();
    assert_eq!(value(&first, "SHOW application_name").await, "first");
    assert_eq!(value(&second, "SHOW application_name").await, "first");
    first
        .batch_execute("SET application_name = 'renamed'")
        .await
        .unwrap();
    assert_eq!(value(&second, "SHOW application_name").await, "first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_set_follows_it_and_stays_its_own() {
    let env = txn_env(2).start().await;
    let client = env.connect("app", "acme").await;
    client
        .batch_execute("SET statement_timeout = '7s'")
        .await
        .unwrap();
    client
        .batch_execute("SET extra_float_digits TO 1")
        .await
        .unwrap();
    // Others keep both servers busy, so the client switches between them; they
    // must never see its settings.
    let others: Vec<_> =
        futures_util::future::join_all((0..3).map(|_| env.connect("app", "acme"))).await;
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = others
        .into_iter()
        .map(|other| {
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(value(&other, "SHOW statement_timeout").await, "0");
                }
                other
            })
        })
        .collect();
    let mut pids = HashSet::new();
    for _ in 0..100 {
        let row = client
            .query_one(
                "SELECT current_setting('statement_timeout'), current_setting('extra_float_digits'), pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "7s");
        assert_eq!(row.get::<_, String>(1), "1");
        pids.insert(row.get::<_, i32>(2));
    }
    stop.store(true, Ordering::Relaxed);
    let mut others = Vec::new();
    for task in busy {
        others.push(
            task.await
                .expect("another client saw this client's setting"),
        );
    }
    assert!(
        pids.len() > 1,
        "the client never switched servers; the test proves nothing"
    );
    client
        .batch_execute("RESET statement_timeout")
        .await
        .unwrap();
    for _ in 0..10 {
        assert_eq!(value(&client, "SHOW statement_timeout").await, "0");
        assert_eq!(value(&client, "SHOW extra_float_digits").await, "1");
        others[0].simple_query("SELECT 1").await.unwrap();
    }
    // A SET inside a transaction that rolls back does not follow the client.
    client
        .batch_execute("BEGIN; SET work_mem = '9MB'; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(value(&client, "SHOW work_mem").await, "4MB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_are_made_on_first_use_and_dropped_when_idle() {
    let env = EnvBuilder::erp()
        .settings("[pool]\nidle_timeout = \"1s\"\n")
        .start()
        .await;
    let pools = &env.server().app().pools;
    assert_eq!(pools.pool_count(), 0, "no tenant has connected yet");
    let client = env.connect("app", "acme").await;
    assert_eq!(items(&client).await, ACME_ITEMS);
    assert_eq!(pools.pool_count(), 1);
    drop(client);
    let gone = eventually(Duration::from_secs(10), || async {
        (pools.pool_count() == 0 && env.backends("pg-a", "erp").await == 0).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the idle pool and its server connection stayed"
    );
}
