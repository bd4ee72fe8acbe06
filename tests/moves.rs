//! Tenant moves against real clusters: a schema tenant and a database tenant copied
//! to another host under a transaction-mode write load (zero failed transactions,
//! every committed row on the target, serial inserts after the move), an abort in
//! the middle (the source serves with every row), a session-mode client and a
//! transaction left open told 57P01 after move_timeout, and the CLI.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use pgtenant::cluster::ClusterOptions;
use tokio_postgres::Client;

/// In `erp` on pg-a: acme's tables written by the load.
const ACME_ORDERS: &str = "
SET ROLE app;
CREATE TABLE tenant_acme.orders (id bigserial PRIMARY KEY, client int NOT NULL, n int NOT NULL);
CREATE TABLE tenant_acme.counters (client int PRIMARY KEY, n int NOT NULL DEFAULT 0);
INSERT INTO tenant_acme.counters SELECT g, 0 FROM generate_series(0, 15) g;
INSERT INTO tenant_acme.orders (client, n) SELECT -1, g FROM generate_series(1, 20000) g;
";

/// Database `shop` on pg-a: a database tenant with the same tables in `public`.
const SHOP: &str = "
SET ROLE app;
CREATE TABLE orders (id bigserial PRIMARY KEY, client int NOT NULL, n int NOT NULL);
CREATE TABLE counters (client int PRIMARY KEY, n int NOT NULL DEFAULT 0);
INSERT INTO counters SELECT g, 0 FROM generate_series(0, 15) g;
INSERT INTO orders (client, n) SELECT -1, g FROM generate_series(1, 20000) g;
";

const REGISTRY: &str = r#"
[hosts.pg-a]
address = "${pg-a}"
max_connections = 60

[hosts.pg-b]
address = "${pg-b}"
max_connections = 60

[tenants.acme]
host = "pg-a"
database = "erp"
search_path = ["tenant_acme"]
backend_user = "app"

[tenants.globex]
host = "pg-a"
database = "erp"
search_path = ["tenant_globex"]
backend_user = "app"
pool_mode = "session"

[tenants.shop]
host = "pg-a"
database = "shop"
backend_user = "app"
"#;

const SETTINGS: &str =
    "[proxy]\npool_mode = \"transaction\"\n[pool]\npool_size = 8\n[admin]\nmove_timeout = \"2s\"\n";

fn two_hosts(target: ClusterOptions) -> EnvBuilder {
    EnvBuilder::new()
        .host_with("pg-a", ClusterOptions::logical())
        .seed("postgres", ERP_ROLES)
        .seed("erp", ERP_SCHEMAS)
        .seed("erp", ACME_ORDERS)
        .seed("postgres", "CREATE DATABASE shop OWNER app;")
        .seed("shop", SHOP)
        .host_with("pg-b", target)
        .seed("postgres", ERP_ROLES)
        .registry(REGISTRY)
        .settings(SETTINGS)
}

async fn console(env: &Env) -> Client {
    env.connect("pgtenant", "pgtenant").await
}

/// What 16 clients writing in transaction mode saw.
#[derive(Default)]
struct Seen {
    /// Ids of committed inserts, with whether they committed after the switch.
    committed: Vec<(i64, bool)>,
    failures: Vec<String>,
    longest: Duration,
}

struct Load {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    switched: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// 16 clients, each in a loop: BEGIN; a prepared INSERT of a serial id; a prepared
/// UPDATE of its counter; COMMIT.
async fn start_load(env: &Env, tenant: &str, schema: &str) -> Load {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let switched = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for id in 0..16i32 {
        let mut client = env.connect("app", tenant).await;
        let insert = client
            .prepare(&format!(
                "INSERT INTO {schema}orders (client, n) VALUES ($1, $2) RETURNING id"
            ))
            .await
            .unwrap();
        let update = client
            .prepare(&format!(
                "UPDATE {schema}counters SET n = n + 1 WHERE client = $1"
            ))
            .await
            .unwrap();
        let (seen, stop, switched) = (seen.clone(), stop.clone(), switched.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let after = switched.load(Ordering::Relaxed);
                let started = Instant::now();
                let result = async {
                    let txn = client.transaction().await?;
                    let row = txn.query_one(&insert, &[&id, &n]).await?;
                    txn.execute(&update, &[&id]).await?;
                    txn.commit().await?;
                    Ok::<i64, tokio_postgres::Error>(row.get(0))
                }
                .await;
                let took = started.elapsed();
                let mut seen = seen.lock().unwrap();
                seen.longest = seen.longest.max(took);
                match result {
                    Ok(row) => seen.committed.push((row, after)),
                    Err(e) => {
                        seen.failures.push(describe(&e));
                        if client.is_closed() {
                            return;
                        }
                    }
                }
            }
        }));
    }
    Load {
        seen,
        stop,
        switched,
        tasks,
    }
}

