//! `pgtenant demo`: two throwaway PostgreSQL clusters with sample tenants, served by
//! one proxy until Ctrl-C. Everything lives in one temp dir removed at the end.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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

pub async fn run(listen: &str) -> Result<(), DemoError> {
    let bin = PgBin::find()?;
    let dir = tempfile::Builder::new()
        .prefix("pgtenant-demo-")
        .tempdir()?;
    // The clusters run as the `postgres` OS user when we are root; it must reach them.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    println!(
        "starting two PostgreSQL clusters in {} ...",
        dir.path().display()
    );
    let parent = dir.path().to_path_buf();
    let (host_a, host_b) = tokio::task::spawn_blocking(move || start_hosts(&bin, &parent))
        .await
        .expect("cluster setup does not panic")?;

    let config = write_config(dir.path(), listen, &host_a, &host_b)?;
    let server = Server::start(Settings::load(&config)?).await?;
    let addr = server.local_addr();
    println!(
        "\npgtenant is serving on {addr} (config: {})\n\nTry:\n  \
         psql postgres://demo@{addr}/acme -c 'SHOW search_path' -c 'SELECT * FROM items'\n  \
         psql postgres://demo@{addr}/globex -c 'SELECT * FROM items'\n  \
         psql postgres://demo@{addr}/initech -c 'SELECT current_database(), * FROM items'\n  \
         psql postgres://demo@{addr}/hooli      (any name: the template entry, database per tenant)\n  \
         psql postgres://demo.acme@{addr}/postgres   (tenant from the user name suffix)\n\n\
         Ctrl-C (or SIGTERM) stops the proxy and both clusters and removes {}.",
        config.display(),
        dir.path().display()
    );
    crate::server::shutdown_signal().await;
    // Stdout may be gone by now (a closed terminal or pipe); stopping goes on.
    let _ = writeln!(std::io::stdout(), "stopping ...");
    server.stop().await;
    tokio::task::spawn_blocking(move || drop((host_a, host_b)))
        .await
        .ok();
    drop(dir);
    Ok(())
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
