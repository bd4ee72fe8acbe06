//! `pgtenant demo`: two throwaway PostgreSQL clusters with sample tenants, served by
//! one proxy until Ctrl-C. Everything lives in one temp dir removed at the end, or in
//! a directory of the user's choice (`--keep`) left for exploring.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::cluster::{Cluster, ClusterError, ClusterOptions, PgBin};
use crate::config::Settings;
use crate::server::{Server, StartError};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("demo files: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "{address} is already in use (another pgtenant or demo?); \
         serve on another address with --listen, e.g. pgtenant demo --listen {free}"
    )]
    Busy { address: String, free: String },
    #[error("--listen {address}: {why}")]
    Listen { address: String, why: String },
    #[error("--keep {}: {why}", dir.display())]
    Keep { dir: PathBuf, why: String },
}

/// Host A: one shared database `erp`, a schema per tenant.
const SEED_A: &str = "
CREATE ROLE app LOGIN;
CREATE DATABASE erp OWNER app;
";
const SEED_ERP: &str = "
SET ROLE app;
CREATE SCHEMA tenant_acme;
CREATE SCHEMA tenant_globex;
CREATE TABLE tenant_acme.items (id int PRIMARY KEY, name text);
CREATE TABLE tenant_globex.items (id int PRIMARY KEY, name text);
INSERT INTO tenant_acme.items VALUES (1, 'acme anvil'), (2, 'acme rocket skates');
INSERT INTO tenant_globex.items VALUES (1, 'globex hammock'), (2, 'globex doomsday device'), (3, 'globex coupon');
";
/// Host B: a database per tenant.
const SEED_B: &str = "
CREATE ROLE app LOGIN;
CREATE DATABASE initech OWNER app;
CREATE DATABASE hooli OWNER app;
";
const SEED_TENANT_DB: &str = "
SET ROLE app;
CREATE TABLE items (id int PRIMARY KEY, name text);
INSERT INTO items SELECT 1, current_database() || ' stapler';
";