impl Load {
    fn committed(&self) -> usize {
        self.seen.lock().unwrap().committed.len()
    }

    async fn until_committed(&self, more: usize) {
        let want = self.committed() + more;
        let reached = eventually(Duration::from_secs(60), || async {
            (self.committed() >= want).then_some(())
        })
        .await;
        assert!(
            reached.is_some(),
            "the load did not commit {more} more transactions"
        );
    }

    async fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        Arc::try_unwrap(self.seen)
            .ok()
            .expect("load ended")
            .into_inner()
            .unwrap()
    }
}

/// A value through the proxy, as the tenant sees it.
async fn port_seen(env: &Env, tenant: &str) -> i32 {
    let client = env.connect("app", tenant).await;
    client
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0)
}

/// The move's row in SHOW MOVES, as text by column.
async fn move_row(admin: &Client, tenant: &str) -> Option<Vec<(String, String)>> {
    let rows = admin.simple_query("SHOW MOVES").await.unwrap();
    rows.into_iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some(tenant) => Some(
            row.columns()
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name().to_string(), row.get(i).unwrap_or("").to_string()))
                .collect(),
        ),
        _ => None,
    })
}

fn field(row: &[(String, String)], name: &str) -> String {
    row.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Moves `tenant` with --copy under the load and checks what the issue promises.
async fn copy_under_load(env: &Env, tenant: &str, database: &str, schema: &str) {
    let load = start_load(env, tenant, schema).await;
    load.until_committed(200).await;
    let admin = console(env).await;
    let started = Instant::now();
    admin
        .simple_query(&format!("MOVE {tenant} TO pg-b COPY"))
        .await
        .unwrap_or_else(|e| panic!("MOVE {tenant}: {}", describe(&e)));
    load.switched.store(true, Ordering::Relaxed);
    let took = started.elapsed();
    // Serial inserts on the new host, after the move.
    load.until_committed(300).await;
    let seen = load.finish().await;

    let row = move_row(&admin, tenant).await.expect("the move is listed");
    println!(
        "moved {tenant} with copy in {took:?}: paused {} ms; longest transaction seen by a client {:?}; {} transactions committed; {}",
        field(&row, "paused_ms"),
        seen.longest,
        seen.committed.len(),
        field(&row, "message")
    );
    assert_eq!(seen.failures, Vec::<String>::new(), "failed transactions");
    assert_eq!(field(&row, "phase"), "active");
    assert_eq!(port_seen(env, tenant).await, env.host("pg-b").port() as i32);

    // Every committed row is on the target, and every update.
    let target = env.direct("pg-b", database).await;
    let ids: Vec<i64> = seen.committed.iter().map(|(id, _)| *id).collect();
    let found: i64 = target
        .query_one(
            &format!("SELECT count(*) FROM {schema}orders WHERE id = ANY($1)"),
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        found as usize,
        ids.len(),
        "committed rows missing on the target"
    );
    let updates: i64 = target
        .query_one(&format!("SELECT sum(n)::int8 FROM {schema}counters"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        updates as usize,
        ids.len(),
        "committed updates on the target"
    );
    let preloaded: i64 = target
        .query_one(
            &format!("SELECT count(*) FROM {schema}orders WHERE client = -1"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(preloaded, 20000, "the initial copy");
    assert!(
        seen.committed.iter().any(|(_, after)| *after),
        "serial inserts after the move"
    );
    // The replication objects are gone; the source copy is left in place.
    let source = env.direct("pg-a", database).await;
    let left: i64 = source
        .query_one(
            "SELECT (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_replication_slots)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "publication or slot left on the source");
    let subs: i64 = target
        .query_one("SELECT count(*) FROM pg_subscription", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(subs, 0, "subscription left on the target");
    let kept: i64 = source
        .query_one(&format!("SELECT count(*) FROM {schema}orders"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(kept >= 20000, "the source copy stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schema_and_database_tenants_move_with_copy_under_load() {
    let env = two_hosts(ClusterOptions::logical()).start().await;
    assert_eq!(
        port_seen(&env, "acme").await,
        env.host("pg-a").port() as i32
    );
    copy_under_load(&env, "acme", "erp", "tenant_acme.").await;
    copy_under_load(&env, "shop", "shop", "").await;
    // The registry file names the new host.
    let registry = std::fs::read_to_string(&env.registry_path).unwrap();
    assert!(
        registry.contains("[tenants.acme]\nhost = \"pg-b\""),
        "{registry}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aborted_move_leaves_the_source_serving_every_row() {
    // No table sync worker on the target: the copy cannot finish, so the move is
    // certainly still copying when it is aborted.
    let target = ClusterOptions::logical().setting("max_sync_workers_per_subscription", "0");
    let env = two_hosts(target).start().await;
    let load = start_load(&env, "acme", "tenant_acme.").await;
    load.until_committed(100).await;
    let mover = console(&env).await;
    let moving = tokio::spawn(async move { mover.simple_query("MOVE acme TO pg-b COPY").await });
    let admin = console(&env).await;
    let copying = eventually(Duration::from_secs(30), || async {
        let row = move_row(&admin, "acme").await?;
        (field(&row, "phase") == "copying" && field(&row, "running") == "t").then_some(())
    })
    .await;
    assert!(copying.is_some(), "{:?}", move_row(&admin, "acme").await);
    load.until_committed(100).await;
    admin
        .simple_query("ABORT MOVE acme")
        .await
        .unwrap_or_else(|e| panic!("ABORT MOVE: {}", describe(&e)));
    let err = moving.await.unwrap().expect_err("the move was aborted");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "57014", "{}", db.message());
    assert!(
        db.message().contains("serves from pg-a"),
        "{}",
        db.message()
    );
    load.until_committed(100).await;
    let seen = load.finish().await;
    assert_eq!(seen.failures, Vec::<String>::new(), "failed transactions");

    let row = move_row(&admin, "acme").await.unwrap();
    assert_eq!(field(&row, "phase"), "aborted");
    assert_eq!(
        port_seen(&env, "acme").await,
        env.host("pg-a").port() as i32
    );
    let source = env.direct("pg-a", "erp").await;
    let ids: Vec<i64> = seen.committed.iter().map(|(id, _)| *id).collect();
    let found: i64 = source
        .query_one(
            "SELECT count(*) FROM tenant_acme.orders WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        found as usize,
        ids.len(),
        "every committed row on the source"
    );
    let left: i64 = source
        .query_one(
            "SELECT (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_replication_slots)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "publication or slot left on the source");
    // The partial copy on the target is dropped, so the move can be tried again.
    let target = env.direct("pg-b", "erp").await;
    let schemas: i64 = target
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_acme'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(schemas, 0, "{}", db.message());
    let registry = std::fs::read_to_string(&env.registry_path).unwrap();
    assert!(
        registry.contains("[tenants.acme]\nhost = \"pg-a\""),
        "{registry}"
    );

    // A move cut short by a restart is visible from the state file beside the
    // registry, and abortable there: a second proxy on the same registry stands in
    // for the restarted one.
    let mover = console(&env).await;
    let moving = tokio::spawn(async move { mover.simple_query("MOVE acme TO pg-b COPY").await });
    let copying = eventually(Duration::from_secs(30), || async {
        let row = move_row(&admin, "acme").await?;
        (field(&row, "phase") == "copying").then_some(())
    })
    .await;
    assert!(copying.is_some());
    let restarted = env.start_server("").await;
    let admin2 = connect(&config_for(
        restarted.local_addr(),
        "pgtenant",
        Some("pgtenant"),
    ))
    .await
    .unwrap();
    let row = move_row(&admin2, "acme")
        .await
        .expect("listed after a restart");
    assert_eq!(field(&row, "phase"), "copying");
    assert_eq!(field(&row, "running"), "f");
    admin2
        .simple_query("ABORT MOVE acme")
        .await
        .unwrap_or_else(|e| panic!("ABORT MOVE after a restart: {}", describe(&e)));
    assert_eq!(
        field(&move_row(&admin2, "acme").await.unwrap(), "phase"),
        "aborted"
    );
    let left: i64 = source
        .query_one(
            "SELECT (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_replication_slots)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "publication or slot left after the abort");
    // The first proxy's move finds its replication gone and ends on the source.
    admin.simple_query("ABORT MOVE acme").await.ok();
    moving.await.unwrap().expect_err("the cut-short move ended");
    assert_eq!(
        port_seen(&env, "acme").await,
        env.host("pg-a").port() as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_client_is_told_to_reconnect_after_move_timeout() {
    // The data is already on pg-b (a move without copy): its own rows tell them apart.
    let env = two_hosts(ClusterOptions::default())
        .seed("erp", ERP_SCHEMAS)
        .start()
        .await;
    let target = env.direct("pg-b", "erp").await;
    target
        .batch_execute("UPDATE tenant_globex.items SET name = name || ' (pg-b)'")
        .await
        .unwrap();
    let (mut session, _) = Raw::login(env.addr(), &[("user", "app"), ("database", "globex")]).await;
    let admin = console(&env).await;
    let started = Instant::now();
    admin
        .simple_query("MOVE globex TO pg-b")
        .await
        .unwrap_or_else(|e| panic!("MOVE globex: {}", describe(&e)));
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited for move_timeout"
    );
    session.timeout = Duration::from_secs(10);
    let fatal = session.expect_fatal().await;
    assert_eq!(fatal.code, "57P01", "{fatal:?}");
    assert!(fatal.message.contains("moved to host pg-b"), "{fatal:?}");
    let again = env.connect("app", "globex").await;
    let names = items(&again).await;
    assert!(names.iter().all(|n| n.ends_with("(pg-b)")), "{names:?}");

    // A transaction-mode client whose transaction is still open at move_timeout is
    // told the same, its transaction rolled back, and the move goes on.
    let (mut open, _) = Raw::login(env.addr(), &[("user", "app"), ("database", "acme")]).await;
    open.send(&query_message(
        "BEGIN; UPDATE tenant_acme.items SET name = 'rolled back'",
    ))
    .await;
    open.read_until_ready().await;
    // Idle clients of acme: the move opens servers for them on the new host before
    // it resumes the tenant (none would be opened before a client asks, otherwise).
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(env.connect("app", "acme").await);
    }
    let before = env.backends("pg-b", "erp").await;
    admin
        .simple_query("MOVE acme TO pg-b")
        .await
        .unwrap_or_else(|e| panic!("MOVE acme with a transaction open: {}", describe(&e)));
    let warmed = eventually(Duration::from_secs(10), || async {
        (env.backends("pg-b", "erp").await >= before + 3).then_some(())
    })
    .await;
    assert!(warmed.is_some(), "servers opened on the new host");
    open.timeout = Duration::from_secs(10);
    let fatal = open.expect_fatal().await;
    assert_eq!(fatal.code, "57P01", "{fatal:?}");
    assert!(fatal.message.contains("moved to host pg-b"), "{fatal:?}");
    assert_eq!(
        port_seen(&env, "acme").await,
        env.host("pg-b").port() as i32
    );
    let source = env.direct("pg-a", "erp").await;
    let rolled_back: i64 = source
        .query_one(
            "SELECT count(*) FROM tenant_acme.items WHERE name = 'rolled back'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rolled_back, 0, "the open transaction was not committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_cut_short_by_a_crash_resumes_from_the_state_file() {
    // No table sync worker on the target: the copy holds in phase copying.
    let target = ClusterOptions::logical().setting("max_sync_workers_per_subscription", "0");
    let env = two_hosts(target).start().await;
    let first = common::process::Proxy::start(&env, "[admin]\nmove_timeout = \"2s\"").await;
    let admin = connect(&config_for(first.addr(), "pgtenant", Some("pgtenant")))
        .await
        .unwrap();
    let moving = tokio::spawn(async move { admin.simple_query("MOVE acme TO pg-b COPY").await });
    let target_admin = env.direct("pg-b", "postgres").await;
    let subscribed = eventually(Duration::from_secs(30), || async {
        let n: i64 = target_admin
            .query_one("SELECT count(*) FROM pg_subscription", &[])
            .await
            .ok()?
            .get(0);
        (n == 1).then_some(())
    })
    .await;
    assert!(subscribed.is_some(), "the move made its subscription");
    let client = first.connect("acme").await;
    let mut committed = Vec::new();
    for n in 0..50 {
        let row = client
            .query_one(
                "INSERT INTO orders (client, n) VALUES (99, $1) RETURNING id",
                &[&n],
            )
            .await
            .unwrap();
        committed.push(row.get::<_, i64>(0));
    }
    // Killed, as in a crash: the state file beside the registry keeps the move.
    drop(first);
    moving.await.unwrap().expect_err("the proxy was killed");
    for sql in [
        "ALTER SYSTEM SET max_sync_workers_per_subscription = 2",
        "SELECT pg_reload_conf()",
    ] {
        target_admin.batch_execute(sql).await.unwrap();
    }
    let second = common::process::Proxy::start(&env, "[admin]\nmove_timeout = \"2s\"").await;
    let admin = connect(&config_for(second.addr(), "pgtenant", Some("pgtenant")))
        .await
        .unwrap();
    let row = move_row(&admin, "acme")
        .await
        .expect("listed after the crash");
    assert_eq!(
        (
            field(&row, "phase").as_str(),
            field(&row, "running").as_str()
        ),
        ("copying", "f")
    );
    admin
        .simple_query("MOVE acme TO pg-b COPY")
        .await
        .unwrap_or_else(|e| panic!("resuming the move: {}", describe(&e)));
    let row = move_row(&admin, "acme").await.unwrap();
    assert_eq!(field(&row, "phase"), "active");
    assert!(
        field(&row, "message").contains("resumed the move cut short in phase copying"),
        "{row:?}"
    );
    // Serial inserts after the move, on the new host.
    let client = second.connect("acme").await;
    let row = client
        .query_one(
            "INSERT INTO orders (client, n) VALUES (99, 0) RETURNING id, inet_server_port()",
            &[],
        )
        .await
        .unwrap();
    committed.push(row.get(0));
    assert_eq!(row.get::<_, i32>(1), env.host("pg-b").port() as i32);
    let on_target = env.direct("pg-b", "erp").await;
    let found: i64 = on_target
        .query_one(
            "SELECT count(*) FROM tenant_acme.orders WHERE id = ANY($1)",
            &[&committed],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        found as usize,
        committed.len(),
        "every committed row on the target"
    );
}

/// `pgtenant tenant move` against the running proxy, with the settings file's
/// listen address pointed at it.
async fn cli(env: &Env, args: &[&str]) -> std::process::Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"));
    command
        .args(["tenant", "move"])
        .args(args)
        .arg("--config")
        .arg(&env.settings_path)
        .env("PGTENANT__PROXY__LISTEN", env.addr().to_string());
    command.output().await.expect("running pgtenant")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_and_the_http_api_move_a_tenant_or_say_why_not() {
    let env = two_hosts(ClusterOptions::logical())
        // Into SETTINGS' [admin] table, which it ends with.
        .settings("http_listen = \"127.0.0.1:0\"\nhttp_token = \"t0ken\"\n")
        .start()
        .await;
    let out = cli(&env, &["acme", "--to", "nowhere"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("host \"nowhere\" is not in the registry"),
        "{stderr}"
    );

    let out = cli(&env, &["acme", "--to", "pg-b", "--copy"]).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("tenant \"acme\" moved from pg-a to pg-b"),
        "{stdout}"
    );
    // Without a terminal the phases are printed one per line.
    assert!(
        stderr.contains("copying") || stderr.contains("catching_up") || stderr.contains("paused"),
        "{stderr}"
    );
    assert_eq!(
        port_seen(&env, "acme").await,
        env.host("pg-b").port() as i32
    );
    let out = cli(&env, &["acme", "--abort"]).await;
    assert!(!out.status.success(), "nothing to abort");

    // Back over HTTP, without copy (the source copy was left in place).
    let http = format!("http://{}", env.server().http_addr().unwrap());
    let client = reqwest::Client::new();
    let answer = client
        .post(format!("{http}/api/tenants/acme/move"))
        .header("authorization", "Bearer t0ken")
        .header("content-type", "application/json")
        .body(r#"{"to": "pg-a"}"#)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let body = answer.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("moved from pg-b to pg-a"), "{body}");
    assert_eq!(
        port_seen(&env, "acme").await,
        env.host("pg-a").port() as i32
    );
    let answer = client
        .get(format!("{http}/api/moves"))
        .header("authorization", "Bearer t0ken")
        .send()
        .await
        .unwrap();
    let moves: serde_json::Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
    assert_eq!(moves[0]["tenant"], "acme");
    assert_eq!(moves[0]["phase"], "active");
    let unauthorized = client
        .get(format!("{http}/api/moves"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
}
