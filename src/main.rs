//! The `pgtenant` command line: serve, check, demo, user, secret.

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
    /// Client users of the proxy (`[users.NAME]` in the registry file).
    #[command(subcommand)]
    User(UserCommand),
    /// Encrypted values (`enc:…`) for the registry.
    #[command(subcommand)]
    Secret(SecretCommand),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add (or replace) a user: its password is stored as a verifier, never as text.
    Add {
        name: String,
        /// The password; read from standard input when not given.
        #[arg(long)]
        password: Option<String>,
        /// Tenants the user may reach, comma-separated; `*` for all.
        #[arg(long, value_delimiter = ',', num_args = 0..)]
        tenants: Vec<String>,
        /// Store an md5 verifier instead of SCRAM-SHA-256 (for `proxy.auth = "md5"`).
        #[arg(long)]
        md5: bool,
        #[arg(long, short, default_value = "config/pgtenant.toml")]
        config: PathBuf,
    },
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGTENANT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
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
        Command::User(UserCommand::Add {
            name,
            password,
            tenants,
            md5,
            config,
        }) => pgtenant::cli::add_user(&config, &name, password, &tenants, md5),
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
        Err(e) => {
            eprintln!("pgtenant: {e:#}");
            ExitCode::FAILURE
        }
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
    pgtenant::server::shutdown_signal().await;
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
    let secrets = match pgtenant::secret::Secrets::from_settings(&settings.secrets) {
        Ok(secrets) => secrets,
        Err(e) => {
            eprintln!("{}: secrets: {e}", config.display());
            return ExitCode::FAILURE;
        }
    };
    if let (Some(cert), Some(key)) = (&settings.tls.cert, &settings.tls.key) {
        if let Err(e) = pgtenant::tls::ServerTls::load(cert, key) {
            eprintln!("{}: tls: {e}", config.display());
            return ExitCode::FAILURE;
        }
    }
    match file::load(path, &secrets) {
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
