//! Hostile input: startup packets and messages no client library sends, cancel
//! floods, thousands of half-open connections and a slow 1 GiB message. Each gets its
//! SQLSTATE or a close, and a client beside it keeps being served (counted, never
//! timed).
//!
//! Covered elsewhere: startup lengths 4 and 20,000, protocol 2.0, an unknown request
//! code, a missing terminator, stalled startups (tests/core.rs
//! `bad_startup_packets_are_refused_and_others_keep_working`); SSLRequest and
//! GSSENCRequest (tests/core.rs `encryption_requests_and_protocol_negotiation`); a
//! client that never reads (tests/hotpath.rs
//! `a_client_that_stops_reading_does_not_make_the_proxy_buffer`, tests/txn_memory.rs
//! `syncs_sent_without_reading_do_not_pile_up`); a huge query streamed
//! (tests/txn_memory.rs `a_huge_query_is_not_buffered_whole`).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::process::Proxy;
use common::*;
use tokio::io::AsyncWriteExt;
use tokio_postgres::Client;

/// A client that queries in a loop until stopped; counts its answers, panics on an
/// error.
struct Bystander {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Bystander {
    fn start(client: Client) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let (s, a) = (stop.clone(), answered.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                assert_eq!(items(&client).await, ACME_ITEMS);
                a.fetch_add(1, Ordering::Relaxed);
            }
        });
        Bystander {
            stop,
            answered,
            task,
        }
    }

    /// Stops it; its answers while it ran.
    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.task
            .await
            .expect("the client beside the hostile ones failed");
        self.answered.load(Ordering::Relaxed)
    }
}

