//! Driver compatibility suite: real PostgreSQL drivers, with their default settings,
//! talk to pgtenant in session mode and in transaction mode.
//!
//! Each test starts one PostgreSQL cluster (database `erp`, tenants acme and globex as
//! schemas, plus scratch tables), a pgtenant in session mode and a second one in
//! transaction mode, and runs one driver's checks against both: a program under
//! tests/drivers/ (psycopg 3, psycopg2, asyncpg, node-postgres, PostgreSQL JDBC, psql,
//! the Ruby pg gem, ActiveRecord, PHP PDO pgsql, PHP pgsql, Perl DBD::Pg, Go pgx) or
//! Rust code (tokio-postgres, sqlx). Every check prints one JSON record per
//! (driver, mode, feature); the records go to target/driver-results/<driver>.jsonl,
//! from which tests/drivers/matrix.py writes the compatibility matrix:
//!
//! ```text
//! cargo test --test drivers
//! python3 tests/drivers/matrix.py        # tests/drivers/MATRIX.md (+ README markers)
//! ```
//!
//! A test fails unless every feature passes in both modes, save the few listed in
//! `NOT_POSSIBLE` with the reason. The drivers are installed by tests/drivers/setup.sh
//! (a venv and an npm folder in target/drivers/; Debian packages for Java, Ruby, PHP,
//! Perl and Go, whose pgx program is built offline into target/drivers/go); a driver
//! that cannot be installed fails its test.

mod common;
#[path = "drivers/records.rs"]
mod records;
#[path = "drivers/sqlx_checks.rs"]
mod sqlx_checks;
#[path = "drivers/tokio_postgres_checks.rs"]
mod tokio_postgres_checks;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use pgtenant::Server;
use records::{Modes, COMMON_FEATURES};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// Features a driver cannot have in a mode, with the reason. Everything else must pass.
/// (driver, mode, feature, reason)
const NOT_POSSIBLE: &[(&str, &str, &str, &str)] = &[
    (
        "sqlx",
        "session",
        "cancel",
        "sqlx has no API to cancel a running query (it never sends a CancelRequest)",
    ),
    (
        "sqlx",
        "transaction",
        "cancel",
        "sqlx has no API to cancel a running query (it never sends a CancelRequest)",
    ),
    (
        "activerecord",
        "session",
        "cancel",
        "ActiveRecord has no API to cancel a running query",
    ),
    (
        "activerecord",
        "transaction",
        "cancel",
        "ActiveRecord has no API to cancel a running query",
    ),
    (
        "pdo-pgsql",
        "session",
        "cancel",
        "PDO has no API to cancel a running query",
    ),
    (
        "pdo-pgsql",
        "transaction",
        "cancel",
        "PDO has no API to cancel a running query",
    ),
];

/// The extra check of the drivers that name and drop their statements themselves:
/// a prepared statement dropped the driver's way (DEALLOCATE, Close), then prepared
/// again, while servers switch.
const PREPARE_AGAIN: &[&str] = &["prepare_again"];

