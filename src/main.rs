//! The `pgtenant` command line: serve, check, demo, user, secret.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use pgtenant::config::Settings;
use pgtenant::manage::{self, HostCommand, RegistryCommand, TenantCommand, UserCommand};
use pgtenant::{check, Server};

/// `pgtenant 0.1.0 (git 1a2b3c4d5e6f)`: the revision is recorded by build.rs.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("PGTENANT_GIT_REVISION"),
    ")"
);

/// Where the settings file is looked for when neither --config nor PGTENANT_CONFIG
/// names one, in this order.
const CONFIG_SEARCH: [&str; 2] = ["config/pgtenant.toml", "/etc/pgtenant/pgtenant.toml"];

/// Shown under every command's --help.
const ENVIRONMENT_HELP: &str = "\
Settings file, the first of:
  1. --config FILE
  2. the PGTENANT_CONFIG environment variable
  3. config/pgtenant.toml (relative to the working directory)
  4. /etc/pgtenant/pgtenant.toml

Environment:
  PGTENANT__<SECTION>__<KEY>  Overrides one setting of the file, e.g.
                              PGTENANT__PROXY__LISTEN=0.0.0.0:6432
                              PGTENANT__POOL__CHECKOUT_TIMEOUT=5s
                              PGTENANT__PROXY__TENANT_FROM=database,user (lists: commas)
  PGTENANT_CONFIG             The settings file, when --config is not given
  PGTENANT_LOG                Log filter: info (default), debug, warn,
                              or per module: pgtenant::pool=debug
  PG_BIN                      demo: the directory of initdb, pg_ctl and postgres

Every key is described in config/pgtenant.toml and the README.";

#[derive(Parser)]
#[command(
    name = "pgtenant",
    version = VERSION,
    about = "PostgreSQL proxy that routes each tenant to its own backend pool",
    after_help = ENVIRONMENT_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ConfigArg {
    /// Settings file (TOML); when not given, see "Settings file" below.
    #[arg(long, short, value_name = "FILE", env = "PGTENANT_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (until SIGINT or SIGTERM; SIGHUP re-reads the registry).
    #[command(after_help = ENVIRONMENT_HELP)]
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Validate the settings and the registry, without serving.
    ///
    /// Reads both as `serve` does and prints every problem, one per line, as
    /// `file:line:column: key: message` (or the environment variable that set the
    /// value instead of the file); exits 1 if there is any.
    #[command(after_help = ENVIRONMENT_HELP)]
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Also connect to every host and every listed tenant.
        ///
        /// Opens one connection per host and one per listed tenant as the proxy
        /// would (its database, role and password), checks that the schemas of its
        /// search_path exist, reports each and exits 1 if any fails.
        #[arg(long)]
        connect: bool,
        /// With --connect: the role for tenants without backend_user.
        ///
        /// The proxy logs such tenants in with the client's user name; this is the
        /// one to try. Default: $PGUSER, else $USER.
        #[arg(long, value_name = "ROLE", requires = "connect")]
        user: Option<String>,
    },
    /// Start two throwaway PostgreSQL clusters with sample tenants and serve them.
    ///
    /// Runs until Ctrl-C (or SIGTERM), then stops the clusters and removes them,
    /// unless --keep names a directory to leave them in.
    #[command(after_help = ENVIRONMENT_HELP)]
    Demo {
        /// Address and port the proxy listens on.
        #[arg(long, value_name = "ADDRESS", default_value = "127.0.0.1:6432")]
        listen: String,
        /// Make the clusters and settings in DIR (new or empty) and keep them.
        ///
        /// Without it a temporary directory is used and removed at the end. On exit
        /// the demo prints how to start the kept clusters and proxy again.
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
    /// The registry database: `registry init` creates or updates its schema.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Tenants in the registry: list, show, add, update, remove.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Hosts in the registry: list, add, remove.
    #[command(subcommand)]
    Host(HostCommand),
    /// Client users of the proxy (`[users.NAME]`): list, add, remove.
    #[command(subcommand)]
    User(UserCommand),
    /// Encrypted values (`enc:…`) for the registry.
    #[command(subcommand)]
    Secret(SecretCommand),
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Encrypt a value with the key `[secrets]` names and print it as `enc:…`.
    Encrypt {
        /// The value; read from standard input when not given.
        #[arg(long)]
        value: Option<String>,
        #[arg(long, short, default_value = "config/pgtenant.toml")]
        config: PathBuf,
    },
    /// Print a new random key (base64) for `PGTENANT_SECRET_KEY` or `secrets.key_file`.
    Key,
}

