//! `pgtenant registry init`, `pgtenant tenant|host|user …`: registry management from
//! the command line. Every change goes through `registry::store::Store`, the same
//! code the HTTP API uses, and lands where the settings say the registry lives.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use crate::auth::Verifier;
use crate::config::{PoolMode, Settings};
use crate::registry::migrate;
use crate::registry::store::{HostRecord, Store, TenantRecord, TenantUpdate, UserRecord};

/// `--config` as every command takes it; resolved like `serve`'s.
#[derive(Args, Clone, Debug)]
pub struct ConfigOpt {
    /// Settings file (TOML); default as for `serve` (see its --help).
    #[arg(long, short, value_name = "FILE", env = "PGTENANT_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Args, Clone, Debug)]
pub struct OutputOpt {
    /// `text` (a table) or `json`.
    #[arg(long, short, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum RegistryCommand {
    /// Create or bring up to date the `pgtenant` schema in a registry database.
    ///
    /// Safe to run again: only migrations not yet applied run (recorded in
    /// pgtenant.schema_version).
    Init {
        /// The registry database; default: registry.url of the settings.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        #[command(flatten)]
        config: ConfigOpt,
    },
}

#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// List the tenants.
    List {
        #[command(flatten)]
        config: ConfigOpt,
        #[command(flatten)]
        output: OutputOpt,
    },
    /// Show one tenant.
    Show {
        name: String,
        #[command(flatten)]
        config: ConfigOpt,
        #[command(flatten)]
        output: OutputOpt,
    },
    /// Add a tenant.
    Add {
        name: String,
        #[command(flatten)]
        fields: TenantFields,
        #[command(flatten)]
        config: ConfigOpt,
    },
    /// Change the given fields of a tenant.
    Update {
        name: String,
        #[command(flatten)]
        fields: TenantFields,
        #[command(flatten)]
        config: ConfigOpt,
    },
    /// Remove a tenant.
    Remove {
        name: String,
        #[command(flatten)]
        config: ConfigOpt,
    },
    /// Move a tenant to another host (its data too with --copy), through the
    /// running proxy; blocks until the move is done.
    Move(crate::moves::cli::MoveArgs),
}

#[derive(Args, Debug, Clone)]
pub struct TenantFields {
    /// The host (registry name) that serves it.
    #[arg(long)]
    pub host: Option<String>,
    /// Its database on that host.
    #[arg(long)]
    pub database: Option<String>,
    /// Schemas, comma-separated, in order.
    #[arg(long, value_delimiter = ',')]
    pub search_path: Option<Vec<String>>,
    /// The role on the server (default: the client's user name).
    #[arg(long)]
    pub backend_user: Option<String>,
    /// That role's password (may be `enc:…`).
    #[arg(long)]
    pub backend_password: Option<String>,
    #[arg(long)]
    pub pool_size: Option<usize>,
    /// session or transaction.
    #[arg(long, value_parser = parse_mode)]
    pub pool_mode: Option<PoolMode>,
}

fn parse_mode(text: &str) -> Result<PoolMode, String> {
    match text {
        "session" => Ok(PoolMode::Session),
        "transaction" => Ok(PoolMode::Transaction),
        _ => Err("session or transaction".into()),
    }
}

#[derive(Subcommand, Debug)]
pub enum HostCommand {
    /// List the hosts.
    List {
        #[command(flatten)]
        config: ConfigOpt,
        #[command(flatten)]
        output: OutputOpt,
    },
    /// Add a host.
    Add {
        name: String,
        /// host:port
        #[arg(long)]
        address: String,
        /// Server connections all its tenants may hold together.
        #[arg(long)]
        max_connections: usize,
        /// The role for tenant moves (default postgres).
        #[arg(long)]
        admin_user: Option<String>,
        #[arg(long)]
        admin_password: Option<String>,
        #[command(flatten)]
        config: ConfigOpt,
    },
    /// Remove a host that serves no tenant.
    Remove {
        name: String,
        #[command(flatten)]
        config: ConfigOpt,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// List the client users.
    List {
        #[command(flatten)]
        config: ConfigOpt,
        #[command(flatten)]
        output: OutputOpt,
    },
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
        #[command(flatten)]
        config: ConfigOpt,
    },
    /// Remove a user.
    Remove {
        name: String,
        #[command(flatten)]
        config: ConfigOpt,
    },
}

