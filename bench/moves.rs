//! The pause clients see during a tenant move: 16 transaction-mode clients write to a
//! schema tenant (BEGIN; prepared INSERT of a serial id; prepared UPDATE; COMMIT)
//! for a while without a move, then for the same time with `MOVE acme TO pg-b COPY`
//! in the middle. Prints p50/p99/max transaction latency of each run, of the
//! window around the switch, the pause the proxy measured, and writes
//! bench/RESULTS-moves.md.
//!
//! `cargo bench --bench moves` (BENCH_SECONDS=N per run, default 10). Everything
//! runs on loopback: two throwaway clusters (wal_level = logical) and the proxy in
//! this process.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgtenant::cluster::{Cluster, ClusterOptions, PgBin};
use pgtenant::{Server, Settings};
use tokio_postgres::{Client, NoTls};

const CLIENTS: i32 = 16;

const SEED_A: &str = "
CREATE ROLE app LOGIN;
CREATE DATABASE erp OWNER app;
\\c erp
SET ROLE app;
CREATE SCHEMA tenant_acme;
CREATE TABLE tenant_acme.orders (id bigserial PRIMARY KEY, client int NOT NULL, n int NOT NULL);
CREATE TABLE tenant_acme.counters (client int PRIMARY KEY, n int NOT NULL DEFAULT 0);
INSERT INTO tenant_acme.counters SELECT g, 0 FROM generate_series(0, 15) g;
INSERT INTO tenant_acme.orders (client, n) SELECT -1, g FROM generate_series(1, 100000) g;
";

/// (when it started, relative to the run's start; how long it took)
type Samples = Vec<(Duration, Duration)>;

async fn connect(port: u16, user: &str, db: &str) -> Client {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname(db)
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {db}: {e}"));
    tokio::spawn(conn);
    client
}

/// Runs the load for `seconds`; `during` runs alongside it, `at` after the start.
async fn load(
    port: u16,
    seconds: u64,
    during: Option<(Duration, Client)>,
) -> (Samples, usize, Option<(Duration, Duration)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Samples::new()));
    let failures = Arc::new(Mutex::new(0usize));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        let mut client = connect(port, "app", "acme").await;
        let insert = client
            .prepare("INSERT INTO orders (client, n) VALUES ($1, $2) RETURNING id")
            .await
            .unwrap();
        let update = client
            .prepare("UPDATE counters SET n = n + 1 WHERE client = $1")
            .await
            .unwrap();
        let (stop, samples, failures) = (stop.clone(), samples.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let t0 = Instant::now();
                let r = async {
                    let txn = client.transaction().await?;
                    txn.query_one(&insert, &[&id, &n]).await?;
                    txn.execute(&update, &[&id]).await?;
                    txn.commit().await
                }
                .await;
                let took = t0.elapsed();
                match r {
                    Ok(()) => samples
                        .lock()
                        .unwrap()
                        .push((t0.duration_since(started), took)),
                    Err(e) => {
                        eprintln!("transaction failed: {e}");
                        *failures.lock().unwrap() += 1;
                    }
                }
            }
        }));
    }
    let mut switch = None;
    if let Some((at, admin)) = during {
        tokio::time::sleep(at).await;
        let t0 = started.elapsed();
        admin
            .simple_query("MOVE acme TO pg-b COPY")
            .await
            .unwrap_or_else(|e| panic!("MOVE: {e:?}"));
        switch = Some((t0, started.elapsed()));
    }
    let end = started + Duration::from_secs(seconds);
    tokio::time::sleep_until(end.into()).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    let failures = *failures.lock().unwrap();
    (samples, failures, switch)
}

fn percentiles(samples: &[(Duration, Duration)]) -> (f64, f64, f64, usize) {
    let mut ms: Vec<f64> = samples.iter().map(|(_, d)| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if ms.is_empty() {
        return (0.0, 0.0, 0.0, 0);
    }
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), *ms.last().unwrap(), ms.len())
}

