//! A cluster restarted versus a host stopped. A host whose server sessions were just
//! ended by a shutdown (`FATAL 57P01`), or that answers `57P03`, is restarting: a
//! client that needs a server there meanwhile waits for it, within its checkout time.
//! A host never seen going down that refuses TCP is refused at once (tests/core.rs
//! `unreachable_hosts_are_reported_quickly_with_08001`). Every test counts what
//! clients saw; none asserts on a duration.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgtenant::metrics::ClientState;
use pgtenant::registry::TenantName;
use tokio_postgres::Client;

/// The erp fixture in transaction mode with a `ledger` table for each tenant;
/// `pool`: more `[pool]` settings lines.
fn ledger_env(pool: &str) -> EnvBuilder {
    EnvBuilder::erp()
        .settings(&format!(
            "[proxy]\npool_mode = \"transaction\"\n[pool]\npool_size = 4\n{pool}\n"
        ))
        .seed(
            "erp",
            "CREATE TABLE tenant_acme.ledger (id bigint PRIMARY KEY); \
             ALTER TABLE tenant_acme.ledger OWNER TO app; \
             CREATE TABLE tenant_globex.ledger (id bigint PRIMARY KEY); \
             ALTER TABLE tenant_globex.ledger OWNER TO app;",
        )
}

/// The SQLSTATE of an error, or what it says when it has none.
fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map_or_else(|| describe(e), |c| c.code().to_string())
}

/// Clients of `tenant` waiting for a server connection, as the proxy counts them.
fn waiting(env: &Env, tenant: &str) -> u64 {
    env.server()
        .app()
        .metrics
        .tenant(&TenantName::new(tenant))
        .in_state(ClientState::Waiting)
}

type Transaction = tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>;

/// Sends one transaction (BEGIN, INSERT `id`, COMMIT) as one query, in a task.
fn transaction(client: Client, id: i64) -> Transaction {
    tokio::spawn(async move {
        client
            .simple_query(&format!("BEGIN; INSERT INTO ledger VALUES ({id}); COMMIT"))
            .await
            .map(|_| ())
    })
}

