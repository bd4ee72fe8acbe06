//! Bounded memory in transaction mode, measured on a pgtenant process of its own: a
//! client that sends and never reads, a stream of distinct statements, a result row
//! and a query far larger than the relay buffer. In each case the proxy's peak
//! resident memory (VmHWM, with RSS sampled alongside) may grow by less than 64 MiB.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::Proxy;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT_KIB: u64 = 64 * 1024;

/// Watches the proxy's memory from a baseline: VmHWM (reset to the current RSS at the
/// start where the kernel allows) and RSS sampled every 20 ms.
struct Watch {
    pid: u32,
    baseline: u64,
    sampled: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

impl Watch {
    fn start(proxy: &Proxy) -> Watch {
        proxy.reset_peak();
        let pid = proxy.child.id();
        let baseline = proxy.rss_kib();
        let sampled = Arc::new(AtomicU64::new(baseline));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, done) = (sampled.clone(), stop.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                s.fetch_max(status_kib(pid, "VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Watch {
            pid,
            baseline,
            sampled,
            stop,
        }
    }

    /// Peak growth over the baseline so far, in KiB.
    fn peak_growth(&self) -> u64 {
        let peak = status_kib(self.pid, "VmHWM:").max(self.sampled.load(Ordering::Relaxed));
        peak.saturating_sub(self.baseline)
    }

    /// RSS growth now, in KiB.
    fn growth_now(&self) -> u64 {
        status_kib(self.pid, "VmRSS:").saturating_sub(self.baseline)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A proxy on the erp fixture in transaction mode (default relay_buffer), a client of
/// acme that has run a query (so the pool and its greeting exist), and a moment to
/// settle before the baseline.
async fn proxy_with_a_client(env: &Env) -> (Proxy, tokio_postgres::Client) {
    let proxy = Proxy::start(env, "[pool]\npool_size = 2").await;
    let client = proxy.connect("acme").await;
    assert_eq!(items(&client).await, ACME_ITEMS);
    tokio::time::sleep(Duration::from_millis(300)).await;
    (proxy, client)
}

/// A client of acme that never reads: its receive buffer is shrunk to a few KiB
/// before it connects, so what the proxy sends it waits in the proxy, not in the
/// kernel. Logged in by hand.
async fn client_that_never_reads(proxy: &Proxy) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(proxy.addr()).await.expect("connecting");
    let login = startup_packet(PROTOCOL_3_0, &[("user", "app"), ("database", "acme")]);
    stream.write_all(&login).await.unwrap();
    let mut skim = Skim::default();
    let mut chunk = [0u8; 4096];
    while !skim.ready() {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "login refused: {:?}", skim.error());
        skim.feed(&chunk[..n]);
    }
    stream
}

/// Sends `unit` over and over without reading for up to 8 s or `times` units,
/// while another client keeps querying; the proxy's answers to the flood must not
/// pile up in its memory, and the other client must be served throughout.
async fn flood_without_reading(unit: &[u8], times: usize) {
    let env = EnvBuilder::erp().start().await;
    let (proxy, other) = proxy_with_a_client(&env).await;
    let watch = Watch::start(&proxy);
    let mut stream = client_that_never_reads(&proxy).await;
    let per_write = 10_000;
    let chunk = unit.repeat(per_write);
    let flooding = Arc::new(AtomicBool::new(true));
    let still = flooding.clone();
    let served = tokio::spawn(async move {
        let mut served = 0;
        while still.load(Ordering::Relaxed) {
            let query =
                tokio::time::timeout(Duration::from_secs(10), other.simple_query("SELECT 1"));
            query
                .await
                .expect("another client waited 10 s during the flood")
                .expect("another client during the flood");
            served += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (served, other)
    });
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut sent = 0;
    while sent < times {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.write_all(&chunk)).await {
            Ok(Ok(())) => sent += per_write,
            Ok(Err(e)) => panic!("the proxy dropped the flooding client: {e}"),
            // The proxy stopped reading it: backpressure.
            Err(_) => break,
        }
    }
    flooding.store(false, Ordering::Relaxed);
    let (served, other) = served.await.unwrap();
    let grown = watch.peak_growth();
    eprintln!(
        "{sent} messages sent, {served} queries of another client served, peak +{:.1} MiB",
        mib(grown)
    );
    assert_eq!(items(&other).await, ACME_ITEMS);
    assert!(
        served > 0,
        "no query of another client ran during the flood"
    );
    assert!(
        grown < LIMIT_KIB,
        "peak RSS grew by {:.1} MiB while a client sent {sent} messages without reading",
        mib(grown)
    );
}

fn sync() -> Vec<u8> {
    message(b'S', &[])
}

fn close_statement(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    message(b'C', &body)
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = name.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(sql.as_bytes());
    body.extend_from_slice(&[0, 0, 0]);
    message(b'P', &body)
}

/// Between transactions the proxy answers a bare Sync itself (ReadyForQuery).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_sent_without_reading_do_not_pile_up() {
    flood_without_reading(&sync(), 2_000_000).await;
}

/// The proxy answers a Close of a named statement itself (CloseComplete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_and_sync_sent_without_reading_do_not_pile_up() {
    let unit = [close_statement("nothing"), sync()].concat();
    flood_without_reading(&unit, 2_000_000).await;
}