fn main() -> ExitCode {
    init_logs();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => config_path(config).and_then(|path| {
            let settings = Settings::load(&path)?;
            runtime(settings.proxy.workers).block_on(serve(settings))
        }),
        Command::Check {
            config,
            connect,
            user,
        } => {
            return match config_path(config) {
                Ok(path) => run_check(&path, connect, user),
                Err(e) => fail(e),
            }
        }
        Command::Demo { listen, keep } => runtime(1)
            .block_on(pgtenant::demo::run(&listen, keep.as_deref()))
            .map_err(Into::into),
        Command::Registry(cmd) => manage::registry(cmd, resolve),
        Command::Tenant(cmd) => manage::tenant(cmd, resolve),
        Command::Host(cmd) => manage::host(cmd, resolve),
        Command::User(cmd) => manage::user(cmd, resolve),
        Command::Secret(SecretCommand::Encrypt { value, config }) => {
            pgtenant::cli::encrypt_secret(&config, value)
        }
        Command::Secret(SecretCommand::Key) => {
            println!("{}", pgtenant::secret::SecretKey::generate().to_base64());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Prints an error with its causes, each once: a cause whose text its parent already
/// shows is not repeated.
fn fail(e: anyhow::Error) -> ExitCode {
    let mut text = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    eprintln!("pgtenant: {text}");
    ExitCode::FAILURE
}

fn resolve(config: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    config_path(ConfigArg { config })
}

/// The settings file: --config or PGTENANT_CONFIG, else the first of CONFIG_SEARCH
/// that exists.
fn config_path(arg: ConfigArg) -> anyhow::Result<PathBuf> {
    if let Some(path) = arg.config {
        return Ok(path);
    }
    CONFIG_SEARCH
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no settings file: neither {} exists; pass --config FILE or set PGTENANT_CONFIG",
                CONFIG_SEARCH.join(" nor ")
            )
        })
}

/// Logs to standard output: text (colours only on a terminal) or, with
/// `PGTENANT_LOG_FORMAT=json`, one JSON object per line; `PGTENANT_LOG` filters.
fn init_logs() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGTENANT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match std::env::var("PGTENANT_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().with_current_span(false).init(),
        _ => builder.with_ansi(std::io::stdout().is_terminal()).init(),
    }
}

/// One worker: a single event loop, as PgBouncer runs; the cheapest per transaction
/// when the proxy shares a few cores with PostgreSQL. More workers: a work-stealing
/// pool of that many threads.
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    builder.enable_all().build().expect("tokio runtime")
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let server = Server::start(settings).await.context("cannot start")?;
    tokio::select! {
        _ = pgtenant::server::shutdown_signal() => {}
        _ = server.stop_requested() => {}
    }
    tracing::info!("shutting down");
    server.stop().await;
    Ok(())
}

fn run_check(config: &Path, connect: bool, user: Option<String>) -> ExitCode {
    let (settings, snapshot) = match check::load(config) {
        Ok(loaded) => loaded,
        Err(problems) => {
            eprintln!("{problems}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", check::summary(config, &settings, &snapshot));
    if !connect {
        return ExitCode::SUCCESS;
    }
    let user = user
        .or_else(|| std::env::var("PGUSER").ok())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "postgres".into());
    let outcomes = runtime(1).block_on(check::connections(&settings, &snapshot, &user));
    for outcome in &outcomes {
        println!("{outcome}");
    }
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    if failed == 0 {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "{failed} of {} failed",
        check::count(outcomes.len(), "check", "checks")
    );
    ExitCode::FAILURE
}
