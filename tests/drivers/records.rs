//! The records the driver checks emit, and what the Rust drivers' checks share with
//! the scripts (the same constants as tests/drivers/pgt_common.py).

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const MODES: [&str; 2] = ["session", "transaction"];

/// Checks every driver runs in both modes (see pgt_common.py for what each means).
pub const COMMON_FEATURES: &[&str] = &[
    "connect",
    "isolation",
    "prepared",
    "savepoint",
    "error_rollback",
    "copy_in",
    "copy_out",
    "listen_notify",
    "cancel",
    "bytea_1mb",
    "rows_1e5",
    "concurrency",
];

pub const ACME_ITEMS: &[&str] = &["acme anvil", "acme rocket skates"];
pub const GLOBEX_ITEMS: &[&str] = &["globex hammock", "globex doomsday device", "globex coupon"];

pub const PREPARED_RUNS: i32 = 1000;
pub const COPY_ROWS: i64 = 10_000;
pub const RESULT_ROWS: i64 = 100_000;
pub const CONCURRENT_CLIENTS: usize = 50;
pub const TRANSACTIONS_PER_CLIENT: i32 = 20;
pub const CANCEL_AFTER: Duration = Duration::from_millis(300);
pub const CANCEL_LIMIT: Duration = Duration::from_secs(5);
/// One check may take this long before it is recorded as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// The prepared statement every driver reuses ($1 placeholder).
pub const PREPARED_SQL: &str =
    "SELECT $1::int + 1 AS n, (SELECT count(*) FROM items) AS items, pg_backend_pid() AS pid";

pub const COPY_OUT_SQL: &str =
    "COPY (SELECT g, 'row-' || g || '-é' FROM generate_series(1, 10000) g ORDER BY g) TO STDOUT";

/// count and md5 of a table filled with `copy_data()`, comparable to `md5(copy_data())`.
pub fn copy_check_sql(table: &str) -> String {
    format!(
        "SELECT count(*), md5(string_agg(id::text || E'\\t' || name || E'\\n', '' ORDER BY id)) FROM {table}"
    )
}

/// The 10,000 rows of the COPY checks as COPY text; also what COPY_OUT_SQL gives.
pub fn copy_data() -> String {
    (1..=COPY_ROWS)
        .map(|i| format!("{i}\trow-{i}-é\n"))
        .collect()
}

/// Where the proxies and the server listen.
#[derive(Debug, Clone, Copy)]
pub struct Modes {
    pub session_port: u16,
    pub transaction_port: u16,
    pub direct_port: u16,
}

impl Modes {
    pub fn port(&self, mode: &str) -> u16 {
        match mode {
            "session" => self.session_port,
            _ => self.transaction_port,
        }
    }

    pub fn url(&self, mode: &str, tenant: &str) -> String {
        format!("postgres://app@127.0.0.1:{}/{tenant}", self.port(mode))
    }
}

pub type CheckResult = Result<String, String>;

/// A failed check: `Err(message)`.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}
pub(crate) use ensure;

/// `Err` if `got != want`, naming `what`.
pub fn expect_eq<T: PartialEq + std::fmt::Debug>(
    got: T,
    want: T,
    what: &str,
) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, expected {want:?}"))
    }
}

/// Detail about the servers one client used; in transaction mode a client that
/// never switched proves nothing.
pub fn switch_detail(
    mode: &str,
    pids: &std::collections::HashSet<i32>,
    runs: usize,
) -> CheckResult {
    if mode == "transaction" {
        ensure!(
            pids.len() > 1,
            "all {runs} executions ran on one server: the check proves nothing"
        );
        Ok("executions switched server connections".into())
    } else {
        expect_eq(
            pids.len(),
            1,
            "server connections used by one session-mode client",
        )?;
        Ok(String::new())
    }
}

/// Records of one driver.
pub struct Records {
    driver: &'static str,
    pub out: Vec<Value>,
}

impl Records {
    pub fn new(driver: &'static str) -> Records {
        Records {
            driver,
            out: Vec::new(),
        }
    }

    pub fn info(&mut self, name: &str, version: &str, notes: &str) {
        self.out.push(json!({
            "driver": self.driver,
            "info": {"name": name, "version": version, "notes": notes},
        }));
    }

    /// Runs one check with a time limit and records pass (with its detail) or fail.
    pub async fn check<F>(&mut self, mode: &str, feature: &str, check: F)
    where
        F: Future<Output = CheckResult>,
    {
        let started = Instant::now();
        let result = match tokio::time::timeout(CHECK_TIMEOUT, check).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer within {} s (hung)",
                CHECK_TIMEOUT.as_secs()
            )),
        };
        let ms = started.elapsed().as_millis() as u64;
        let record = match result {
            Ok(detail) => json!({
                "driver": self.driver, "mode": mode, "feature": feature,
                "status": "pass", "detail": detail, "ms": ms,
            }),
            Err(error) => json!({
                "driver": self.driver, "mode": mode, "feature": feature,
                "status": "fail", "error": error, "ms": ms,
            }),
        };
        self.out.push(record);
    }

    /// A feature the driver has no API for.
    pub fn na(&mut self, mode: &str, feature: &str, reason: &str) {
        self.out.push(json!({
            "driver": self.driver, "mode": mode, "feature": feature,
            "status": "na", "detail": reason, "ms": 0,
        }));
    }
}

/// The version of a dependency as Cargo.lock has it.
pub fn locked_version(package: &str) -> String {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"))
        .unwrap_or_default();
    let needle = format!("name = \"{package}\"\nversion = \"");
    lock.find(&needle)
        .and_then(|at| {
            let rest = &lock[at + needle.len()..];
            rest.find('"').map(|end| rest[..end].to_string())
        })
        .unwrap_or_else(|| "?".into())
}
