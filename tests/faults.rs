//! Faults against real clusters: server connections terminated in a transaction, a
//! cluster restarted under write load, a host that accepts TCP and never answers, a
//! registry file broken or removed under load, and a server that sends a malformed
//! or oversized message (a small fault injector in this file that logs in and then
//! misbehaves). Each test counts what clients saw; none asserts on a duration.
//!
//! Covered elsewhere: an idle server connection terminated and replaced unseen
//! (tests/pooling.rs `a_server_that_died_while_idle_is_replaced_unnoticed`), a
//! stopped or crashed host refused with 08001 (tests/core.rs
//! `unreachable_hosts_are_reported_quickly_with_08001`), an invalid registry
//! file refused whole (tests/core.rs
//! `registry_reload_adds_tenants_and_keeps_the_last_good_snapshot`).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_postgres::Client;

/// The erp fixture in transaction mode; `proxy` and `pool`: more settings lines.
fn txn_env(proxy: &str, pool: &str) -> EnvBuilder {
    EnvBuilder::erp().settings(&format!(
        "[proxy]\npool_mode = \"transaction\"\n{proxy}\n[pool]\npool_size = 4\n{pool}\n"
    ))
}

/// Clients that query in a loop until stopped, counting answers and errors.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    errors: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(env: &Env, tenants: &[(&str, &'static [&'static str])]) -> Load {
        let load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            ok: Arc::new(AtomicUsize::new(0)),
            errors: Arc::new(Mutex::new(Vec::new())),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for (tenant, want) in tenants {
            let client = env.connect("app", tenant).await;
            let (stop, ok, errors) = (load.stop.clone(), load.ok.clone(), load.errors.clone());
            let tenant = tenant.to_string();
            let want: &'static [&'static str] = want;
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client
                        .simple_query("SELECT name FROM items ORDER BY id")
                        .await
                    {
                        Ok(messages) if names(&messages) == want => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => errors.lock().unwrap().push(format!("{tenant}: wrong rows")),
                        Err(e) => errors
                            .lock()
                            .unwrap()
                            .push(format!("{tenant}: {}", describe(&e))),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        Load { tasks, ..load }
    }

    fn answered(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `more` further answers came (a count, not a duration; the bound
    /// only keeps a broken proxy from hanging the test).
    async fn wait_for(&self, more: usize) {
        let target = self.answered() + more;
        let reached = eventually(Duration::from_secs(60), || async {
            (self.answered() >= target).then_some(())
        })
        .await;
        assert!(
            reached.is_some(),
            "the other clients stopped being answered: {:?}",
            self.errors.lock().unwrap()
        );
    }

    /// Stops the clients; returns their answers and errors.
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a load client panicked");
        }
        let errors = self.errors.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), errors)
    }
}

