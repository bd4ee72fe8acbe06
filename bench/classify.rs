//! What reading SQL costs per statement: `sql::classify` on the statements pgbench
//! sends, timed over many calls. `bench/RESULTS.md` scales the figures by each test's
//! statements per second to give the classifier's share of the proxy's CPU.
//!
//!   cargo bench --bench classify

use std::hint::black_box;
use std::time::Instant;

use pgtenant::sql::classify;

/// (test, statement, statements of it per transaction)
const STATEMENTS: &[(&str, &str, u32)] = &[
    ("tpcb", "BEGIN;", 1),
    (
        "tpcb",
        "UPDATE pgbench_accounts SET abalance = abalance + -4012 WHERE aid = 78123;",
        1,
    ),
    ("tpcb", "SELECT abalance FROM pgbench_accounts WHERE aid = 78123;", 1),
    (
        "tpcb",
        "UPDATE pgbench_tellers SET tbalance = tbalance + -4012 WHERE tid = 37;",
        1,
    ),
    (
        "tpcb",
        "UPDATE pgbench_branches SET bbalance = bbalance + -4012 WHERE bid = 4;",
        1,
    ),
    (
        "tpcb",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (37, 4, 78123, -4012, CURRENT_TIMESTAMP);",
        1,
    ),
    ("tpcb", "END;", 1),
    ("select", "SELECT abalance FROM pgbench_accounts WHERE aid = 78123;", 1),
    ("select-extended", "SELECT abalance FROM pgbench_accounts WHERE aid = $1;", 1),
    // Lexed in full: what a statement that may matter costs.
    ("lexed", "SET statement_timeout = '5s'", 1),
];

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds = 2_000_000u32;
    let mut per_test: Vec<(&str, f64)> = Vec::new();
    for &(test, sql, per_txn) in STATEMENTS {
        let bytes = sql.as_bytes();
        // Warm up, then time.
        for _ in 0..10_000 {
            black_box(classify(black_box(bytes), true));
        }
        let start = Instant::now();
        for _ in 0..rounds {
            black_box(classify(black_box(bytes), true));
        }
        let ns = start.elapsed().as_nanos() as f64 / rounds as f64;
        println!("{ns:8.1} ns  {test:<16} {sql}");
        match per_test.iter_mut().find(|(t, _)| *t == test) {
            Some((_, total)) => *total += ns * per_txn as f64,
            None => per_test.push((test, ns * per_txn as f64)),
        }
    }
    for (test, ns) in per_test {
        println!("{:8.1} ns per transaction of {test}", ns);
    }
}