/// 200,000 distinct statement texts of ~450 bytes, prepared and closed by clients
/// that come and go: what the proxy keeps of them once they left is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_statements_do_not_accumulate() {
    let env = EnvBuilder::erp().start().await;
    let (proxy, other) = proxy_with_a_client(&env).await;
    let watch = Watch::start(&proxy);
    let pad = "x".repeat(400);
    let (total, per_client, per_batch) = (200_000, 25_000, 500);
    // Two clients at a time, each leaving after `per_client` statements.
    let clients = (0..2).map(|lane| {
        let pad = &pad;
        let proxy = &proxy;
        async move {
            let mut n = lane * per_client;
            while n < total {
                let mut raw = Raw::acme(proxy.addr()).await;
                for _ in 0..per_client / per_batch {
                    let mut batch = Vec::new();
                    for i in n..n + per_batch {
                        batch.extend(parse("s", &format!("SELECT '{pad}' AS c{i}")));
                        batch.extend(close_statement("s"));
                    }
                    batch.extend(sync());
                    raw.send(&batch).await;
                    let replies = raw.read_until_ready().await;
                    if let Some(e) = replies.iter().find(|m| m.tag == b'E') {
                        panic!("statement {n}: {:?}", e.error());
                    }
                    n += per_batch;
                }
                n += per_client; // the other lane's share
            }
        }
    });
    futures_util::future::join_all(clients).await;
    assert_eq!(items(&other).await, ACME_ITEMS);
    let peak = watch.peak_growth();
    let settled = eventually(Duration::from_secs(10), || async {
        (watch.growth_now() < LIMIT_KIB).then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "RSS stays {:.1} MiB above the baseline after {total} distinct statements \
         (peak {:.1} MiB)",
        mib(watch.growth_now()),
        mib(peak)
    );
}

/// Reads a backend stream without keeping it: each message's tag and length, and the
/// bodies of small ones.
#[derive(Default)]
struct Skim {
    /// (tag, body length, body if under 1 KiB)
    messages: Vec<(u8, usize, Vec<u8>)>,
    header: Vec<u8>,
    body_left: usize,
    body: Vec<u8>,
}

impl Skim {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.header.len() < 5 {
                let take = (5 - self.header.len()).min(bytes.len());
                self.header.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.header.len() == 5 {
                    let len = u32::from_be_bytes(self.header[1..5].try_into().unwrap());
                    self.body_left = len as usize - 4;
                    self.body.clear();
                    if self.body_left == 0 {
                        self.finish();
                    }
                }
                continue;
            }
            let take = self.body_left.min(bytes.len());
            if self.body.len() + take <= 1024 {
                self.body.extend_from_slice(&bytes[..take]);
            }
            self.body_left -= take;
            bytes = &bytes[take..];
            if self.body_left == 0 {
                self.finish();
            }
        }
    }

    fn finish(&mut self) {
        let len = u32::from_be_bytes(self.header[1..5].try_into().unwrap()) as usize - 4;
        let body = if len <= 1024 {
            std::mem::take(&mut self.body)
        } else {
            Vec::new()
        };
        self.messages.push((self.header[0], len, body));
        self.header.clear();
    }

    fn ready(&self) -> bool {
        self.messages.last().is_some_and(|m| m.0 == b'Z')
    }

    fn error(&self) -> Option<ErrorFields> {
        self.messages
            .iter()
            .find(|m| m.0 == b'E')
            .map(|m| ErrorFields::parse(&m.2))
    }
}