/// Runs the demo until SIGINT/SIGTERM. The listen address is tried before any
/// cluster is made, so a busy port fails at once. With `keep`, everything is made in
/// that directory (new or empty) and left there.
pub async fn run(listen: &str, keep: Option<&Path>) -> Result<(), DemoError> {
    check_listen(listen)?;
    let bin = PgBin::find()?;
    let (dir, temp) = match keep {
        Some(dir) => (keep_dir(dir)?, None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("pgtenant-demo-")
                .tempdir()?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    // The clusters run as the `postgres` OS user when we are root; it must reach them.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    println!("starting two PostgreSQL clusters in {} ...", dir.display());
    let parent = dir.clone();
    let (mut host_a, mut host_b) = tokio::task::spawn_blocking(move || start_hosts(&bin, &parent))
        .await
        .expect("cluster setup does not panic")?;

    let config = write_config(&dir, listen, &host_a, &host_b)?;
    let server = Server::start(Settings::load(&config)?).await?;
    let addr = server.local_addr();
    let ending = match temp {
        Some(_) => "removes",
        None => "keeps",
    };
    println!(
        "\npgtenant is serving on {addr} (config: {})\n\n{}\n\
         Ctrl-C (or SIGTERM) stops the proxy and both clusters and {ending} {}.",
        config.display(),
        try_lines(addr),
        dir.display()
    );
    crate::server::shutdown_signal().await;
    // Stdout may be gone by now (a closed terminal or pipe); stopping goes on.
    let _ = writeln!(std::io::stdout(), "stopping ...");
    server.stop().await;
    let kept = temp.is_none();
    tokio::task::spawn_blocking(move || {
        if kept {
            // A clean stop: the kept clusters start again without recovery.
            host_a.stop();
            host_b.stop();
        }
        drop((host_a, host_b))
    })
    .await
    .ok();
    if kept {
        let _ = writeln!(std::io::stdout(), "{}", restart_lines(&dir, &config));
    }
    drop(temp);
    Ok(())
}

/// What to paste into a shell: each line runs as it is, comments after `#`.
fn try_lines(addr: SocketAddr) -> String {
    let items = "-c 'SELECT current_database(), * FROM items'";
    format!(
        "Try (each line can be pasted into a shell):\n  \
         psql postgres://demo@{addr}/acme -c 'SHOW search_path' -c 'SELECT * FROM items'\n  \
         psql postgres://demo@{addr}/globex -c 'SELECT * FROM items'\n  \
         psql postgres://demo@{addr}/initech {items}\n  \
         psql postgres://demo@{addr}/hooli {items}   # any other name: the template entry, a database per tenant\n  \
         psql postgres://demo.acme@{addr}/postgres -c 'SELECT * FROM items'   # the tenant from the user name suffix\n"
    )
}

/// How to bring a kept demo back: the clusters (as the `postgres` OS user when
/// root, as they were made) and the proxy.
fn restart_lines(dir: &Path, config: &Path) -> String {
    let pg_ctl = PgBin::find()
        .map(|bin| bin.tool("pg_ctl").display().to_string())
        .unwrap_or_else(|_| "pg_ctl".into());
    // SAFETY: geteuid has no preconditions and cannot fail.
    let as_postgres = match unsafe { libc::geteuid() } == 0 {
        true => "runuser -u postgres -- ",
        false => "",
    };
    let mut text = format!(
        "kept in {}: the clusters pg-a and pg-b, tenants.toml and pgtenant.toml. To start them again:\n",
        dir.display()
    );
    for host in ["pg-a", "pg-b"] {
        let data = dir.join(host);
        text.push_str(&format!(
            "  {as_postgres}{pg_ctl} -D {} -l {} start\n",
            data.display(),
            data.join("server.log").display()
        ));
    }
    text.push_str(&format!("  pgtenant serve --config {}", config.display()));
    text
}

/// Fails at once, before any cluster is made, when the proxy could not listen.
fn check_listen(listen: &str) -> Result<(), DemoError> {
    let addr: SocketAddr = listen.parse().map_err(|_| DemoError::Listen {
        address: listen.to_string(),
        why: "not an IP address and port (such as 127.0.0.1:6432)".into(),
    })?;
    match TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(DemoError::Busy {
            address: listen.to_string(),
            free: free_near(addr),
        }),
        Err(e) => Err(DemoError::Listen {
            address: listen.to_string(),
            why: e.to_string(),
        }),
    }
}

/// A free address near a busy one, to suggest.
fn free_near(busy: SocketAddr) -> String {
    (1..=100)
        .filter_map(|step| busy.port().checked_add(step))
        .map(|port| SocketAddr::new(busy.ip(), port))
        .find(|addr| TcpListener::bind(addr).is_ok())
        .unwrap_or_else(|| SocketAddr::new(busy.ip(), 0))
        .to_string()
}

/// The `--keep` directory, made if needed; it must be empty.
fn keep_dir(dir: &Path) -> Result<PathBuf, DemoError> {
    let refuse = |why: String| DemoError::Keep {
        dir: dir.to_path_buf(),
        why,
    };
    std::fs::create_dir_all(dir).map_err(|e| refuse(e.to_string()))?;
    let mut entries = std::fs::read_dir(dir).map_err(|e| refuse(e.to_string()))?;
    if entries.next().is_some() {
        return Err(refuse(
            "the directory is not empty; name a new or empty one".into(),
        ));
    }
    // Absolute, so the written settings work from any working directory.
    std::fs::canonicalize(dir).map_err(|e| refuse(e.to_string()))
}

fn start_hosts(bin: &PgBin, parent: &Path) -> Result<(Cluster, Cluster), ClusterError> {
    let host_a = Cluster::start_in(bin, parent, "pg-a", ClusterOptions::default())?;
    host_a.psql_file("postgres", SEED_A)?;
    host_a.psql_file("erp", SEED_ERP)?;
    let host_b = Cluster::start_in(bin, parent, "pg-b", ClusterOptions::default())?;
    host_b.psql_file("postgres", SEED_B)?;
    host_b.psql_file("initech", SEED_TENANT_DB)?;
    host_b.psql_file("hooli", SEED_TENANT_DB)?;
    Ok((host_a, host_b))
}

fn write_config(
    dir: &Path,
    listen: &str,
    a: &Cluster,
    b: &Cluster,
) -> std::io::Result<std::path::PathBuf> {
    let tenants = dir.join("tenants.toml");
    std::fs::write(
        &tenants,
        format!(
            r#"# Registry written by `pgtenant demo`.
[hosts.pg-a]
address = "{a}"
max_connections = 50

[hosts.pg-b]
address = "{b}"
max_connections = 50

# Schema per tenant in one shared database.
[tenants.acme]
host = "pg-a"
database = "erp"
search_path = ["tenant_acme"]
backend_user = "app"

[tenants.globex]
host = "pg-a"
database = "erp"
search_path = ["tenant_globex"]
backend_user = "app"

# Database per tenant on another host.
[tenants.initech]
host = "pg-b"
database = "initech"
backend_user = "app"

# Any other tenant name: its own database on pg-b.
[tenants."*"]
host = "pg-b"
database = "{{tenant}}"
backend_user = "app"
"#,
            a = a.address(),
            b = b.address()
        ),
    )?;
    let config = dir.join("pgtenant.toml");
    std::fs::write(
        &config,
        format!(
            "# Proxy settings written by `pgtenant demo`.\n[proxy]\nlisten = \"{listen}\"\ntenant_from = [\"user_suffix\", \"database\"]\npool_mode = \"session\"\nauth = \"trust\"\n\n[registry]\nfile = \"{}\"\n",
            tenants.display()
        ),
    )?;
    Ok(config)
}
