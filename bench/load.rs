//! Load generator for `bench/run.sh` (built with `cargo bench --no-run --bench load`).
//!
//! Two subcommands, each printing its result as one JSON line on stdout:
//!
//! ```text
//! load tenants --host H --port P (--tenants t0001..t1000 | --tenants a,b,c | --prefix t --count 1000 [--width 4])
//!              [--clients-per-tenant 2] [--seconds 10] [--user postgres] [--connect-concurrency 64]
//! load idle    --host H --port P --db D --count N [--hold-seconds 60] [--user postgres] [--connect-concurrency 128]
//! ```
//!
//! `tenants`: every client connects with database = its tenant name, then all clients
//! run `SELECT v FROM kv WHERE id = <1..100>` as simple queries for `--seconds`.
//! Reports total queries per second, p50/p99 latency and errors.
//!
//! `idle`: opens `--count` connections, runs one `SELECT 1` on each, prints the JSON
//! line and then a line `ready`, and holds the connections for `--hold-seconds`
//! (the caller measures the proxy's memory meanwhile and may kill this process).
//!
//! Run without a subcommand by cargo (`cargo bench`, `cargo test --all-targets`: cargo
//! sets `CARGO` in its environment) it exits 0 and prints nothing, so a test run shows
//! no usage text that looks like a failure; run so by hand it prints this usage.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Barrier, Semaphore};
use tokio_postgres::{Client, Config, NoTls};

const USAGE: &str = "usage:
  load tenants --host H --port P (--tenants t0001..t1000 | --tenants a,b | --prefix t --count 1000 [--width 4])
               [--clients-per-tenant 2] [--seconds 10] [--user postgres] [--connect-concurrency 64]
  load idle    --host H --port P --db D --count N [--hold-seconds 60] [--user postgres] [--connect-concurrency 128]";

