//! The `pgtenant` command line: serve, check, demo.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use pgtenant::config::Settings;
use pgtenant::registry::file;
use pgtenant::Server;

#[derive(Parser)]
#[command(
    name = "pgtenant",
    version,
    about = "PostgreSQL proxy that routes each tenant to its own backend"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        #[arg(long, short, default_value = "config/pgtenant.toml")]
        config: PathBuf,
    },
    /// Validate the configuration and the registry; print each problem and exit 1.
    Check {
        #[arg(long, short, default_value = "config/pgtenant.toml")]
        config: PathBuf,
    },
    /// Start two throwaway PostgreSQL clusters with sample tenants and serve them.
    Demo {
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: String,
    },
}

fn main() -> ExitCode {
    init_logs();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => match Settings::load(&config) {
            Ok(settings) => runtime(settings.proxy.workers).block_on(serve(settings)),
            Err(e) => Err(e.into()),
        },
        Command::Check { config } => return check(&config),
        Command::Demo { listen } => runtime(1)
            .block_on(pgtenant::demo::run(&listen))
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgtenant: {e:#}");
            ExitCode::FAILURE
        }
    }
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

fn check(config: &std::path::Path) -> ExitCode {
    let settings = match Settings::load(config) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(path) = settings.registry.file.as_ref() else {
        eprintln!(
            "{}: registry: no registry file configured",
            config.display()
        );
        return ExitCode::FAILURE;
    };
    match file::load(path) {
        Ok(snapshot) => {
            println!(
                "{}: ok; {}: ok ({} tenants, {} hosts)",
                config.display(),
                path.display(),
                snapshot.tenant_count(),
                snapshot.hosts().count()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
