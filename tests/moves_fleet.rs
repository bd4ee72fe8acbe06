//! Two instances on one PostgreSQL registry move a tenant together: both pause it
//! and acknowledge before the switch, both then serve it from the new host, with a
//! write load on both and no failed transaction. An instance that does not
//! acknowledge in time fails the move, and both go on serving from the source.

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

    // An instance that never acknowledges (registered, but not following): the move
    // fails and both instances serve from where the tenant was.
    let registry = env.direct("registry", "postgres").await;
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
}
