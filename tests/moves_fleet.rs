//! Two instances on one PostgreSQL registry move a tenant together: both pause it
//! and acknowledge (in pgtenant.move_acks) before the switch, both then serve it
//! from the new host, with a write load on both and no failed transaction. An
//! instance that does not acknowledge in time fails the move, and both go on serving
//! from the source. A move running on one instance is aborted from another. A move
//! cut short by a crash (the proxy process killed) is seen in the registry by
//! another instance, which aborts it (the source serves every row, nothing of the
//! move is left) or resumes it to the end.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use pgtenant::cluster::ClusterOptions;
use pgtenant::Server;

const ACME_ORDERS: &str = "
SET ROLE app;
CREATE TABLE tenant_acme.orders (id bigserial PRIMARY KEY, client int NOT NULL, n int NOT NULL);
INSERT INTO tenant_acme.orders (client, n) SELECT -1, g FROM generate_series(1, 5000) g;
";

fn url(env: &Env) -> String {
    format!(
        "postgres://postgres@{}/postgres",
        env.host_address("registry")
    )
}

fn pgtenant(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(args)
        .env_remove("PGTENANT_CONFIG")
        .output()
        .expect("running pgtenant");
    assert!(
        out.status.success(),
        "pgtenant {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The registry database with hosts pg-a and pg-b and tenant acme on pg-a.
fn seed(env: &Env) {
    pgtenant(&["registry", "init", "--url", &url(env)]);
    let config = env.dir.path().join("cli.toml");
    std::fs::write(&config, format!("[registry]\nurl = {:?}\n", url(env))).unwrap();
    let config = config.display().to_string();
    for host in ["pg-a", "pg-b"] {
        let address = env.host_address(host);
        pgtenant(&[
            "host",
            "add",
            host,
            "--address",
            &address,
            "--max-connections",
            "50",
            "--config",
            &config,
        ]);
    }
    pgtenant(&[
        "tenant",
        "add",
        "acme",
        "--host",
        "pg-a",
        "--database",
        "erp",
        "--search-path",
        "tenant_acme",
        "--backend-user",
        "app",
        "--config",
        &config,
    ]);
}

async fn instance(env: &Env) -> Server {
    env.start_server(&format!(
        "[registry]\nurl = {:?}\n[proxy]\npool_mode = \"transaction\"\n[admin]\nmove_timeout = \"2s\"\n",
        url(env)
    ))
    .await
}

async fn port_seen(server: &Server) -> i32 {
    let client = connect(&config_for(server.local_addr(), "app", Some("acme")))
        .await
        .unwrap();
    client
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_pause_acknowledge_and_switch_together() {
    let env = EnvBuilder::new()
        .host_with("pg-a", ClusterOptions::logical())
        .seed("postgres", ERP_ROLES)
        .seed("erp", ERP_SCHEMAS)
        .seed("erp", ACME_ORDERS)
        .host_with("pg-b", ClusterOptions::logical())
        .seed("postgres", ERP_ROLES)
        .host("registry")
        .registry(ERP_REGISTRY)
        .start()
        .await;
    seed(&env);
    let a = instance(&env).await;
    let b = instance(&env).await;
    let source = env.host("pg-a").port() as i32;
    let target = env.host("pg-b").port() as i32;
    assert_eq!(port_seen(&a).await, source);
    assert_eq!(port_seen(&b).await, source);

    // 8 writers through each instance.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new((Vec::<i64>::new(), Vec::<String>::new())));
    let mut tasks = Vec::new();
    for (i, server) in [&a, &b, &a, &b, &a, &b, &a, &b].iter().enumerate() {
        let client = connect(&config_for(server.local_addr(), "app", Some("acme")))
            .await
            .unwrap();
        let insert = client
            .prepare("INSERT INTO orders (client, n) VALUES ($1, 1) RETURNING id")
            .await
            .unwrap();
        let (stop, seen) = (stop.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.query_one(&insert, &[&(i as i32)]).await {
                    Ok(row) => seen.lock().unwrap().0.push(row.get(0)),
                    Err(e) => seen.lock().unwrap().1.push(describe(&e)),
                }
            }
        }));
    }
    let committed = || seen.lock().unwrap().0.len();
    let wait_for = |n: usize| async move {
        eventually(Duration::from_secs(60), || async {
            (committed() >= n).then_some(())
        })
        .await
    };
    assert!(wait_for(100).await.is_some());

    let admin = connect(&config_for(a.local_addr(), "pgtenant", Some("pgtenant")))
        .await
        .unwrap();
    admin
        .simple_query("MOVE acme TO pg-b COPY")
        .await
        .unwrap_or_else(|e| panic!("MOVE: {}", describe(&e)));
    let after = committed();
    assert!(wait_for(after + 200).await.is_some());
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (ids, failures) = seen.lock().unwrap().clone();
    assert_eq!(failures, Vec::<String>::new(), "failed transactions");
    assert_eq!(port_seen(&a).await, target);
    assert_eq!(port_seen(&b).await, target);
    let on_target = env.direct("pg-b", "erp").await;
    let found: i64 = on_target
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
        "every committed row on the target"
    );
    // The move's record and b's acknowledgement are in the registry database.
    let registry = env.direct("registry", "postgres").await;
    let record = registry
        .query_one(
            "SELECT id, phase, finished, instance FROM pgtenant.moves WHERE tenant = 'acme'",
            &[],
        )
        .await
        .unwrap();
    let (move_id, phase, finished, instance): (String, String, bool, Option<String>) =
        (record.get(0), record.get(1), record.get(2), record.get(3));
    assert_eq!((phase.as_str(), finished), ("active", true));
    let id_of = |s: &Server| s.app().cancels.instances().unwrap().id.clone();
    assert_eq!(instance, Some(id_of(&a)));
    let acks: Vec<(String, Option<String>)> = registry
        .query(
            "SELECT instance, error FROM pgtenant.move_acks WHERE move_id = $1",
            &[&move_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(acks, vec![(id_of(&b), None)], "b's acknowledgement");
    let state: String = registry
        .query_one(
            "SELECT state FROM pgtenant.tenants WHERE name = 'acme'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "active");

    // An instance that never acknowledges (registered, but not following): the move
    // fails and both instances serve from where the tenant was.
    registry
        .execute(
            "INSERT INTO pgtenant.instances (id, address, slot) VALUES ('silent', '127.0.0.1:1', 2047)",
            &[],
        )
        .await
        .unwrap();
    let err = admin
        .simple_query("MOVE acme TO pg-a")
        .await
        .expect_err("the silent instance fails the move");
    let message = err.as_db_error().unwrap().message().to_string();
    assert!(
        message.contains("silent") && message.contains("did not acknowledge"),
        "{message}"
    );
    assert!(message.contains("it serves from pg-b"), "{message}");
    assert_eq!(port_seen(&a).await, target);
    assert_eq!(port_seen(&b).await, target);
    let silent_acks: i64 = registry
        .query_one(
            "SELECT count(*) FROM pgtenant.move_acks WHERE instance = 'silent'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(silent_acks, 0);

    // An instance whose acknowledgement is only a row of pgtenant.move_acks, with no
    // notification: the mover reads it from the table and switches.
    registry
        .batch_execute(
            "DELETE FROM pgtenant.instances WHERE id = 'silent'; \
             INSERT INTO pgtenant.instances (id, address, slot) VALUES ('quiet', '127.0.0.1:1', 2046)",
        )
        .await
        .unwrap();
    let mover = connect(&config_for(a.local_addr(), "pgtenant", Some("pgtenant")))
        .await
        .unwrap();
    let moving = tokio::spawn(async move { mover.simple_query("MOVE acme TO pg-a").await });
    let paused = eventually(Duration::from_secs(30), || async {
        let row = registry
            .query_opt(
                "SELECT id FROM pgtenant.moves WHERE tenant = 'acme' AND phase = 'paused' \
                 AND to_host = 'pg-a' AND NOT finished",
                &[],
            )
            .await
            .ok()??;
        Some(row.get::<_, String>(0))
    })
    .await
    .expect("the move pauses");
    registry
        .execute(
            "INSERT INTO pgtenant.move_acks (move_id, instance) VALUES ($1, 'quiet')",
            &[&paused],
        )
        .await
        .unwrap();
    moving
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("MOVE with a table-only acknowledgement: {}", describe(&e)));
    assert_eq!(port_seen(&a).await, source);
    assert_eq!(port_seen(&b).await, source);
}

/// `pgtenant serve` as a process of its own on the registry database, so it can be
/// killed as a crash would.
struct Process {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    config: std::path::PathBuf,
}

impl Process {
    async fn start(env: &Env) -> Process {
        let port: u16 = closed_port_address()
            .rsplit_once(':')
            .unwrap()
            .1
            .parse()
            .unwrap();
        let config = env.dir.path().join(format!("serve-{port}.toml"));
        std::fs::write(
            &config,
            format!(
                "[proxy]\nlisten = \"127.0.0.1:{port}\"\npool_mode = \"transaction\"\n\
                 [registry]\nurl = {:?}\nheartbeat_interval = \"200ms\"\n\
                 [admin]\nmove_timeout = \"2s\"\n",
                url(env)
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pgtenant"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("PGTENANT_LOG", "warn")
            .env_remove("PGTENANT_CONFIG")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting pgtenant");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let up = eventually(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
        assert!(up.is_some(), "pgtenant did not start listening");
        Process {
            child,
            addr,
            config,
        }
    }

    async fn client(&self, user: &str, db: &str) -> tokio_postgres::Client {
        connect(&config_for(self.addr, user, Some(db)))
            .await
            .unwrap_or_else(|e| panic!("connecting as {user}: {}", describe(&e)))
    }

    /// SIGKILL: nothing is cleaned up, as in a crash.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tenant's move as SHOW MOVES tells it: (phase, running, message).
async fn show_move(admin: &tokio_postgres::Client) -> Option<(String, String, String)> {
    let rows = admin.simple_query("SHOW MOVES").await.unwrap();
    rows.into_iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("acme") => {
            let get = |name: &str| row.get(name).unwrap_or("").to_string();
            Some((get("phase"), get("running"), get("message")))
        }
        _ => None,
    })
}

/// The phase the registry database records for acme's move.
async fn recorded_phase(registry: &tokio_postgres::Client) -> Option<String> {
    registry
        .query_opt(
            "SELECT phase FROM pgtenant.moves WHERE tenant = 'acme'",
            &[],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// Publications, slots (source) and subscriptions (target) left.
async fn replication_left(env: &Env) -> i64 {
    let source = env.direct("pg-a", "erp").await;
    let target = env.direct("pg-b", "postgres").await;
    let on_source: i64 = source
        .query_one(
            "SELECT (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_replication_slots)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let on_target: i64 = target
        .query_one("SELECT count(*) FROM pg_subscription", &[])
        .await
        .unwrap()
        .get(0);
    on_source + on_target
}

/// Inserts `n` rows through `proxy`; their ids.
async fn insert_rows(proxy: &Process, n: i32) -> Vec<i64> {
    let client = proxy.client("app", "acme").await;
    let mut ids = Vec::new();
    for i in 0..n {
        let row = client
            .query_one(
                "INSERT INTO orders (client, n) VALUES (7, $1) RETURNING id",
                &[&i],
            )
            .await
            .unwrap_or_else(|e| panic!("insert: {}", describe(&e)));
        ids.push(row.get(0));
    }
    ids
}

async fn rows_found(env: &Env, host: &str, ids: &[i64]) -> usize {
    let client = env.direct(host, "erp").await;
    let found: i64 = client
        .query_one(
            "SELECT count(*) FROM tenant_acme.orders WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    found as usize
}

/// Starts `MOVE acme TO pg-b COPY` on `proxy` and waits until the registry records
/// it copying and its publication, slot and subscription are made (the target runs
/// no table sync worker, so it stays there).
async fn move_held_copying(
    env: &Env,
    proxy: &Process,
    registry: &tokio_postgres::Client,
) -> tokio::task::JoinHandle<Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>>
{
    let admin = proxy.client("pgtenant", "pgtenant").await;
    let moving = tokio::spawn(async move { admin.simple_query("MOVE acme TO pg-b COPY").await });
    let copying = eventually(Duration::from_secs(30), || async {
        let phase = recorded_phase(registry).await;
        (phase.as_deref() == Some("copying") && replication_left(env).await == 3).then_some(())
    })
    .await;
    assert!(copying.is_some(), "{:?}", recorded_phase(registry).await);
    moving
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_cut_short_by_a_crash_is_aborted_or_resumed_by_a_new_instance() {
    // No table sync worker on the target: the copy holds in phase copying until the
    // test lets it go on.
    let env = EnvBuilder::new()
        .host_with("pg-a", ClusterOptions::logical())
        .seed("postgres", ERP_ROLES)
        .seed("erp", ERP_SCHEMAS)
        .seed("erp", ACME_ORDERS)
        .host_with(
            "pg-b",
            ClusterOptions::logical().setting("max_sync_workers_per_subscription", "0"),
        )
        .seed("postgres", ERP_ROLES)
        .host("registry")
        .registry(ERP_REGISTRY)
        .start()
        .await;
    seed(&env);
    let registry = env.direct("registry", "postgres").await;
    let (source_port, target_port) = (
        env.host("pg-a").port() as i32,
        env.host("pg-b").port() as i32,
    );

    let mut first = Process::start(&env).await;
    let mut second = Process::start(&env).await;
    let admin = second.client("pgtenant", "pgtenant").await;
    let mut committed = insert_rows(&first, 50).await;

    // A move running on the first instance, aborted from the second: the first is
    // asked over the registry database and the second answers with what it did.
    let moving = move_held_copying(&env, &first, &registry).await;
    let (phase, running, _) = show_move(&admin).await.unwrap();
    assert_eq!((phase.as_str(), running.as_str()), ("copying", "t"));
    admin
        .simple_query("ABORT MOVE acme")
        .await
        .unwrap_or_else(|e| panic!("ABORT MOVE from another instance: {}", describe(&e)));
    let err = moving.await.unwrap().expect_err("the move was aborted");
    assert_eq!(err.as_db_error().unwrap().code().code(), "57014");
    let (phase, _, message) = show_move(&admin).await.unwrap();
    assert_eq!(phase, "aborted", "{message}");
    assert!(message.contains("serves from pg-a"), "{message}");
    assert_eq!(replication_left(&env).await, 0, "replication objects left");

    // The first instance starts the copy again and is killed in the middle of it.
    let moving = move_held_copying(&env, &first, &registry).await;
    committed.extend(insert_rows(&first, 50).await);
    first.kill();
    moving.await.unwrap().expect_err("the instance was killed");

    // Another instance sees the move in the registry, cut short (its instance gone).
    let cut_short = eventually(Duration::from_secs(20), || async {
        let (phase, running, _) = show_move(&admin).await?;
        (phase == "copying" && running == "f").then_some(())
    })
    .await;
    assert!(cut_short.is_some(), "{:?}", show_move(&admin).await);
    let status = Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["tenant", "move", "acme", "--status", "--config"])
        .arg(&second.config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{said}");
    assert!(
        said.contains("from pg-a to pg-b with copy: phase copying, cut short"),
        "{said}"
    );
    let state: String = registry
        .query_one(
            "SELECT state FROM pgtenant.tenants WHERE name = 'acme'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "copying");
    assert!(
        replication_left(&env).await > 0,
        "the crash left the replication"
    );

    // It aborts it: the replication and the partial copy go, the source serves.
    let said = admin
        .simple_query("ABORT MOVE acme")
        .await
        .unwrap_or_else(|e| panic!("ABORT MOVE: {}", describe(&e)));
    drop(said);
    let (phase, _, message) = show_move(&admin).await.unwrap();
    assert_eq!(phase, "aborted", "{message}");
    assert!(message.contains("serves from pg-a"), "{message}");
    assert!(
        message.contains("partial copy on pg-b was dropped"),
        "{message}"
    );
    assert_eq!(replication_left(&env).await, 0, "replication objects left");
    let target = env.direct("pg-b", "erp").await;
    let schemas: i64 = target
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_acme'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(schemas, 0, "the schema the move made on the target");
    committed.extend(insert_rows(&second, 20).await);
    let through: i32 = second
        .client("app", "acme")
        .await
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(through, source_port);
    assert_eq!(rows_found(&env, "pg-a", &committed).await, committed.len());
    let state: String = registry
        .query_one(
            "SELECT state FROM pgtenant.tenants WHERE name = 'acme'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "active");

    // Again, and this time the instance killed mid-copy is followed by ones that
    // run the same move again.
    let moving = move_held_copying(&env, &second, &registry).await;
    committed.extend(insert_rows(&second, 50).await);
    second.kill();
    moving.await.unwrap().expect_err("the instance was killed");

    // First the subscription is lost (dropped by hand): the next instance drops
    // what is left of the replication and the partial copy and copies again from
    // the start (a new subscription); it is killed mid-copy too.
    let target_erp = env.direct("pg-b", "erp").await;
    let subscription = "SELECT oid::int8 FROM pg_subscription";
    let lost: i64 = target_erp
        .query_one(subscription, &[])
        .await
        .unwrap()
        .get(0);
    for sql in [
        "ALTER SUBSCRIPTION pgtenant_move_acme DISABLE",
        "ALTER SUBSCRIPTION pgtenant_move_acme SET (slot_name = NONE)",
        "DROP SUBSCRIPTION pgtenant_move_acme",
    ] {
        target_erp.batch_execute(sql).await.unwrap();
    }
    let mut third = Process::start(&env).await;
    let admin = third.client("pgtenant", "pgtenant").await;
    let gone = eventually(Duration::from_secs(20), || async {
        let (_, running, _) = show_move(&admin).await?;
        (running == "f").then_some(())
    })
    .await;
    assert!(gone.is_some(), "{:?}", show_move(&admin).await);
    let moving = tokio::spawn(async move { admin.simple_query("MOVE acme TO pg-b COPY").await });
    let started_over = eventually(Duration::from_secs(30), || async {
        let oid = target_erp.query_opt(subscription, &[]).await.ok()??;
        (oid.get::<_, i64>(0) != lost && replication_left(&env).await == 3).then_some(())
    })
    .await;
    assert!(started_over.is_some(), "no new subscription");
    committed.extend(insert_rows(&third, 20).await);
    third.kill();
    moving.await.unwrap().expect_err("the instance was killed");

    // Then the copy may go on, and the next instance takes over the subscription.
    let target_admin = env.direct("pg-b", "postgres").await;
    for sql in [
        "ALTER SYSTEM SET max_sync_workers_per_subscription = 2",
        "SELECT pg_reload_conf()",
    ] {
        target_admin.batch_execute(sql).await.unwrap();
    }
    let fourth = Process::start(&env).await;
    let admin = fourth.client("pgtenant", "pgtenant").await;
    let gone = eventually(Duration::from_secs(20), || async {
        let (_, running, _) = show_move(&admin).await?;
        (running == "f").then_some(())
    })
    .await;
    assert!(gone.is_some(), "{:?}", show_move(&admin).await);
    // Writes go on through the new instance while the move resumes.
    let writer = {
        let client = fourth.client("app", "acme").await;
        tokio::spawn(async move {
            let (mut ids, mut failures) = (Vec::new(), Vec::new());
            for i in 0..400 {
                match client
                    .query_one(
                        "INSERT INTO orders (client, n) VALUES (8, $1) RETURNING id",
                        &[&i],
                    )
                    .await
                {
                    Ok(row) => ids.push(row.get::<_, i64>(0)),
                    Err(e) => failures.push(describe(&e)),
                }
            }
            (ids, failures)
        })
    };
    admin
        .simple_query("MOVE acme TO pg-b COPY")
        .await
        .unwrap_or_else(|e| panic!("resuming the move: {}", describe(&e)));
    let (ids, failures) = writer.await.unwrap();
    assert_eq!(failures, Vec::<String>::new(), "failed inserts");
    committed.extend(ids);
    let (phase, _, message) = show_move(&admin).await.unwrap();
    assert_eq!(phase, "active", "{message}");
    assert!(
        message.contains("resumed the move cut short in phase copying with its subscription"),
        "{message}"
    );
    // Serial inserts on the new host after the move.
    committed.extend(insert_rows(&fourth, 20).await);
    let through: i32 = fourth
        .client("app", "acme")
        .await
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(through, target_port);
    assert_eq!(
        rows_found(&env, "pg-b", &committed).await,
        committed.len(),
        "every committed row on the target"
    );
    assert_eq!(replication_left(&env).await, 0, "replication objects left");
    assert_eq!(recorded_phase(&registry).await.as_deref(), Some("active"));
}
