//! `pgtenant tenant move NAME --to HOST [--copy]`: asks the running proxy (its
//! admin console, at `proxy.listen` of the settings file) to move the tenant, shows
//! the move's phase and copy progress from `SHOW MOVES`, and ends when the move
//! has: exit 0, or an error saying why. The pause lives in the proxy, so the move
//! runs there; the CLI only drives and watches it.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::config::Settings;

#[derive(Args, Debug, Clone)]
pub struct MoveArgs {
    /// The tenant to move.
    pub name: String,
    /// The host (registry name) to move it to.
    #[arg(long, value_name = "HOST", required_unless_present_any = ["abort", "status"])]
    pub to: Option<String>,
    /// Copy the tenant's data first (logical replication; wal_level = logical on both
    /// hosts). Without it the data must already be on the new host.
    #[arg(long, conflicts_with = "abort")]
    pub copy: bool,
    /// After a successful copy, drop the tenant's schemas (or database) on the old host.
    #[arg(long, requires = "copy")]
    pub drop_source: bool,
    /// Abort the tenant's move under way (or one cut short): it serves from the old host.
    #[arg(long)]
    pub abort: bool,
    /// Show the tenant's latest move as recorded (by any instance, with a registry
    /// database), and exit.
    #[arg(long, conflicts_with_all = ["to", "abort", "copy"])]
    pub status: bool,
    /// Console user (one of admin.users); default: the first of them. The password
    /// comes from PGPASSWORD.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Settings file (TOML); default as for `serve` (see its --help).
    #[arg(long, short, value_name = "FILE", env = "PGTENANT_CONFIG")]
    pub config: Option<std::path::PathBuf>,
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

async fn console(settings: &Settings, user: Option<&str>) -> anyhow::Result<Client> {
    let (host, port) = settings
        .proxy
        .listen
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("proxy.listen is not host:port"))?;
    let host = match host.trim_start_matches('[').trim_end_matches(']') {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" => "::1",
        h => h,
    };
    let user = user
        .map(str::to_owned)
        .or_else(|| settings.admin.users.first().cloned())
        .ok_or_else(|| anyhow!("admin.users is empty: no user may use the admin console"))?;
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port.parse().context("proxy.listen port")?)
        .user(&user)
        .dbname(&settings.admin.console_database)
        .application_name("pgtenant tenant move")
        .connect_timeout(Duration::from_secs(10));
    if let Ok(password) = std::env::var("PGPASSWORD") {
        config.password(password);
    }
    let (client, connection) = config.connect(NoTls).await.with_context(|| {
        format!("cannot reach the proxy's admin console at {host}:{port} (is pgtenant serving?)")
    })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn db_error(e: tokio_postgres::Error) -> anyhow::Error {
    match e.as_db_error() {
        Some(db) => anyhow!("{}", db.message()),
        None => anyhow!("{e}"),
    }
}

pub async fn run(args: MoveArgs, config: &Path) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    let admin = console(&settings, args.user.as_deref()).await?;
    if args.status {
        let row = row_of(&admin, &args.name)
            .await
            .ok_or_else(|| anyhow!("no move of tenant \"{}\" is recorded", args.name))?;
        println!("{}", status_line(&row));
        return Ok(());
    }
    if args.abort {
        admin
            .simple_query(&format!("ABORT MOVE {}", quote(&args.name)))
            .await
            .map_err(db_error)?;
        let said = row_of(&admin, &args.name)
            .await
            .and_then(|r| r.last().cloned());
        println!("{}", said.unwrap_or_else(|| "move aborted".into()));
        return Ok(());
    }
    let to = args.to.as_deref().expect("clap requires --to");
    let mut command = format!("MOVE {} TO {}", quote(&args.name), quote(to));
    if args.copy {
        command.push_str(" COPY");
    }
    if args.drop_source {
        command.push_str(" DROP SOURCE");
    }
    let watcher = console(&settings, args.user.as_deref()).await?;
    let bar = progress_bar();
    let moving = admin.simple_query(&command);
    tokio::pin!(moving);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let outcome = loop {
        tokio::select! {
            done = &mut moving => break done,
            _ = tick.tick() => show(&watcher, &args.name, &bar).await,
        }
    };
    bar.finish_and_clear();
    outcome.map_err(db_error)?;
    let message = row_of(&watcher, &args.name)
        .await
        .and_then(|r| r.last().cloned())
        .unwrap_or_else(|| format!("tenant \"{}\" moved to {to}", args.name));
    println!("{message}");
    Ok(())
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:<14} [{bar:30}] {bytes}/{total_bytes} ({eta} left)",
        )
        .expect("progress template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// The tenant's SHOW MOVES row, as text.
async fn row_of(watcher: &Client, tenant: &str) -> Option<Vec<String>> {
    let rows = watcher.simple_query("SHOW MOVES").await.ok()?;
    rows.into_iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) if row.get(0) == Some(tenant) => Some(
            (0..row.len())
                .map(|i| row.get(i).unwrap_or("").to_string())
                .collect(),
        ),
        _ => None,
    })
}

/// One line saying where the move is: phase, whether it runs, its last message.
fn status_line(row: &[String]) -> String {
    let get = |i: usize| row.get(i).map(String::as_str).unwrap_or("");
    let phase = get(PHASE);
    let state = match (get(RUNNING), phase) {
        ("t", _) => format!("running on instance {}", get(INSTANCE)),
        (_, "active" | "failed" | "aborted") => "ended".to_string(),
        _ => "cut short (resume: move it again the same way; or --abort)".to_string(),
    };
    format!(
        "tenant \"{}\": move {} from {} to {}{}: phase {phase}, {state}{}{}",
        get(0),
        get(MOVE_ID),
        get(1),
        get(2),
        if get(3) == "t" { " with copy" } else { "" },
        if get(ROWS_TOTAL).is_empty() || get(ROWS_TOTAL) == "0" {
            String::new()
        } else {
            format!("; {} of {} rows copied", get(ROWS_DONE), get(ROWS_TOTAL))
        },
        match row.last().map(String::as_str) {
            Some("") | None => String::new(),
            Some(message) => format!("\n{message}"),
        }
    )
}

/// Columns of SHOW MOVES (`admin::moving::COLUMNS`).
const PHASE: usize = 4;
const RUNNING: usize = 5;
const MOVE_ID: usize = 12;
const INSTANCE: usize = 13;
const ROWS_DONE: usize = 6;
const ROWS_TOTAL: usize = 7;
const BYTES_DONE: usize = 8;
const BYTES_TOTAL: usize = 9;

async fn show(watcher: &Client, tenant: &str, bar: &ProgressBar) {
    let Some(row) = row_of(watcher, tenant).await else {
        return;
    };
    let number = |i: usize| row.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let phase = row.get(PHASE).cloned().unwrap_or_default();
    if bar.is_hidden() && bar.message() != phase {
        // Not a terminal: one line per phase.
        eprintln!(
            "{phase} ({} of {} rows copied)",
            number(ROWS_DONE),
            number(ROWS_TOTAL)
        );
    }
    bar.set_message(phase);
    bar.set_length(number(BYTES_TOTAL));
    bar.set_position(number(BYTES_DONE));
}