/// Whether `id` is in `tenant`'s ledger, asked of the host directly.
async fn in_ledger(env: &Env, tenant: &str, id: i64) -> bool {
    let direct = env.direct(ERP_HOST, "erp").await;
    direct
        .query_one(
            &format!("SELECT count(*) FROM tenant_{tenant}.ledger WHERE id = $1"),
            &[&id],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 1
}

/// Waits until the proxy counts `n` clients of `tenant` waiting for a server (the
/// bound only keeps a broken proxy from hanging the test); fails at once if one of
/// `clients` ended instead of waiting.
async fn until_waiting(env: &Env, tenant: &str, n: u64, clients: &[&Transaction]) {
    let seen = eventually(Duration::from_secs(60), || async {
        if clients.iter().any(|c| c.is_finished()) {
            return Some(false);
        }
        (waiting(env, tenant) == n).then_some(true)
    })
    .await;
    assert_eq!(
        seen,
        Some(true),
        "{tenant}: {} clients waiting, not {n}; one ended instead of waiting",
        waiting(env, tenant)
    );
}

/// Inserts rows in a loop (autocommit), remembering every id whose COMMIT was
/// acknowledged; reconnects when its session ended.
struct Writer {
    acked: Vec<i64>,
    after_restart: usize,
    errors: Vec<String>,
}

async fn write_until(
    addr: std::net::SocketAddr,
    first_id: i64,
    stop: Arc<AtomicBool>,
    restarted: Arc<AtomicBool>,
) -> Writer {
    let config = config_for(addr, "app", Some("acme"));
    let mut writer = Writer {
        acked: Vec::new(),
        after_restart: 0,
        errors: Vec::new(),
    };
    let mut client: Option<Client> = None;
    let mut id = first_id;
    while !stop.load(Ordering::Relaxed) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match connect(&config).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    writer.errors.push(code(&e));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let c = client.as_ref().unwrap();
        id += 1;
        match c.execute("INSERT INTO ledger VALUES ($1)", &[&id]).await {
            Ok(_) => {
                writer.acked.push(id);
                if restarted.load(Ordering::Relaxed) {
                    writer.after_restart += 1;
                }
            }
            Err(e) => {
                writer.errors.push(code(&e));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    writer
}

async fn ledger_rows(env: &Env) -> i64 {
    let direct = env.direct(ERP_HOST, "erp").await;
    direct
        .query_one("SELECT count(*) FROM tenant_acme.ledger", &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
}

/// `pg_ctl stop -m fast` under eight writers; while the cluster is down a client of
/// another tenant starts a transaction; then the cluster starts again. The waiting
/// client is served once it is back, and no acknowledged commit is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restarted_under_write_load_keeps_every_acknowledged_commit() {
    let mut env = ledger_env("checkout_timeout = \"120s\"\nconnect_timeout = \"2s\"")
        .start()
        .await;
    // Connected before the restart, idle (it holds no server in transaction mode).
    let late = env.connect("app", "globex").await;
    assert_eq!(items(&late).await, GLOBEX_ITEMS);

    let stop = Arc::new(AtomicBool::new(false));
    let restarted = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8i64)
        .map(|w| {
            tokio::spawn(write_until(
                env.addr(),
                w * 1_000_000,
                stop.clone(),
                restarted.clone(),
            ))
        })
        .collect();
    let loaded = eventually(Duration::from_secs(60), || async {
        (ledger_rows(&env).await >= 200).then_some(())
    })
    .await;
    assert!(loaded.is_some(), "no write load");

    env.stop_host(ERP_HOST);
    // Its transaction starts while the cluster is down, and waits for it.
    let late = transaction(late, 42);
    until_waiting(&env, "globex", 1, &[&late]).await;
    env.start_host_again(ERP_HOST);
    restarted.store(true, Ordering::Relaxed);

    let late = late.await.unwrap();
    assert!(
        late.is_ok(),
        "the client waiting through the restart got {:?}",
        late.map_err(|e| describe(&e))
    );
    assert!(in_ledger(&env, "globex", 42).await);

    let before = ledger_rows(&env).await;
    let resumed = eventually(Duration::from_secs(60), || async {
        (ledger_rows(&env).await >= before + 400).then_some(())
    })
    .await;
    assert!(resumed.is_some(), "writes did not resume after the restart");
    stop.store(true, Ordering::Relaxed);

    let mut acked = Vec::new();
    for (w, writer) in writers.into_iter().enumerate() {
        let writer = writer.await.unwrap();
        // Every writer is served again once the cluster is back.
        assert!(
            writer.after_restart > 0,
            "writer {w} never resumed: {:?}",
            writer.errors
        );
        for code in &writer.errors {
            // The terminated sessions or the connection lost; the shutting-down
            // cluster's 57P03 to a writer that reconnected as it went down.
            // tokio-postgres closes each statement it prepared unasked (Close, Sync):
            // a FATAL that answers that goes unread, and the next query finds the
            // connection closed (as it would talking to PostgreSQL directly).
            assert!(
                matches!(
                    code.as_str(),
                    "57P01" | "08006" | "57P03" | "connection closed"
                ),
                "writer {w}: {code} ({:?})",
                writer.errors
            );
        }
        acked.extend(writer.acked);
    }
    let direct = env.direct(ERP_HOST, "erp").await;
    let present: std::collections::HashSet<i64> = direct
        .query("SELECT id FROM tenant_acme.ledger", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost: Vec<_> = acked.iter().filter(|id| !present.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged commits lost: {lost:?}",
        lost.len()
    );
    assert!(acked.len() >= 600);
}

/// No load: the only sign of the shutdown is the FATAL each idle pooled server got,
/// read when a client next needs one. Clients that need a server while the host is
/// down wait and are served once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_waiting_through_a_quiet_restart_are_served() {
    let mut env = ledger_env("checkout_timeout = \"120s\"").start().await;
    let first = env.connect("app", "acme").await;
    let second = env.connect("app", "acme").await;
    assert_eq!(items(&first).await, ACME_ITEMS);

    env.stop_host(ERP_HOST);
    let first = transaction(first, 1);
    let second = transaction(second, 2);
    until_waiting(&env, "acme", 2, &[&first, &second]).await;
    env.start_host_again(ERP_HOST);
    for (id, waiter) in [(1, first), (2, second)] {
        let result = waiter.await.unwrap();
        assert!(
            result.is_ok(),
            "client {id}: {:?}",
            result.map_err(|e| describe(&e))
        );
        assert!(in_ledger(&env, "acme", id).await);
    }
}

/// A host seen going down that does not come back: a waiting client is refused
/// with the host's own state (08001) once its checkout time is spent, not served
/// and not left hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_stays_down_is_08001_after_checkout_timeout() {
    let mut env = ledger_env("checkout_timeout = \"1s\"").start().await;
    let client = env.connect("app", "acme").await;
    assert_eq!(items(&client).await, ACME_ITEMS);
    env.stop_host(ERP_HOST);
    let result = tokio::time::timeout(Duration::from_secs(60), transaction(client, 1))
        .await
        .expect("a client of a stopped host hung")
        .unwrap();
    let Err(e) = result else {
        panic!("served by a stopped host")
    };
    assert_eq!(code(&e), "08001", "{}", describe(&e));
    assert!(describe(&e).contains("unreachable"), "{}", describe(&e));
}