fn length_only(len: u32) -> Vec<u8> {
    let mut p = len.to_be_bytes().to_vec();
    p.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_startups_get_their_sqlstate() {
    let env = EnvBuilder::erp().start().await;
    let bystander = Bystander::start(env.connect("app", "acme").await);

    let many: Vec<(String, String)> = (0..10_000)
        .map(|i| (format!("p{i}"), "v".to_string()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("length 0", 0u32.to_be_bytes().to_vec(), "08P01"),
        ("length 3", 3u32.to_be_bytes().to_vec(), "08P01"),
        ("length 7", length_only(7), "08P01"),
        ("length 2^31-1", length_only(i32::MAX as u32), "08P01"),
        (
            "no user",
            startup_packet(PROTOCOL_3_0, &[("database", "acme")]),
            "28000",
        ),
        (
            "10,000 parameters",
            startup_packet(PROTOCOL_3_0, &many),
            "08P01",
        ),
        (
            "SSLRequest three times",
            packet(SSL_REQUEST_CODE, &[]).repeat(3),
            "08P01",
        ),
        (
            "a cancel request of the wrong length",
            packet(80_877_102, &[0, 0, 0, 1]),
            "08P01",
        ),
    ];
    for (name, bytes, want) in &cases {
        let mut raw = Raw::connect(env.addr()).await;
        raw.send(bytes).await;
        if name.starts_with("SSLRequest") {
            // Refused twice (a client may ask for SSL, then GSS), then a loop.
            assert_eq!(raw.read_byte().await, Some(b'N'));
            assert_eq!(raw.read_byte().await, Some(b'N'));
        }
        let told = raw.read_to_end().await;
        let errors: Vec<_> = told
            .iter()
            .filter(|m| m.tag == b'E')
            .map(|m| m.error())
            .collect();
        assert_eq!(errors.len(), 1, "{name}: {told:?}");
        assert_eq!(errors[0].code, *want, "{name}: {:?}", errors[0]);
        assert_eq!(errors[0].severity, "FATAL", "{name}");
    }

    // Random CancelRequests: each connection closed without a word, and the one
    // query running meanwhile is not cancelled.
    let runner = env.connect("app", "globex").await;
    let sleeping = tokio::spawn(async move { runner.simple_query("SELECT pg_sleep(1)").await });
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..500 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut raw = Raw::connect(env.addr()).await;
        raw.send(&packet(80_877_102, &seed.to_be_bytes())).await;
        assert!(raw.read_to_end().await.is_empty());
    }
    let slept = sleeping.await.unwrap();
    assert!(
        slept.is_ok(),
        "a random cancel key cancelled a query: {slept:?}"
    );

    assert!(bystander.finish().await > 0);
}

/// Logs in as acme and returns the raw session.
async fn session(env: &Env) -> Raw {
    Raw::acme(env.addr()).await
}

/// The pid of the one server connection of acme's pool (pool_size 1).
async fn server_pid(client: &Client) -> String {
    column(client, "SELECT pg_backend_pid()").await[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_are_refused_by_the_proxy_and_not_forwarded() {
    let env = EnvBuilder::erp()
        .settings("[proxy]\npool_mode = \"transaction\"\n[pool]\npool_size = 1\n")
        .start()
        .await;
    let other = env.connect("app", "acme").await;
    let pid = server_pid(&other).await;

    // Refused with 08P01 by the proxy and closed. Sent to a server they would end its
    // connection (PostgreSQL closes a session on an unknown message type): the one
    // server of the pool is the same one afterwards.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("length 0", vec![b'Q', 0, 0, 0, 0]),
        ("length 3", vec![b'Q', 0, 0, 0, 3]),
        ("length 2^31-1", vec![b'Q', 0x7f, 0xff, 0xff, 0xff]),
        ("unknown type Y", message(b'Y', b"junk")),
        ("password message after login", message(b'p', b"secret\0")),
        ("type 0", message(0, b"")),
    ];
    for (name, bytes) in &cases {
        let mut raw = session(&env).await;
        raw.send(bytes).await;
        let err = raw.expect_fatal().await;
        assert_eq!(err.code, "08P01", "{name}: {err:?}");
        assert_eq!(server_pid(&other).await, pid, "{name} reached the server");
    }

    // A Query without its NUL: the server says 08P01 for that query, the session
    // goes on.
    let mut raw = session(&env).await;
    raw.send(&message(b'Q', b"SELECT 1")).await;
    let told = raw.read_until_ready().await;
    let errors: Vec<_> = told
        .iter()
        .filter(|m| m.tag == b'E')
        .map(|m| m.error())
        .collect();
    assert_eq!(errors.len(), 1, "{told:?}");
    assert_eq!(errors[0].code, "08P01", "{:?}", errors[0]);
    raw.send(&query_message("SELECT 1")).await;
    assert!(raw.read_until_ready().await.iter().any(|m| m.tag == b'D'));

    // CopyData, CopyDone and CopyFail outside a COPY: ignored, as the server does;
    // the session and the pool's one server go on.
    raw.send(&message(b'd', b"stray data")).await;
    raw.send(&message(b'c', b"")).await;
    raw.send(&message(b'f', b"stray fail\0")).await;
    raw.send(&query_message("SELECT 2")).await;
    let told = raw.read_until_ready().await;
    assert!(told.iter().all(|m| m.tag != b'E'), "{told:?}");
    assert!(told.iter().any(|m| m.tag == b'D'), "{told:?}");
    assert_eq!(items(&other).await, ACME_ITEMS);
    assert_eq!(server_pid(&other).await, pid);
}

/// Raises this process's open-file limit to its hard limit; returns it.
fn raise_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_half_open_connections_while_a_client_works() {
    let limit = raise_file_limit();
    assert!(
        limit >= 12_000,
        "open-file limit {limit} is too low for this test"
    );
    let env = EnvBuilder::erp().start().await;
    // A process of its own: its descriptors are not this test's.
    let proxy = Proxy::start(&env, "startup_timeout = \"5s\"").await;
    let client = proxy.connect("acme").await;
    let bystander = Bystander::start(client);

    // Each sends half a startup packet and then nothing.
    let mut half_open = Vec::new();
    let mut refused = 0;
    for _ in 0..10_000 {
        match tokio::net::TcpStream::connect(proxy.addr()).await {
            Ok(mut stream) => {
                if stream.write_all(&length_only(100)).await.is_err() {
                    refused += 1;
                }
                half_open.push(stream);
            }
            Err(_) => refused += 1,
        }
    }
    let during = bystander.answered.load(Ordering::Relaxed);
    // A new client after the storm is served once the stalled ones time out.
    let fresh = eventually(Duration::from_secs(60), || async {
        let client = connect(&config_for(proxy.addr(), "app", Some("globex")))
            .await
            .ok()?;
        Some(items(&client).await)
    })
    .await;
    assert_eq!(
        fresh.expect("no new client served after the storm"),
        GLOBEX_ITEMS
    );
    drop(half_open);
    let answered = bystander.finish().await;
    assert!(
        answered > during,
        "the working client stopped being answered"
    );
    assert!(during > 0);
    eprintln!("10,000 half-open connections: {refused} refused at connect or write");
    let mut proxy = proxy;
    assert!(proxy.running(), "the proxy died");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gib_message_streamed_slowly_is_never_buffered_whole() {
    let env = EnvBuilder::erp().start().await;
    let proxy = Proxy::start(&env, "").await;
    let bystander = Bystander::start(proxy.connect("acme").await);
    let baseline = proxy.rss_kib();
    let peak_reset = proxy.reset_peak();

    // A Query that says it is 1 GiB long (10 bytes short: PostgreSQL's own limit is
    // a little under 1 GiB), of which 64 MiB arrive in 64 KiB pieces; then the
    // client goes away.
    let mut raw = Raw::acme(proxy.addr()).await;
    let mut header = vec![b'Q'];
    header.extend_from_slice(&((1u32 << 30) - 10).to_be_bytes());
    header.extend_from_slice(b"SELECT length('");
    raw.send(&header).await;
    let chunk = vec![b'x'; 64 << 10];
    let mut most = 0;
    for i in 0..1024 {
        if let Err(e) = raw.stream.write_all(&chunk).await {
            panic!("chunk {i} of the slow message: {e}");
        }
        if i % 64 == 0 {
            most = most.max(proxy.rss_kib());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let peak = if peak_reset { proxy.peak_kib() } else { most };
    drop(raw);
    let grown = peak.saturating_sub(baseline);
    assert!(
        grown < 48 * 1024,
        "RSS grew by {} MiB while 64 MiB of a 1 GiB message streamed",
        grown >> 10
    );
    assert!(bystander.finish().await > 0);
    // A length over the limit is refused before any of it arrives.
    let mut raw = Raw::acme(proxy.addr()).await;
    raw.send(&[b'Q', 0x40, 0, 0, 0]).await;
    assert_eq!(raw.expect_fatal().await.code, "08P01");
}
