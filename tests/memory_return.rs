//! Memory comes back: after a burst (10,000 short connections; clients holding large
//! statements) a pgtenant process's RSS returns near its baseline, measured in
//! /proc. Counts and sizes only: the settling is awaited with a generous bound that
//! only keeps a leak from hanging the test.

mod common;

use std::time::Duration;

use common::process::Proxy;
use common::*;

/// RSS may stay this far above the baseline once the burst is over.
const NEAR_KIB: u64 = 16 * 1024;

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Waits for RSS to come within `NEAR_KIB` of `baseline`; returns where it settled.
async fn settle(proxy: &Proxy, baseline: u64) -> Option<u64> {
    eventually(Duration::from_secs(30), || async {
        let now = proxy.rss_kib();
        (now < baseline + NEAR_KIB).then_some(now)
    })
    .await
}

/// A pgtenant process, warmed up by `warm` short connections so that the baseline
/// holds what any proxy that served clients holds.
async fn warmed_proxy(env: &Env, warm: usize) -> (Proxy, u64) {
    let proxy = Proxy::start(env, "").await;
    for _ in 0..warm {
        let client = proxy.connect("acme").await;
        assert_eq!(items(&client).await, ACME_ITEMS);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = proxy.rss_kib();
    (proxy, baseline)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_comes_back_after_ten_thousand_short_connections() {
    let env = EnvBuilder::erp().start().await;
    let (proxy, baseline) = warmed_proxy(&env, 200).await;
    proxy.reset_peak();

    // 100 at a time, each: log in, one query, leave.
    let addr = proxy.addr();
    let lanes = (0..100).map(|_| async move {
        for _ in 0..100 {
            let client = connect(&config_for(addr, "app", Some("acme")))
                .await
                .expect("connect through pgtenant");
            assert_eq!(items(&client).await, ACME_ITEMS);
        }
    });
    futures_util::future::join_all(lanes).await;
    let peak = proxy.peak_kib();

    let settled = settle(&proxy, baseline).await;
    eprintln!(
        "10,000 short connections: baseline {:.1} MiB, peak {:.1} MiB, settled {:?} MiB",
        mib(baseline),
        mib(peak),
        settled.map(mib)
    );
    assert!(
        settled.is_some(),
        "RSS stays {:.1} MiB above its baseline of {:.1} MiB after 10,000 connections \
         (peak {:.1} MiB)",
        mib(proxy.rss_kib().saturating_sub(baseline)),
        mib(baseline),
        mib(peak)
    );
}

/// The pool's table of statements keys each by its text: the entries of statements
/// no client holds are swept by the pools' upkeep, so their text goes with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_comes_back_after_clients_held_large_statements() {
    let env = EnvBuilder::erp().start().await;
    let (proxy, baseline) = warmed_proxy(&env, 20).await;
    proxy.reset_peak();

    // Eight clients at once, each preparing a named statement of 8 MiB (held whole:
    // the proxy renames it), running it and leaving.
    let text = format!("SELECT length('{}')", "x".repeat(8 << 20));
    let runs = (0..8).map(|i| {
        let text = &text;
        let proxy = &proxy;
        async move {
            let client = proxy.connect("acme").await;
            let statement = client.prepare(text).await.expect("prepare");
            let row = client.query_one(&statement, &[]).await.expect("run");
            assert_eq!(row.get::<_, i32>(0), 8 << 20, "client {i}");
        }
    });
    futures_util::future::join_all(runs).await;
    let peak = proxy.peak_kib();
    assert!(
        peak > baseline + 2 * NEAR_KIB,
        "the burst did not show in RSS (peak {:.1} MiB, baseline {:.1} MiB): nothing measured",
        mib(peak),
        mib(baseline)
    );

    let settled = settle(&proxy, baseline).await;
    eprintln!(
        "8 clients with 8 MiB statements: baseline {:.1} MiB, peak {:.1} MiB, settled {:?} MiB",
        mib(baseline),
        mib(peak),
        settled.map(mib)
    );
    assert!(
        settled.is_some(),
        "RSS stays {:.1} MiB above its baseline of {:.1} MiB after the clients left \
         (peak {:.1} MiB)",
        mib(proxy.rss_kib().saturating_sub(baseline)),
        mib(baseline),
        mib(peak)
    );
}
