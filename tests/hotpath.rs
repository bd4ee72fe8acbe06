//! Counts on the hot path that must not grow, measured on a pgtenant process (so its
//! /proc counters are its own): write system calls per round trip, server
//! connections opened per 10,000 transactions, and memory held for a client that
//! stops reading a large result.

mod common;

use std::time::Duration;

use common::process::Proxy;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_write_each_way_per_round_trip() {
    let env = EnvBuilder::erp().start().await;
    let proxy = Proxy::start(&env, "").await;
    let client = proxy.connect("acme").await;
    client.simple_query("SELECT 1").await.unwrap();
    let before = proxy.writes();
    let rounds = 2_000;
    for _ in 0..rounds {
        client.simple_query("SELECT 1").await.unwrap();
    }
    let per_round_trip = (proxy.writes() - before) as f64 / rounds as f64;
    // One write towards the server, one towards the client.
    assert!(
        per_round_trip <= 2.05,
        "{per_round_trip:.2} writes per round trip"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_transactions_open_no_more_than_the_pool() {
    let env = EnvBuilder::erp().start().await;
    let proxy = Proxy::start(&env, "[pool]\npool_size = 2").await;
    let direct = env.direct("pg-a", "postgres").await;
    let sessions = || async {
        direct
            .query_one(
                "SELECT sessions FROM pg_stat_database WHERE datname = 'erp'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let before = sessions().await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = proxy.connect("acme").await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..2_500 {
                client.simple_query("SELECT 1").await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let opened = sessions().await - before;
    assert!(
        opened <= 2,
        "{opened} server connections opened for 10,000 transactions on pool_size 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_make_the_proxy_buffer() {
    let env = EnvBuilder::erp().start().await;
    let proxy = Proxy::start(&env, "").await;
    // Warm up so the baseline includes the connection's own state.
    let warm = proxy.connect("acme").await;
    warm.simple_query("SELECT 1").await.unwrap();
    let baseline = proxy.rss_kib();

    // ~200 MB of result rows to a client that never reads them.
    let mut raw = Raw::acme(format!("127.0.0.1:{}", proxy.port).parse().unwrap()).await;
    raw.send(&query_message(
        "SELECT repeat('x', 1000) FROM generate_series(1, 200000)",
    ))
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = proxy.rss_kib().saturating_sub(baseline);
    assert!(
        grown < 16 * 1024,
        "proxy grew by {grown} KiB for a client that does not read"
    );
    // Other clients are served meanwhile.
    assert_eq!(items(&warm).await, ACME_ITEMS);
}

/// Frames larger than the relay's queue bound, with more frames behind them in the
/// same read: everything must arrive, in both pool modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_larger_than_the_relay_buffer_pass_both_ways() {
    let env = EnvBuilder::erp().start().await;
    for mode in ["session", "transaction"] {
        let server = env
            .start_server(&format!(
                "[proxy]\npool_mode = \"{mode}\"\nrelay_buffer = 65536\n"
            ))
            .await;
        let client = connect(&config_for(server.local_addr(), "app", Some("acme")))
            .await
            .unwrap();
        let data: Vec<u8> = (0..(1 << 20)).map(|i| (i * 7 % 251) as u8).collect();
        for _ in 0..3 {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&data];
            let query = client.query_one(
                "SELECT $1::bytea, length($1::bytea), md5($1::bytea)",
                &params,
            );
            let row = tokio::time::timeout(Duration::from_secs(30), query)
                .await
                .unwrap_or_else(|_| panic!("{mode}: no answer within 30 s"))
                .unwrap_or_else(|e| panic!("{mode}: {}", describe(&e)));
            assert_eq!(
                row.get::<_, Vec<u8>>(0),
                data,
                "{mode}: bytea came back different"
            );
            assert_eq!(row.get::<_, i32>(1), 1 << 20);
        }
        // Several big rows per read, then the command tag and ReadyForQuery.
        let query = client.query(
            "SELECT repeat('x', 300000) FROM generate_series(1, 20)",
            &[],
        );
        let rows = tokio::time::timeout(Duration::from_secs(30), query)
            .await
            .unwrap_or_else(|_| panic!("{mode}: no answer within 30 s"))
            .unwrap();
        assert_eq!(rows.len(), 20, "{mode}");
        assert_eq!(items(&client).await, ACME_ITEMS, "{mode}");
        server.stop().await;
    }
}

/// Idle transaction-mode clients park: what their tasks held goes back to the system,
/// so 3,000 of them cost well under the ~2 KiB each an idle task with its session
/// costs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_idle_clients_hold_little_memory() {
    let env = EnvBuilder::erp().start().await;
    let proxy = Proxy::start(&env, "park_after = \"200ms\"").await;
    let warm = proxy.connect("acme").await;
    warm.simple_query("SELECT 1").await.unwrap();
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = proxy.rss_kib();

    let count = 3_000;
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count / 100 {
        let batch = (0..100).map(|_| async {
            let client = proxy.connect("acme").await;
            client.simple_query("SELECT 1").await.unwrap();
            client
        });
        clients.extend(futures_util::future::join_all(batch).await);
    }
    let per_client = |rss: u64| rss.saturating_sub(before) as f64 / count as f64;
    let settled = eventually(Duration::from_secs(10), || async {
        (per_client(proxy.rss_kib()) <= 1.0).then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "{count} idle clients hold {:.2} KiB each",
        per_client(proxy.rss_kib())
    );
    // Still connected, and served again.
    for client in clients.iter().step_by(300) {
        client.simple_query("SELECT 1").await.unwrap();
    }
}

/// An idle proxy sleeps: pool upkeep runs once a second unless a tenant waits for
/// room on a host (it ran every `host_turn`, 100 ms, which cost an idle proxy ten
/// wakeups a second and busy ones extra `epoll_wait` calls per round trip).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_proxy_wakes_about_once_a_second() {
    let env = EnvBuilder::erp().start().await;
    let proxy = Proxy::start(&env, "").await;
    let client = proxy.connect("acme").await;
    client.simple_query("SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The event loop runs on the main thread (one worker, the default).
    let status = format!("task/{}/status", proxy.child.id());
    let before = proxy.proc_field(&status, "voluntary_ctxt_switches:");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let wakeups = proxy.proc_field(&status, "voluntary_ctxt_switches:") - before;
    // Upkeep and the registry file check, once a second each, and slack (14 here;
    // 86 with upkeep every 100 ms).
    assert!(wakeups <= 40, "an idle proxy woke {wakeups} times in 4 s");
}