fn names(messages: &[tokio_postgres::SimpleQueryMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .collect()
}

const OTHERS: &[(&str, &[&str])] = &[
    ("acme", ACME_ITEMS),
    ("globex", GLOBEX_ITEMS),
    ("acme", ACME_ITEMS),
];

/// The SQLSTATE of an error, or what it says when it has none.
fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map_or_else(|| describe(e), |c| c.code().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_terminated_in_a_transaction_fails_that_client_only() {
    let env = txn_env("", "").start().await;
    let load = Load::start(&env, OTHERS).await;
    load.wait_for(20).await;

    // The victim speaks the protocol by hand, so that what it is told is read in
    // full whenever it comes (a library drops a FATAL that answers nothing it asked).
    let mut victim = Raw::acme(env.addr()).await;
    victim.send(&query_message("BEGIN")).await;
    victim.read_until_ready().await;
    victim.send(&query_message("SELECT pg_backend_pid()")).await;
    let reply = victim.read_until_ready().await;
    let row = reply.iter().find(|m| m.tag == b'D').expect("a row");
    let pid: i32 = row.data_row()[0].clone().unwrap().parse().unwrap();
    let direct = env.direct(ERP_HOST, "postgres").await;
    let killed: bool = direct
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed);

    // The client in the transaction hears of it: the server's own FATAL 57P01, then
    // the proxy's 08006 as the server connection ends; then the proxy closes.
    let told: Vec<_> = victim
        .read_to_end()
        .await
        .iter()
        .map(|m| match m.tag {
            b'E' => m.error().code,
            tag => (tag as char).to_string(),
        })
        .collect();
    assert!(
        told.first().is_some_and(|c| c == "57P01" || c == "08006") && told.len() <= 2,
        "{told:?}"
    );
    assert_eq!(told.last().map(String::as_str), Some("08006"), "{told:?}");
    // A new connection works at once, on a fresh server.
    let again = env.connect("app", "acme").await;
    assert_eq!(items(&again).await, ACME_ITEMS);

    load.wait_for(20).await;
    let (answered, errors) = load.finish().await;
    assert!(errors.is_empty(), "other clients saw errors: {errors:?}");
    assert!(answered >= 40);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restarted_under_write_load_keeps_every_acknowledged_commit() {
    let mut env = txn_env("", "checkout_timeout = \"20s\"\nconnect_timeout = \"2s\"")
        .seed(
            "erp",
            "CREATE TABLE tenant_acme.ledger (id bigint PRIMARY KEY); \
             ALTER TABLE tenant_acme.ledger OWNER TO app;",
        )
        .start()
        .await;
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

    tokio::task::block_in_place(|| {
        let host = env.hosts.iter_mut().find(|h| h.name() == ERP_HOST).unwrap();
        host.stop();
        host.start_again().expect("cluster starts again");
    });
    restarted.store(true, Ordering::Relaxed);
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
            // The terminated sessions, the connection lost, or the host not yet back.
            // tokio-postgres closes each statement it prepared unasked (Close, Sync):
            // a FATAL that answers that goes unread, and the next query finds the
            // connection closed (as it would talking to PostgreSQL directly).
            assert!(
                matches!(
                    code.as_str(),
                    "57P01" | "08006" | "08001" | "57P03" | "connection closed"
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

/// A TCP listener that accepts connections and never says a word.
async fn silent_host() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (address, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_never_answers_is_08001_after_connect_timeout_and_others_go_on() {
    let (address, _silent) = silent_host().await;
    let env = txn_env("", "connect_timeout = \"1s\"")
        .registry_extra(&format!(
            "[hosts.pg-silent]\naddress = \"{address}\"\n\
             [tenants.ghost]\nhost = \"pg-silent\"\ndatabase = \"erp\"\nbackend_user = \"app\"\n"
        ))
        .start()
        .await;
    let load = Load::start(&env, OTHERS).await;
    load.wait_for(20).await;

    // Ten clients of the silent host at once: each refused, none hanging.
    let attempts: Vec<_> = (0..10)
        .map(|_| {
            let config = config_for(env.addr(), "app", Some("ghost"));
            tokio::spawn(async move {
                let client = connect(&config).await?;
                client.simple_query("SELECT 1").await.map(|_| ())
            })
        })
        .collect();
    for attempt in attempts {
        let result = tokio::time::timeout(Duration::from_secs(60), attempt)
            .await
            .expect("a client of the silent host hung")
            .unwrap();
        let Err(e) = result else {
            panic!("served by a host that never answers")
        };
        assert_eq!(code(&e), "08001", "{}", describe(&e));
        assert!(describe(&e).contains("ghost"), "{}", describe(&e));
    }

    load.wait_for(20).await;
    let (_, errors) = load.finish().await;
    assert!(errors.is_empty(), "other tenants saw errors: {errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_file_broken_under_load_leaves_the_last_snapshot_serving() {
    let env = txn_env("", "").start().await;
    let load = Load::start(&env, OTHERS).await;
    load.wait_for(20).await;

    let text = env.render(ERP_REGISTRY);
    let path = env.registry_path.clone();
    let half = text.len() / 2;
    // A file cut in half (as by a full disk), an empty one, a binary one, none at all.
    let broken: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("cut in half", Some(text.as_bytes()[..half].to_vec())),
        ("empty", Some(Vec::new())),
        ("binary", Some(vec![0xff, 0xfe, 0, 1, 2, 0x80])),
        ("removed", None),
    ];
    for (name, contents) in broken {
        match contents {
            Some(bytes) => std::fs::write(&path, bytes).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
        // Answers keep coming across many watch intervals (200 ms each).
        load.wait_for(100).await;
        let client = env
            .try_connect("app", "globex")
            .await
            .unwrap_or_else(|e| panic!("new client with the registry {name}: {}", describe(&e)));
        assert_eq!(items(&client).await, GLOBEX_ITEMS, "{name}");
    }
    env.write_registry(ERP_REGISTRY);
    load.wait_for(20).await;
    let (_, errors) = load.finish().await;
    assert!(errors.is_empty(), "clients saw errors: {errors:?}");
}

/// What the fault injector does once a client has logged in.
#[derive(Clone, Copy, Debug)]
enum Misbehave {
    /// A message whose length field says 2 (less than its own four bytes).
    ShortLength,
    /// A RowDescription longer than `proxy.max_message_size`.
    Oversized,
}

/// A TCP server that speaks just enough of the protocol to log a connection in
/// (AuthenticationOk, BackendKeyData, ReadyForQuery) and answers a query that says
/// "fault" with a broken message. Counts the connections it saw closed.
async fn misbehaving_host(how: Misbehave) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let closed = Arc::new(AtomicUsize::new(0));
    let seen = closed.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let closed = seen.clone();
            tokio::spawn(async move {
                let mut len = [0u8; 4];
                socket.read_exact(&mut len).await.unwrap();
                let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                socket.read_exact(&mut startup).await.unwrap();
                let mut hello = message(b'R', &[0, 0, 0, 0]);
                hello.extend(message(b'S', b"server_version\x0015.0\0"));
                hello.extend(message(b'S', b"standard_conforming_strings\0on\0"));
                hello.extend(message(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]));
                hello.extend(message(b'Z', b"I"));
                socket.write_all(&hello).await.unwrap();
                // Queries are answered (the proxy may set parameters first) until the
                // client's own, which gets the fault.
                loop {
                    let mut header = [0u8; 5];
                    if socket.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    let len = u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
                    let mut body = vec![0u8; len - 4];
                    if socket.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if header[0] == b'Q' && body.windows(5).any(|w| w == b"fault") {
                        break;
                    }
                    if header[0] == b'Q' {
                        let mut done = message(b'C', b"SET\0");
                        done.extend(message(b'Z', b"I"));
                        socket.write_all(&done).await.unwrap();
                    }
                }
                let bad = match how {
                    Misbehave::ShortLength => vec![b'T', 0, 0, 0, 2],
                    Misbehave::Oversized => {
                        let mut m = vec![b'T'];
                        m.extend_from_slice(&(64u32 << 20).to_be_bytes());
                        m.extend_from_slice(&[0; 1024]);
                        m
                    }
                };
                let _ = socket.write_all(&bad).await;
                // The proxy must close this connection: reads end.
                let mut rest = [0u8; 1024];
                loop {
                    match tokio::time::timeout(Duration::from_secs(30), socket.read(&mut rest))
                        .await
                    {
                        Ok(Ok(0)) | Ok(Err(_)) => {
                            closed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Ok(Ok(_)) => {}
                        Err(_) => return,
                    }
                }
            });
        }
    });
    (address, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_sending_a_broken_message_is_closed_and_the_client_told_08006() {
    for how in [Misbehave::ShortLength, Misbehave::Oversized] {
        let (address, closed) = misbehaving_host(how).await;
        let env = txn_env("max_message_size = 1048576", "")
            .registry_extra(&format!(
                "[hosts.pg-broken]\naddress = \"{address}\"\n\
                 [tenants.broken]\nhost = \"pg-broken\"\ndatabase = \"erp\"\nbackend_user = \"app\"\n"
            ))
                .start()
            .await;
        let load = Load::start(&env, OTHERS).await;
        load.wait_for(20).await;

        for round in 0..3 {
            // The proxy may meet the fault while logging the client in (it talks to
            // the server first) or at the client's query: either way, 08006.
            let attempt = async {
                let client = connect(&config_for(env.addr(), "app", Some("broken"))).await?;
                client.simple_query("SELECT 'fault'").await.map(|_| ())
            };
            let result = tokio::time::timeout(Duration::from_secs(60), attempt)
                .await
                .unwrap_or_else(|_| panic!("{how:?}: the client hung"));
            let Err(e) = result else {
                panic!("{how:?}: a broken server served a query")
            };
            assert_eq!(code(&e), "08006", "{how:?} round {round}: {}", describe(&e));
        }
        let all_closed = eventually(Duration::from_secs(30), || async {
            (closed.load(Ordering::Relaxed) >= 3).then_some(())
        })
        .await;
        assert!(
            all_closed.is_some(),
            "{how:?}: the proxy kept a broken server open"
        );

        load.wait_for(20).await;
        let (_, errors) = load.finish().await;
        assert!(
            errors.is_empty(),
            "{how:?}: other clients saw errors: {errors:?}"
        );
    }
}
