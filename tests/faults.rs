//! Faults against real clusters: server connections terminated in a transaction or
//! just after one, a host that accepts TCP and never answers, a registry file broken
//! or removed under load, and a server that sends a malformed or oversized message (a
//! small fault injector in this file that logs in and then misbehaves). Each test
//! counts what clients saw; none asserts on a duration.
//!
//! Covered elsewhere: a cluster restarted (tests/restarts.rs), an idle server
//! connection terminated and replaced unseen (tests/pooling.rs
//! `a_server_that_died_while_idle_is_replaced_unnoticed`), a stopped or crashed host
//! refused with 08001 (tests/core.rs
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
    // The proxy closed that server without a CancelRequest: its process was gone, and
    // PostgreSQL logs one for a process it does not know. (Looked for a while: it
    // would come from a task closing the server in the background.)
    let log = env.host(ERP_HOST).log_file();
    let unknown = format!("PID {pid} in cancel request did not match any process");
    let logged = eventually(Duration::from_secs(3), || async {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains(&unknown)
            .then_some(())
    })
    .await;
    assert!(logged.is_none(), "{unknown}");
}

/// Whole messages at the front of `bytes` (tag and body); the rest is left there.
fn take_messages(bytes: &mut Vec<u8>) -> Vec<Msg> {
    let mut messages = Vec::new();
    let mut at = 0;
    while bytes.len() >= at + 5 {
        let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        if bytes.len() < at + 1 + len {
            break;
        }
        messages.push(Msg {
            tag: bytes[at],
            body: bytes[at + 5..at + 1 + len].to_vec(),
        });
        at += 1 + len;
    }
    bytes.drain(..at);
    messages
}

/// Reads what the proxy sends `raw` until a ReadyForQuery has come; returns the
/// messages up to it, leaving the rest in `bytes`.
async fn read_through_ready(raw: &mut Raw, bytes: &mut Vec<u8>) -> Vec<Msg> {
    let mut got = Vec::new();
    loop {
        for msg in take_messages(bytes) {
            let done = msg.tag == b'Z';
            got.push(msg);
            if done {
                return got;
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(30), raw.stream.read(&mut chunk))
            .await
            .expect("the proxy went quiet")
            .unwrap_or(0);
        assert!(n > 0, "closed before ReadyForQuery; got {got:?}");
        bytes.extend_from_slice(&chunk[..n]);
    }
}

/// A server terminated right after it answered a transaction, before the proxy had
/// read that answer: its FATAL then arrives behind the ReadyForQuery that ends the
/// transaction. It answers nothing the client asked, so the client is not told; its
/// next transaction runs on another server. (Under load this is the common way a
/// terminated server dies: it is idle for the server, still attached for the proxy.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_terminated_just_after_a_transaction_is_replaced_unseen() {
    let env = txn_env("", "").start().await;
    let load = Load::start(&env, OTHERS).await;
    load.wait_for(20).await;

    // A result far larger than what the sockets and the proxy hold: the client reads
    // it slowly, so the proxy reads from the server only as fast as the client does.
    const ROWS: usize = 16_000;
    let mut victim = Raw::acme(env.addr()).await;
    victim
        .send(&query_message(&format!(
            "SELECT repeat('x', 1000) AS filler FROM generate_series(1, {ROWS})"
        )))
        .await;
    let direct = env.direct(ERP_HOST, "postgres").await;
    let mut bytes = Vec::new();
    // Once the server has sent it all and waits for the next query (its answer's
    // end still unread by the proxy, held back by the client), it is terminated.
    let pid = loop {
        let row = direct
            .query_opt(
                "SELECT pid, state, wait_event FROM pg_stat_activity \
                 WHERE query LIKE 'SELECT repeat(''x'', 1000) AS filler%'",
                &[],
            )
            .await
            .unwrap();
        let Some(row) = row else {
            // Not started yet.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if row.get::<_, Option<&str>>(1) == Some("idle")
            && row.get::<_, Option<&str>>(2) == Some("ClientRead")
        {
            break row.get::<_, i32>(0);
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(30), victim.stream.read(&mut chunk))
            .await
            .expect("the proxy went quiet")
            .unwrap();
        assert!(n > 0, "the proxy closed the connection");
        bytes.extend_from_slice(&chunk[..n]);
    };
    let killed: bool = direct
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    let gone = eventually(Duration::from_secs(30), || async {
        let n: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the server did not end");

    // The whole answer, and after it nothing: the next query is answered.
    let answer = read_through_ready(&mut victim, &mut bytes).await;
    let rows = answer.iter().filter(|m| m.tag == b'D').count();
    assert_eq!(rows, ROWS);
    assert!(
        answer.iter().all(|m| m.tag != b'E'),
        "an error in the answer"
    );
    victim
        .send(&query_message("SELECT 'still here', pg_backend_pid()"))
        .await;
    let next = read_through_ready(&mut victim, &mut bytes).await;
    let tags: Vec<char> = next.iter().map(|m| m.tag as char).collect();
    assert_eq!(tags, ['T', 'D', 'C', 'Z'], "{next:?}");
    let row = next[1].data_row();
    assert_eq!(row[0].as_deref(), Some("still here"));
    assert_ne!(row[1].as_deref(), Some(pid.to_string().as_str()));

    load.wait_for(20).await;
    let (_, errors) = load.finish().await;
    assert!(errors.is_empty(), "other clients saw errors: {errors:?}");
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