/// Scratch tables of the checks, in the acme tenant's schema, one set per pool mode.
const SEED: &str = "
SET ROLE app;
CREATE TABLE tenant_acme.copy_session (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE tenant_acme.copy_transaction (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE tenant_acme.tx_session (id int PRIMARY KEY, note text);
CREATE TABLE tenant_acme.tx_transaction (id int PRIMARY KEY, note text);
CREATE TABLE tenant_acme.batch_session (id int PRIMARY KEY, x float8, label text);
CREATE TABLE tenant_acme.batch_transaction (id int PRIMARY KEY, x float8, label text);
CREATE TABLE tenant_acme.counters (mode text PRIMARY KEY, n bigint NOT NULL);
INSERT INTO tenant_acme.counters VALUES ('session', 0), ('transaction', 0);
CREATE TABLE tenant_acme.events (mode text, worker int, seq int, PRIMARY KEY (mode, worker, seq));
-- For ORMs whose model queries cannot carry pg_backend_pid() and stay prepared.
CREATE VIEW tenant_acme.item_backends AS SELECT id, name, pg_backend_pid() AS pid FROM tenant_acme.items;
";

/// Session mode: a server per client, so 50 concurrent clients need 50 servers.
const SESSION_SETTINGS: &str = "[proxy]\npool_mode = \"session\"\n[pool]\npool_size = 60\n";
/// Transaction mode: few servers per tenant, so clients switch servers all the time.
const TRANSACTION_SETTINGS: &str =
    "[proxy]\npool_mode = \"transaction\"\n[pool]\npool_size = 3\ncheckout_timeout = \"60s\"\n";

/// A driver script may take this long for both modes (a hung check costs 60 s).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(600);

/// One cluster and the two proxies in front of it.
pub struct Suite {
    env: Env,
    transaction: Server,
}

impl Suite {
    async fn start() -> Suite {
        let env = EnvBuilder::erp()
            .seed("erp", SEED)
            // Room for 50 concurrent session-mode clients.
            .registry(&ERP_REGISTRY.replace("max_connections = 50", "max_connections = 150"))
            .settings(SESSION_SETTINGS)
            .start()
            .await;
        let transaction = env.start_server(TRANSACTION_SETTINGS).await;
        Suite { env, transaction }
    }

    fn modes(&self) -> Modes {
        Modes {
            session_port: self.env.addr().port(),
            transaction_port: self.transaction.local_addr().port(),
            direct_port: self.env.host(ERP_HOST).port(),
        }
    }

    /// What a driver script is told (see tests/drivers/pgt_common.py).
    fn vars(&self) -> Vec<(&'static str, String)> {
        let m = self.modes();
        vec![
            ("PGT_HOST", "127.0.0.1".into()),
            ("PGT_SESSION_PORT", m.session_port.to_string()),
            ("PGT_TXN_PORT", m.transaction_port.to_string()),
            ("PGT_DIRECT_PORT", m.direct_port.to_string()),
            ("PGT_USER", "app".into()),
            ("PGT_TENANT", "acme".into()),
            ("PGT_OTHER_TENANT", "globex".into()),
            ("PGT_SESSION_DSN", url(self.env.addr(), "app", "acme")),
            (
                "PGT_TXN_DSN",
                url(self.transaction.local_addr(), "app", "acme"),
            ),
        ]
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_relative() { root().join(p) } else { p })
        .unwrap_or_else(|| root().join("target"))
}

fn drivers_dir() -> PathBuf {
    root().join("tests").join("drivers")
}

/// Installs one driver family with tests/drivers/setup.sh; fails the test if it cannot.
async fn setup(what: &str) {
    let out = tokio::process::Command::new("bash")
        .arg(drivers_dir().join("setup.sh"))
        .arg(what)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("running tests/drivers/setup.sh");
    assert!(
        out.status.success(),
        "tests/drivers/setup.sh {what} failed, so the {what} drivers cannot be tested:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a script printed: its JSON records and its log (stderr).
struct ScriptRun {
    records: Vec<Value>,
    log: String,
    outcome: String,
}

/// Runs a driver script with the suite's variables, collecting the JSON lines it
/// prints even if it dies or hangs (then it is killed after SCRIPT_TIMEOUT).
async fn run_script(
    suite: &Suite,
    program: &Path,
    args: &[PathBuf],
    env: &[(&str, String)],
) -> ScriptRun {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(root())
        .envs(suite.vars())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGUSER")
        .env_remove("PGDATABASE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stdout = child.stdout.take().expect("piped stdout");
    let collected = lines.clone();
    let out_reader = tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            collected.lock().unwrap().push(line);
        }
    });
    let mut stderr = child.stderr.take().expect("piped stderr");
    let err_reader = tokio::spawn(async move {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text).await;
        String::from_utf8_lossy(&text).into_owned()
    });
    let outcome = match tokio::time::timeout(SCRIPT_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => String::new(),
        Ok(Ok(status)) => format!("the script exited with {status}"),
        Ok(Err(e)) => format!("waiting for the script: {e}"),
        Err(_) => {
            let _ = child.kill().await;
            format!("the script was killed after {SCRIPT_TIMEOUT:?}")
        }
    };
    let _ = out_reader.await;
    let log = err_reader.await.unwrap_or_default();
    let mut records = Vec::new();
    for line in lines.lock().unwrap().iter() {
        match serde_json::from_str::<Value>(line) {
            Ok(v) if v.is_object() => records.push(v),
            _ => eprintln!("{}: not a record: {line}", program.display()),
        }
    }
    ScriptRun {
        records,
        log,
        outcome,
    }
}

/// Writes the driver's records to target/driver-results/<driver>.jsonl and checks
/// them: every (mode, feature) present, and passed unless NOT_POSSIBLE says why not
/// (its reason goes into the record as `not_possible`, for the matrix).
fn verdict(driver: &str, extra: &[&str], run: ScriptRun) {
    let features: Vec<&str> = COMMON_FEATURES.iter().chain(extra).copied().collect();
    let mut records = run.records;
    // Features a dead script never reached are recorded as failures too.
    let mut missing = Vec::new();
    for mode in records::MODES {
        for feature in &features {
            if find(&records, driver, mode, feature).is_none() {
                let why = if run.outcome.is_empty() {
                    "the script did not run this check"
                } else {
                    &run.outcome
                };
                records.push(serde_json::json!({
                    "driver": driver, "mode": mode, "feature": feature, "status": "fail",
                    "error": format!("no result: {why}"), "ms": 0,
                }));
                missing.push(format!("{mode}/{feature}"));
            }
        }
    }
    for record in records.iter_mut() {
        let reason = NOT_POSSIBLE.iter().find(|(d, m, f, _)| {
            record["driver"] == *d && record["mode"] == *m && record["feature"] == *f
        });
        if let Some((_, _, _, reason)) = reason {
            record["not_possible"] = Value::from(*reason);
        }
    }
    let dir = target_dir().join("driver-results");
    std::fs::create_dir_all(&dir).expect("creating target/driver-results");
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(dir.join(format!("{driver}.jsonl")), text).expect("writing driver results");

    let mut problems = Vec::new();
    let mut table = String::new();
    for mode in records::MODES {
        for feature in &features {
            let record = find(&records, driver, mode, feature).expect("added above");
            let status = record["status"].as_str().unwrap_or("?");
            let note = record["error"]
                .as_str()
                .filter(|e| !e.is_empty())
                .or(record["detail"].as_str())
                .unwrap_or("");
            table.push_str(&format!("  {mode:<12} {feature:<16} {status:<5} {note}\n"));
            match (status, record.get("not_possible").is_some()) {
                ("pass", false) => {}
                ("pass", true) => {
                    eprintln!("{driver} {mode} {feature} passes: its NOT_POSSIBLE entry can go")
                }
                (_, true) => {}
                (status, false) => problems.push(format!("{mode}/{feature}: {status}: {note}")),
            }
        }
    }
    println!("{driver}:\n{table}");
    if !missing.is_empty() {
        problems.push(format!(
            "no result for {} ({})",
            missing.join(", "),
            if run.outcome.is_empty() {
                "script exited 0"
            } else {
                &run.outcome
            }
        ));
    } else if !run.outcome.is_empty() {
        problems.push(run.outcome.clone());
    }
    assert!(
        problems.is_empty(),
        "{driver} through pgtenant:\n  {}\n\nresults:\n{table}\nscript log (last 6000 bytes):\n{}",
        problems.join("\n  "),
        tail(&run.log, 6000)
    );
}

fn find<'a>(records: &'a [Value], driver: &str, mode: &str, feature: &str) -> Option<&'a Value> {
    records
        .iter()
        .find(|r| r["driver"] == driver && r["mode"] == mode && r["feature"] == feature)
}