/// `resolve` turns `--config` into the settings file (as `serve` looks for it).
pub fn registry(
    cmd: RegistryCommand,
    resolve: impl Fn(Option<PathBuf>) -> anyhow::Result<PathBuf>,
) -> anyhow::Result<()> {
    let RegistryCommand::Init { url, config } = cmd;
    let url = match url {
        Some(url) => url,
        None => Settings::load(&resolve(config.config)?)?
            .registry
            .url
            .context("no --url given and no registry.url in the settings")?,
    };
    runtime().block_on(async {
        let text = |e: tokio_postgres::Error| crate::registry::rows::error_text(&e);
        let mut client = migrate::connect(&url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to the registry database: {}", text(e)))?;
        let applied = migrate::migrate(&mut client)
            .await
            .map_err(|e| anyhow::anyhow!("registry init: {}", text(e)))?;
        match applied.is_empty() {
            true => println!("registry schema up to date (version {})", migrate::latest()),
            false => println!(
                "registry schema at version {} (applied {})",
                migrate::latest(),
                applied
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
        Ok(())
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn open(path: &Path) -> anyhow::Result<Store> {
    let settings = Settings::load(path)?;
    Ok(Store::open(&settings)?)
}

pub fn tenant(
    cmd: TenantCommand,
    resolve: impl Fn(Option<PathBuf>) -> anyhow::Result<PathBuf>,
) -> anyhow::Result<()> {
    runtime().block_on(async {
        match cmd {
            TenantCommand::Move(args) => {
                let config = resolve(args.config.clone())?;
                crate::moves::cli::run(args, &config).await
            }
            TenantCommand::List { config, output } => {
                let store = open(&resolve(config.config)?)?;
                let tenants = store.tenants().await?;
                print_list(
                    &tenants,
                    output.output,
                    &[
                        "name",
                        "host",
                        "database",
                        "search_path",
                        "backend_user",
                        "pool_size",
                    ],
                    |t| {
                        vec![
                            t.name.clone(),
                            t.host.clone(),
                            t.database.clone(),
                            t.search_path.join(","),
                            t.backend_user.clone().unwrap_or_default(),
                            t.pool_size.map(|n| n.to_string()).unwrap_or_default(),
                        ]
                    },
                )
            }
            TenantCommand::Show {
                name,
                config,
                output,
            } => {
                let store = open(&resolve(config.config)?)?;
                print_one(&store.tenant(&name).await?, output.output)
            }
            TenantCommand::Add {
                name,
                fields,
                config,
            } => {
                let store = open(&resolve(config.config)?)?;
                let tenant = TenantRecord {
                    name: name.clone(),
                    host: fields.host.context("--host is required")?,
                    database: fields.database.context("--database is required")?,
                    search_path: fields.search_path.unwrap_or_default(),
                    backend_user: fields.backend_user,
                    backend_password: fields.backend_password,
                    pool_size: fields.pool_size,
                    pool_mode: fields.pool_mode,
                    ..TenantRecord::default()
                };
                store.add_tenant(tenant).await?;
                println!("tenant \"{name}\" added to {}", store.describe());
                Ok(())
            }
            TenantCommand::Update {
                name,
                fields,
                config,
            } => {
                let store = open(&resolve(config.config)?)?;
                let update = TenantUpdate {
                    host: fields.host,
                    database: fields.database,
                    search_path: fields.search_path,
                    backend_user: fields.backend_user,
                    backend_password: fields.backend_password,
                    pool_size: fields.pool_size,
                    pool_mode: fields.pool_mode,
                };
                anyhow::ensure!(
                    !update.is_empty(),
                    "nothing to change: give at least one field"
                );
                store.update_tenant(&name, update).await?;
                println!("tenant \"{name}\" updated in {}", store.describe());
                Ok(())
            }
            TenantCommand::Remove { name, config } => {
                let store = open(&resolve(config.config)?)?;
                store.remove_tenant(&name).await?;
                println!("tenant \"{name}\" removed from {}", store.describe());
                Ok(())
            }
        }
    })
}

pub fn host(
    cmd: HostCommand,
    resolve: impl Fn(Option<PathBuf>) -> anyhow::Result<PathBuf>,
) -> anyhow::Result<()> {
    runtime().block_on(async {
        match cmd {
            HostCommand::List { config, output } => {
                let store = open(&resolve(config.config)?)?;
                let hosts = store.hosts().await?;
                print_list(
                    &hosts,
                    output.output,
                    &["name", "address", "max_connections", "admin_user"],
                    |h| {
                        vec![
                            h.name.clone(),
                            h.address.clone(),
                            h.max_connections.to_string(),
                            h.admin_user.clone().unwrap_or_default(),
                        ]
                    },
                )
            }
            HostCommand::Add {
                name,
                address,
                max_connections,
                admin_user,
                admin_password,
                config,
            } => {
                let store = open(&resolve(config.config)?)?;
                let host = HostRecord {
                    name: name.clone(),
                    address,
                    max_connections,
                    admin_user,
                    admin_password,
                    ..HostRecord::default()
                };
                store.add_host(host).await?;
                println!("host \"{name}\" added to {}", store.describe());
                Ok(())
            }
            HostCommand::Remove { name, config } => {
                let store = open(&resolve(config.config)?)?;
                store.remove_host(&name).await?;
                println!("host \"{name}\" removed from {}", store.describe());
                Ok(())
            }
        }
    })
}

pub fn user(
    cmd: UserCommand,
    resolve: impl Fn(Option<PathBuf>) -> anyhow::Result<PathBuf>,
) -> anyhow::Result<()> {
    runtime().block_on(async {
        match cmd {
            UserCommand::List { config, output } => {
                let store = open(&resolve(config.config)?)?;
                let users = store.users().await?;
                print_list(&users, output.output, &["name", "tenants"], |u| {
                    vec![u.name.clone(), u.tenants.join(",")]
                })
            }
            UserCommand::Add {
                name,
                password,
                tenants,
                md5,
                config,
            } => {
                let store = open(&resolve(config.config)?)?;
                let password = crate::cli::given_or_stdin(password, "password")?;
                let verifier = match md5 {
                    true => postgres_protocol::password::md5(password.as_bytes(), &name),
                    false => Verifier::scram_text(&password),
                };
                let user = UserRecord {
                    name: name.clone(),
                    tenants: tenants.into_iter().filter(|t| !t.is_empty()).collect(),
                    password: verifier,
                };
                store.put_user(user).await?;
                println!(
                    "user \"{name}\" stored in {} ({} verifier)",
                    store.describe(),
                    if md5 { "md5" } else { "SCRAM-SHA-256" }
                );
                Ok(())
            }
            UserCommand::Remove { name, config } => {
                let store = open(&resolve(config.config)?)?;
                store.remove_user(&name).await?;
                println!("user \"{name}\" removed from {}", store.describe());
                Ok(())
            }
        }
    })
}

fn print_list<T: Serialize>(
    items: &[T],
    output: Output,
    headers: &[&str],
    cells: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(items)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items.iter().map(cells).collect();
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
    Ok(())
}

fn print_one<T: Serialize>(item: &T, output: Output) -> anyhow::Result<()> {
    let json = serde_json::to_value(item)?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    if let serde_json::Value::Object(fields) = json {
        for (key, value) in fields {
            let text = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            println!("{key}: {text}");
        }
    }
    Ok(())
}
