//! Soak driver for `bench/soak.sh` (built with `cargo bench --no-run --bench soak`).
//!
//! ```text
//! soak --host H --port P --db D --server-port SP [--clients 5000] [--minutes 10]
//!      [--fault-every 30] [--user app] [--server-user postgres] [--pid PGTENANT_PID]
//! ```
//!
//! `--clients` clients connect to pgtenant (database `D`) and run short transactions
//! (BEGIN; UPDATE; SELECT; COMMIT) with a pause between them, reconnecting when their
//! session ends. Every `--fault-every` seconds a direct connection to PostgreSQL
//! (`--server-port`) terminates every server connection of `--user`. With `--pid`,
//! pgtenant's RSS and open descriptors, and the machine's load average, are sampled
//! every 10 s. Prints one JSON line: transactions, errors (by SQLSTATE), server
//! connections terminated, reconnects, sessions that ended between transactions (by
//! what their connection heard: none is expected) and the samples.
//!
//! A transaction may fail only if its server connection was terminated under it, so
//! the figure to read is `errors` against `terminated`: each terminated server
//! connection carried at most one client transaction.
//!
//! Run without arguments by cargo (`cargo test --all-targets` sets `CARGO`) it exits 0
//! and prints nothing.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::{Config, NoTls};

struct Opts {
    host: String,
    port: u16,
    db: String,
    server_port: u16,
    clients: usize,
    minutes: f64,
    fault_every: u64,
    user: String,
    server_user: String,
    pid: Option<u32>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        host: "127.0.0.1".into(),
        port: 0,
        db: String::new(),
        server_port: 0,
        clients: 5000,
        minutes: 10.0,
        fault_every: 30,
        user: "app".into(),
        server_user: "postgres".into(),
        pid: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |_: std::num::ParseIntError| format!("{flag}: bad value {value:?}");
        match flag.as_str() {
            "--host" => o.host = value.clone(),
            "--port" => o.port = value.parse().map_err(bad)?,
            "--db" => o.db = value.clone(),
            "--server-port" => o.server_port = value.parse().map_err(bad)?,
            "--clients" => o.clients = value.parse().map_err(bad)?,
            "--minutes" => {
                o.minutes = value
                    .parse()
                    .map_err(|_| format!("{flag}: bad value {value:?}"))?
            }
            "--fault-every" => o.fault_every = value.parse().map_err(bad)?,
            "--user" => o.user = value.clone(),
            "--server-user" => o.server_user = value.clone(),
            "--pid" => o.pid = Some(value.parse().map_err(bad)?),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if o.port == 0 || o.server_port == 0 || o.db.is_empty() {
        return Err("--port, --server-port and --db are required".into());
    }
    Ok(o)
}

/// What every client adds up.
#[derive(Default)]
struct Tally {
    committed: AtomicU64,
    reconnects: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Sessions that ended between transactions (no query of the client's waiting),
    /// by what their connection said: these are the proxy's, not the faults'.
    idle_ends: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn error(&self, e: &tokio_postgres::Error) {
        let code = e
            .code()
            .map_or_else(|| "no sqlstate".to_string(), |c| c.code().to_string());
        *self.errors.lock().unwrap().entry(code).or_default() += 1;
    }

    fn idle_end(&self, why: String) {
        *self.idle_ends.lock().unwrap().entry(why).or_default() += 1;
    }
}

/// What a connection's end says: its SQLSTATE, or its text when it has none.
fn end_reason(e: &tokio_postgres::Error) -> String {
    match e.code() {
        Some(code) => code.code().to_string(),
        None => e.to_string(),
    }
}

async fn client_loop(config: Config, n: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let (ended_tx, mut ended) = tokio::sync::oneshot::channel();
        let client = match config.connect(NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    let _ = ended_tx.send(connection.await.err().map(|e| end_reason(&e)));
                });
                client
            }
            Err(e) => {
                tally.error(&e);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if !first {
            tally.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let id = (n % 1000) as i32 + 1;
        while !stop.load(Ordering::Relaxed) && !client.is_closed() {
            let txn = format!(
                "BEGIN; UPDATE soak SET hits = hits + 1 WHERE id = {id}; \
                 SELECT hits FROM soak WHERE id = {id}; COMMIT"
            );
            match client.simple_query(&txn).await {
                Ok(_) => {
                    tally.committed.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tally.error(&e);
                    break;
                }
            }
            // About one transaction per client per second.
            tokio::time::sleep(Duration::from_millis(800 + (n % 400) as u64)).await;
            if client.is_closed() {
                // Ended while this client asked nothing: say what its connection heard.
                let why = match (&mut ended).await {
                    Ok(Some(why)) => why,
                    Ok(None) => "closed by the proxy without an error".to_string(),
                    Err(_) => "unknown".to_string(),
                };
                tally.idle_end(why);
            }
        }
    }
}

/// `s` as a JSON string.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn proc_sample(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

/// The machine's one-minute load average (the soak shares it with whatever else runs).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Least-squares slope of RSS (KiB) over time (minutes).
fn slope(samples: &[(f64, u64, usize)]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let num: f64 = samples.iter().map(|s| (s.0 - mx) * (s.1 as f64 - my)).sum();
    let den: f64 = samples.iter().map(|s| (s.0 - mx).powi(2)).sum();
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "--bench") {
        if std::env::var_os("CARGO").is_none() {
            eprintln!("usage: soak --port P --db D --server-port SP [--clients N] [--minutes M]");
        }
        return ExitCode::SUCCESS;
    }
    let o = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    let mut config = Config::new();
    config
        .host(&o.host)
        .port(o.port)
        .user(&o.user)
        .dbname(&o.db)
        .connect_timeout(Duration::from_secs(30));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let before = o.pid.and_then(proc_sample);