/// A 256 MiB text value (PostgreSQL allows up to 1 GB) read by a slow client: the
/// proxy passes the row through rather than holding it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_row_to_a_slow_reader_is_not_buffered_whole() {
    let env = EnvBuilder::erp().start().await;
    let (proxy, other) = proxy_with_a_client(&env).await;
    let watch = Watch::start(&proxy);
    let size = 256 << 20;
    let mut raw = Raw::acme(proxy.addr()).await;
    raw.send(&query_message(&format!("SELECT repeat('x', {size})")))
        .await;
    let mut skim = Skim::default();
    let mut chunk = vec![0u8; 64 << 10];
    while !skim.ready() {
        let n = tokio::time::timeout(Duration::from_secs(60), raw.stream.read(&mut chunk))
            .await
            .expect("no bytes from the proxy for 60 s")
            .expect("reading the row");
        assert!(n > 0, "the proxy closed the connection: {:?}", skim.error());
        skim.feed(&chunk[..n]);
        // About 64 MB/s: slower than the server sends.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(skim.error().is_none(), "{:?}", skim.error());
    let row = skim
        .messages
        .iter()
        .find(|m| m.0 == b'D')
        .expect("a DataRow");
    assert_eq!(row.1, 2 + 4 + size, "DataRow length");
    let grown = watch.peak_growth();
    assert_eq!(items(&other).await, ACME_ITEMS);
    assert!(
        grown < LIMIT_KIB,
        "peak RSS grew by {:.1} MiB relaying one {} MiB row",
        mib(grown),
        size >> 20
    );
}

/// A 200 MiB simple Query (max_message_size is 1 GiB by default) goes through
/// without the proxy holding it whole, and the server's answer comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_query_is_not_buffered_whole() {
    let env = EnvBuilder::erp().start().await;
    let (proxy, other) = proxy_with_a_client(&env).await;
    let size = 200 << 20;
    let sql = format!("SELECT length('{}')", "x".repeat(size));
    let bytes = query_message(&sql);
    drop(sql);
    let watch = Watch::start(&proxy);
    let mut raw = Raw::acme(proxy.addr()).await;
    raw.timeout = Duration::from_secs(120);
    raw.send(&bytes).await;
    let replies = raw.read_until_ready().await;
    if let Some(e) = replies.iter().find(|m| m.tag == b'E') {
        panic!("{:?}", e.error());
    }
    let row = replies.iter().find(|m| m.tag == b'D').expect("a row");
    assert_eq!(
        row.data_row()[0].as_deref(),
        Some(size.to_string().as_str())
    );
    let grown = watch.peak_growth();
    assert_eq!(items(&other).await, ACME_ITEMS);
    assert!(
        grown < LIMIT_KIB,
        "peak RSS grew by {:.1} MiB relaying one {} MiB query",
        mib(grown),
        size >> 20
    );
}

/// A named prepared statement bound with a 128 MiB parameter: the proxy rewrites the
/// Bind's names from its first bytes and streams the parameter, twice, so the second
/// Bind may run on the other server (where the statement is prepared again first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_bind_of_a_named_statement_is_not_buffered_whole() {
    let env = EnvBuilder::erp().start().await;
    let (proxy, other) = proxy_with_a_client(&env).await;
    let client = proxy.connect("acme").await;
    let statement = client
        .prepare("SELECT length($1::bytea)::int8")
        .await
        .unwrap();
    let size = 128usize << 20;
    let param = vec![7u8; size];
    let watch = Watch::start(&proxy);
    for _ in 0..2 {
        let row = client.query_one(&statement, &[&param]).await.unwrap();
        assert_eq!(row.get::<_, i64>(0), size as i64);
        assert_eq!(items(&other).await, ACME_ITEMS);
    }
    let grown = watch.peak_growth();
    assert!(
        grown < LIMIT_KIB,
        "peak RSS grew by {:.1} MiB relaying a {} MiB parameter",
        mib(grown),
        size >> 20
    );
}