fn row(name: &str, samples: &[(Duration, Duration)], seconds: f64) -> String {
    let (p50, p99, max, n) = percentiles(samples);
    format!(
        "| {name} | {n} | {:.0} | {p50:.2} | {p99:.2} | {max:.1} |\n",
        n as f64 / seconds
    )
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this without it,
    // where the minute of load and clusters is not wanted.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let bin = PgBin::find().expect("PostgreSQL binaries");
    let source = Cluster::start_with(&bin, "pg-a", ClusterOptions::logical()).unwrap();
    let target = Cluster::start_with(&bin, "pg-b", ClusterOptions::logical()).unwrap();
    source.psql_file("postgres", SEED_A).unwrap();
    target
        .psql_file(
            "postgres",
            "CREATE ROLE app LOGIN;\nCREATE DATABASE erp OWNER app;\n",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("tenants.toml");
    std::fs::write(
        &registry,
        format!(
            "[hosts.pg-a]\naddress = \"{}\"\nmax_connections = 60\n[hosts.pg-b]\naddress = \"{}\"\nmax_connections = 60\n\
             [tenants.acme]\nhost = \"pg-a\"\ndatabase = \"erp\"\nsearch_path = [\"tenant_acme\"]\nbackend_user = \"app\"\n",
            source.address(),
            target.address()
        ),
    )
    .unwrap();
    let settings = Settings::from_toml(&format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\npool_mode = \"transaction\"\nauth = \"trust\"\n[pool]\npool_size = 16\n\
         [registry]\nfile = {:?}\n",
        registry.display().to_string()
    ))
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(async {
        let server = Server::start(settings).await.unwrap();
        let port = server.local_addr().port();
        let (baseline, failed_base, _) = load(port, seconds, None).await;
        let admin = connect(port, "pgtenant", "pgtenant").await;
        let at = Duration::from_secs(seconds / 3);
        let (moving, failed_move, switch) = load(port, seconds, Some((at, admin))).await;
        let admin = connect(port, "pgtenant", "pgtenant").await;
        let rows = admin.simple_query("SHOW MOVES").await.unwrap();
        let paused_ms = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(10).map(str::to_owned),
                _ => None,
            })
            .unwrap_or_default();
        let (move_start, move_end) = switch.unwrap();
        // Transactions that started in the last second of the move (its pause and
        // switch are at its end) or the second after it.
        let window: Samples = moving
            .iter()
            .copied()
            .filter(|(t, _)| {
                *t + Duration::from_secs(1) >= move_end && *t <= move_end + Duration::from_secs(1)
            })
            .collect();
        let mut md = String::new();
        let _ = writeln!(md, "# Tenant move: the pause clients see\n");
        let _ = writeln!(
            md,
            "{CLIENTS} transaction-mode clients through pgtenant on one schema tenant \
             (BEGIN; prepared INSERT of a bigserial id; prepared UPDATE; COMMIT), two \
             PostgreSQL 15 clusters with wal_level = logical on loopback, {seconds} s per \
             run, on this 2-core machine shared with other builds. The tenant holds \
             100,000 rows when the move starts. Produced by `cargo bench --bench moves`.\n"
        );
        let _ = writeln!(
            md,
            "| run | transactions | per s | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|"
        );
        md.push_str(&row("no move", &baseline, seconds as f64));
        md.push_str(&row(
            "with `MOVE acme TO pg-b COPY`",
            &moving,
            seconds as f64,
        ));
        md.push_str(&row("around the switch (±1 s)", &window, 2.0));
        let _ = writeln!(
            md,
            "\nThe move ran from {:.2} s to {:.2} s of the second run ({:.2} s: copy, \
             catch-up, pause, switch, resume, clean-up). The proxy measured the tenant \
             paused for **{paused_ms} ms** (from closing its gate to resuming it on the \
             new host); the longest transaction any client saw in that run is the max \
             above. Failed transactions: {failed_base} without the move, {failed_move} \
             with it. Target: longest pause ≤ 250 ms.",
            move_start.as_secs_f64(),
            move_end.as_secs_f64(),
            (move_end - move_start).as_secs_f64(),
        );
        server.stop().await;
        md
    });
    print!("{report}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/RESULTS-moves.md");
    std::fs::write(&out, report).unwrap();
    eprintln!("wrote {}", out.display());
}