fn main() -> ExitCode {
    // `cargo bench` runs this with `--bench`, `cargo test --all-targets` with no
    // arguments or test-harness flags: succeed quietly, there is nothing to run.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match args.first() {
        Some(c) if c == "tenants" || c == "idle" => c.clone(),
        Some(c) if !c.starts_with('-') => {
            eprintln!("load: unknown subcommand {c:?}\n{USAGE}");
            return ExitCode::from(2);
        }
        _ if std::env::var_os("CARGO").is_some() => return ExitCode::SUCCESS,
        _ => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
    };
    let opts = match Opts::parse(&args[1..]) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("load: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match command.as_str() {
        "tenants" => runtime.block_on(tenants(opts)),
        _ => runtime.block_on(idle(opts)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--key value` pairs.
struct Opts(HashMap<String, String>);

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(key) = it.next() {
            let name = key
                .strip_prefix("--")
                .ok_or_else(|| format!("expected --option, got {key:?}"))?;
            let value = it.next().ok_or_else(|| format!("{key} needs a value"))?;
            map.insert(name.to_string(), value.clone());
        }
        Ok(Opts(map))
    }

    fn str(&self, key: &str, default: Option<&str>) -> Result<String, String> {
        match (self.0.get(key), default) {
            (Some(v), _) => Ok(v.clone()),
            (None, Some(d)) => Ok(d.to_string()),
            (None, None) => Err(format!("--{key} is required")),
        }
    }

    fn num(&self, key: &str, default: Option<u64>) -> Result<u64, String> {
        match (self.0.get(key), default) {
            (Some(v), _) => v
                .parse()
                .map_err(|_| format!("--{key}: {v:?} is not a number")),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(format!("--{key} is required")),
        }
    }

    /// Tenant names from `--tenants` (`a..b` range with a common prefix and
    /// zero-padded numbers, or a comma list) or `--prefix`/`--count`/`--width`.
    fn tenant_names(&self) -> Result<Vec<String>, String> {
        if let Some(spec) = self.0.get("tenants") {
            if let Some((first, last)) = spec.split_once("..") {
                let split = |s: &str| {
                    let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
                    let (prefix, num) = s.split_at(s.len() - digits);
                    num.parse::<u64>()
                        .map(|n| (prefix.to_string(), n, digits))
                        .map_err(|_| format!("--tenants: {s:?} does not end in a number"))
                };
                let (prefix, from, width) = split(first)?;
                let (prefix2, to, _) = split(last)?;
                if prefix != prefix2 || from > to {
                    return Err(format!("--tenants: bad range {spec:?}"));
                }
                return Ok((from..=to)
                    .map(|n| format!("{prefix}{n:0width$}"))
                    .collect());
            }
            return Ok(spec.split(',').map(str::to_string).collect());
        }
        let prefix = self.str("prefix", None)?;
        let count = self.num("count", None)?;
        let width = self.num("width", Some(4))? as usize;
        Ok((1..=count)
            .map(|n| format!("{prefix}{n:0width$}"))
            .collect())
    }
}

fn raise_fd_limit() {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

async fn connect(host: &str, port: u16, user: &str, db: &str) -> Result<Client, String> {
    let mut config = Config::new();
    config
        .host(host)
        .port(port)
        .user(user)
        .dbname(db)
        .application_name("pgtenant-bench")
        .connect_timeout(Duration::from_secs(60));
    let (client, connection) = config.connect(NoTls).await.map_err(error_text)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The server's message when there is one (`SQLSTATE: message`), else the error itself.
fn error_text(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        }
    }
}

/// Counts errors and keeps the first message.
#[derive(Default)]
struct Errors {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Errors {
    fn record(&self, message: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap();
        if first.is_none() {
            *first = Some(message);
        }
    }
    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
    fn first(&self) -> Option<String> {
        self.first.lock().unwrap().clone()
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt(s: Option<String>) -> String {
    s.map(|s| json_str(&s)).unwrap_or_else(|| "null".into())
}

/// Percentile of sorted microsecond samples, in milliseconds.
fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted.len()) - 1;
    sorted[idx] as f64 / 1000.0
}

async fn tenants(opts: Opts) -> Result<(), String> {
    let host = opts.str("host", Some("127.0.0.1"))?;
    let port = opts.num("port", None)? as u16;
    let user = opts.str("user", Some("postgres"))?;
    let names = opts.tenant_names()?;
    let per_tenant = opts.num("clients-per-tenant", Some(2))? as usize;
    let seconds = opts.num("seconds", Some(10))?;
    let concurrency = opts.num("connect-concurrency", Some(64))? as usize;
    let clients = names.len() * per_tenant;
    if clients == 0 {
        return Err("no clients".into());
    }

    let connect_errors = Arc::new(Errors::default());
    let query_errors = Arc::new(Errors::default());
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    // Every client task waits here once connected (or failed), so the measured window
    // starts when the whole population is in place; the main task is the last party.
    let barrier = Arc::new(Barrier::new(clients + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let connect_start = Instant::now();

    let mut tasks = Vec::with_capacity(clients);
    for (i, tenant) in names
        .iter()
        .flat_map(|t| std::iter::repeat_n(t, per_tenant))
        .enumerate()
    {
        let (host, user, tenant) = (host.clone(), user.clone(), tenant.clone());
        let (gate, barrier, stop) = (gate.clone(), barrier.clone(), stop.clone());
        let (connect_errors, query_errors) = (connect_errors.clone(), query_errors.clone());
        tasks.push(tokio::spawn(async move {
            let client = {
                let _permit = gate.acquire().await.expect("semaphore open");
                connect(&host, port, &user, &tenant).await
            };
            let mut client = match client {
                Ok(c) => Some(c),
                Err(e) => {
                    connect_errors.record(format!("{tenant}: {e}"));
                    None
                }
            };
            barrier.wait().await;
            let mut samples: Vec<u32> = Vec::with_capacity(4096);
            let mut rng: u64 =
                0x9E37_79B9_7F4A_7C15 ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D);
            while !stop.load(Ordering::Relaxed) {
                let Some(c) = client.as_ref() else {
                    // Lost (or never had) a connection: try again, counting each failure.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match connect(&host, port, &user, &tenant).await {
                        Ok(c) => client = Some(c),
                        Err(e) => query_errors.record(format!("{tenant}: reconnect: {e}")),
                    }
                    continue;
                };
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let id = rng % 100 + 1;
                let started = Instant::now();
                match c
                    .simple_query(&format!("SELECT v FROM kv WHERE id = {id}"))
                    .await
                {
                    Ok(messages) => {
                        let rows = messages
                            .iter()
                            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
                            .count();
                        if rows == 1 {
                            let micros = started.elapsed().as_micros().min(u32::MAX as u128);
                            samples.push(micros as u32);
                        } else {
                            query_errors.record(format!("{tenant}: expected 1 row, got {rows}"));
                        }
                    }
                    Err(e) => {
                        query_errors.record(format!("{tenant}: {}", error_text(e)));
                        if c.is_closed() {
                            client = None;
                        }
                    }
                }
            }
            samples
        }));
    }

    barrier.wait().await;
    let connect_seconds = connect_start.elapsed().as_secs_f64();
    let connect_failed = connect_errors.count();
    let run_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.map_err(|e| format!("client task: {e}"))?);
    }
    let elapsed = run_start.elapsed().as_secs_f64();
    samples.sort_unstable();
    let queries = samples.len();
    let mean_ms = if queries == 0 {
        0.0
    } else {
        samples.iter().map(|&s| s as f64).sum::<f64>() / queries as f64 / 1000.0
    };
    let first_error = query_errors.first().or_else(|| connect_errors.first());
    println!(
        "{{\"mode\":\"tenants\",\"tenants\":{},\"clients\":{},\"connected\":{},\"connect_errors\":{},\
         \"connect_seconds\":{:.3},\"seconds\":{:.3},\"queries\":{},\"tps\":{:.1},\"mean_ms\":{:.3},\
         \"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"errors\":{},\"first_error\":{}}}",
        names.len(),
        clients,
        clients as u64 - connect_failed,
        connect_failed,
        connect_seconds,
        elapsed,
        queries,
        queries as f64 / elapsed,
        mean_ms,
        percentile_ms(&samples, 50.0),
        percentile_ms(&samples, 99.0),
        percentile_ms(&samples, 100.0),
        query_errors.count() + connect_failed,
        json_opt(first_error),
    );
    Ok(())
}

async fn idle(opts: Opts) -> Result<(), String> {
    let host = opts.str("host", Some("127.0.0.1"))?;
    let port = opts.num("port", None)? as u16;
    let user = opts.str("user", Some("postgres"))?;
    let db = opts.str("db", None)?;
    let count = opts.num("count", None)? as usize;
    let hold = opts.num("hold-seconds", Some(60))?;
    let concurrency = opts.num("connect-concurrency", Some(128))? as usize;

    let errors = Arc::new(Errors::default());
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let (host, user, db) = (host.clone(), user.clone(), db.clone());
        let (gate, errors) = (gate.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.expect("semaphore open");
            let client = match connect(&host, port, &user, &db).await {
                Ok(c) => c,
                Err(e) => {
                    errors.record(format!("connect: {e}"));
                    return None;
                }
            };
            match client.simple_query("SELECT 1").await {
                Ok(_) => Some(client),
                Err(e) => {
                    errors.record(format!("SELECT 1: {}", error_text(e)));
                    None
                }
            }
        }));
    }
    let mut held = Vec::with_capacity(count);
    for task in tasks {
        if let Some(client) = task.await.map_err(|e| format!("client task: {e}"))? {
            held.push(client);
        }
    }
    println!(
        "{{\"mode\":\"idle\",\"count\":{},\"connected\":{},\"errors\":{},\"connect_seconds\":{:.3},\"first_error\":{}}}",
        count,
        held.len(),
        errors.count(),
        start.elapsed().as_secs_f64(),
        json_opt(errors.first()),
    );
    println!("ready");
    let _ = std::io::stdout().flush();
    tokio::time::sleep(Duration::from_secs(hold)).await;
    drop(held);
    Ok(())
}