    let mut tasks = Vec::new();
    for n in 0..o.clients {
        tasks.push(tokio::spawn(client_loop(
            config.clone(),
            n,
            stop.clone(),
            tally.clone(),
        )));
        if n % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Faults and samples until the time is up.
    let direct = format!(
        "host={} port={} user={} dbname=postgres",
        o.host, o.server_port, o.server_user
    );
    let (killer, connection) = tokio_postgres::connect(&direct, NoTls)
        .await
        .expect("a direct connection to PostgreSQL");
    tokio::spawn(connection);
    let end = started + Duration::from_secs_f64(o.minutes * 60.0);
    let mut next_fault = started + Duration::from_secs(o.fault_every);
    let mut next_sample = started;
    let (mut terminated, mut faults) = (0u64, 0u64);
    let mut samples = Vec::new();
    let mut loads = Vec::new();
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_fault {
            let row = killer
                .query_one(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE usename = $1 AND backend_type = 'client backend') t",
                    &[&o.user],
                )
                .await
                .expect("terminating server connections");
            terminated += row.get::<_, i64>(0) as u64;
            faults += 1;
            next_fault += Duration::from_secs(o.fault_every);
        }
        if now >= next_sample {
            if let Some((rss, fds)) = o.pid.and_then(proc_sample) {
                samples.push((started.elapsed().as_secs_f64() / 60.0, rss, fds));
                loads.push(load_average());
            }
            next_sample += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    // Give the proxy a moment to close what the clients left.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = o.pid.and_then(proc_sample);

    let errors = tally.errors.lock().unwrap().clone();
    let idle_ends = tally.idle_ends.lock().unwrap().clone();
    let json_idle_ends: Vec<String> = idle_ends
        .iter()
        .map(|(k, v)| format!("{}:{v}", json_string(k)))
        .collect();
    let error_total: u64 = errors.values().sum();
    // Samples after the clients connected (the first minute is the ramp).
    let steady: Vec<_> = samples.iter().copied().filter(|s| s.0 >= 1.0).collect();
    let json_errors: Vec<String> = errors.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    let json_samples: Vec<String> = samples
        .iter()
        .zip(&loads)
        .map(|((m, rss, fds), load)| format!("[{m:.2},{rss},{fds},{load:.2}]"))
        .collect();
    let fmt = |s: Option<(u64, usize)>| match s {
        Some((rss, fds)) => format!("{{\"rss_kib\":{rss},\"fds\":{fds}}}"),
        None => "null".into(),
    };
    println!(
        "{{\"clients\":{},\"minutes\":{},\"faults\":{faults},\"terminated\":{terminated},\
         \"committed\":{},\"errors\":{error_total},\"errors_by_code\":{{{}}},\"reconnects\":{},\
         \"ended_between_transactions\":{{{}}},\"rss_slope_kib_per_min\":{:.1},\"before\":{},\"after\":{},\"samples\":[{}]}}",
        o.clients,
        o.minutes,
        tally.committed.load(Ordering::Relaxed),
        json_errors.join(","),
        tally.reconnects.load(Ordering::Relaxed),
        json_idle_ends.join(","),
        slope(&steady),
        fmt(before),
        fmt(after),
        json_samples.join(",")
    );
    ExitCode::SUCCESS
}