fn tail(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

async fn python_driver(driver: &str, script: &str, extra: &[&str]) {
    setup("python").await;
    let suite = Suite::start().await;
    let python = target_dir().join("drivers/venv/bin/python");
    let run = run_script(&suite, &python, &[drivers_dir().join(script)], &[]).await;
    verdict(driver, extra, run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3() {
    python_driver("psycopg3", "py_psycopg3.py", &["pipeline"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg2() {
    python_driver("psycopg2", "py_psycopg2.py", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg() {
    python_driver("asyncpg", "py_asyncpg.py", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres() {
    setup("node").await;
    let suite = Suite::start().await;
    let modules = target_dir().join("drivers/node/node_modules");
    let run = run_script(
        &suite,
        Path::new("node"),
        &[drivers_dir().join("node_pg.js")],
        &[("NODE_PATH", modules.display().to_string())],
    )
    .await;
    verdict("node-postgres", &[], run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc() {
    setup("java").await;
    let suite = Suite::start().await;
    let classpath = format!(
        "{}:/usr/share/java/postgresql.jar",
        target_dir().join("drivers/java").display()
    );
    let run = run_script(
        &suite,
        Path::new("java"),
        &[
            "-XX:+UseSerialGC".into(),
            "-XX:TieredStopAtLevel=1".into(),
            "-cp".into(),
            classpath.into(),
            "JdbcDriverTest".into(),
        ],
        &[],
    )
    .await;
    verdict("jdbc", &["batch", "startup_params"], run);
}

/// A driver program run with the suite's variables, after `setup.sh <family>`.
async fn program_driver(family: &str, driver: &str, program: &str, args: &[PathBuf]) {
    setup(family).await;
    let suite = Suite::start().await;
    let run = run_script(&suite, Path::new(program), args, &[]).await;
    verdict(driver, PREPARE_AGAIN, run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_pg() {
    let script = drivers_dir().join("ruby_pg.rb");
    program_driver("ruby", "ruby-pg", "ruby", &[script]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activerecord() {
    let script = drivers_dir().join("ruby_activerecord.rb");
    program_driver("ruby", "activerecord", "ruby", &[script]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pdo_pgsql() {
    let script = drivers_dir().join("php_pdo.php");
    program_driver("php", "pdo-pgsql", "php", &[script]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_pgsql() {
    let script = drivers_dir().join("php_pgsql.php");
    program_driver("php", "php-pgsql", "php", &[script]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dbd_pg() {
    let script = drivers_dir().join("perl_dbd_pg.pl");
    program_driver("perl", "dbd-pg", "perl", &[script]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgx() {
    let program = target_dir().join("drivers/go/pgx_checks");
    setup("go").await;
    let suite = Suite::start().await;
    let run = run_script(&suite, &program, &[], &[]).await;
    verdict("pgx", PREPARE_AGAIN, run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql() {
    let suite = Suite::start().await;
    let run = run_script(
        &suite,
        Path::new("python3"),
        &[drivers_dir().join("psql_checks.py")],
        &[],
    )
    .await;
    verdict("psql", &[], run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres() {
    let suite = Suite::start().await;
    let records = tokio_postgres_checks::run(suite.modes()).await;
    verdict(
        "tokio-postgres",
        &[],
        ScriptRun {
            records,
            log: String::new(),
            outcome: String::new(),
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx() {
    let suite = Suite::start().await;
    let records = sqlx_checks::run(suite.modes()).await;
    verdict(
        "sqlx",
        &[],
        ScriptRun {
            records,
            log: String::new(),
            outcome: String::new(),
        },
    );
}

/// For working on a driver script by hand: starts the suite's cluster and proxies,
/// prints the variables a script gets, and keeps them up for PGT_SERVE_SECONDS
/// (default 600).
///
/// ```text
/// cargo test --test drivers serve -- --ignored --nocapture
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs until PGT_SERVE_SECONDS pass; for working on the scripts by hand"]
async fn serve() {
    let suite = Suite::start().await;
    for (k, v) in suite.vars() {
        println!("export {k}={v}");
    }
    let seconds = std::env::var("PGT_SERVE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
}
