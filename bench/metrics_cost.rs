//! What the metrics cost one transaction on the hot path: the calls a transaction-mode
//! simple query makes on its client's entry (bytes read from client and server, the
//! message counted, a server attached and let go, ReadyForQuery, the checkout-wait
//! observation), timed in a loop on one thread and on two threads sharing a tenant.
//!
//! `cargo bench --bench metrics_cost` prints one JSON line: nanoseconds per
//! transaction. `bench/METRICS-COST.md` sets it beside the proxy's CPU per
//! transaction. Run by `cargo test --all-targets` (no `--bench` argument) it exits at
//! once.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pgtenant::metrics::Metrics;
use pgtenant::registry::TenantName;

const TRANSACTIONS: u64 = 5_000_000;

/// One simple-query transaction's metric calls, as the relay makes them.
fn transaction(seen: &pgtenant::metrics::ClientSeen, pid: i32) {
    seen.client_read(black_box(32));
    seen.client_sent(black_box(b'Q'));
    seen.tenant().checkout_wait.observe(Duration::ZERO);
    seen.server(Some(pid));
    seen.server_read(black_box(120));
    seen.ready(black_box(b'I'));
    seen.server(None);
}

/// Nanoseconds per transaction over `threads` clients of one tenant.
fn measure(threads: u64) -> f64 {
    let metrics = Metrics::default();
    let tenant = TenantName::new("acme");
    let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let seen = metrics
                .client_connected(t + 1, &tenant, "app", peer, "transaction", -1, usize::MAX)
                .expect("no limit");
            scope.spawn(move || {
                for _ in 0..TRANSACTIONS / threads {
                    transaction(&seen, 42);
                }
            });
        }
    });
    started.elapsed().as_nanos() as f64 / TRANSACTIONS as f64
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // Warm up, then the best of five rounds (the machine is shared).
    measure(1);
    let best = |threads| (0..5).map(|_| measure(threads)).fold(f64::MAX, f64::min);
    let one = best(1);
    let two = best(2);
    println!(
        "{{\"transactions\": {TRANSACTIONS}, \"ns_per_transaction_1_thread\": {one:.1}, \"ns_per_transaction_2_threads\": {two:.1}}}"
    );
}
