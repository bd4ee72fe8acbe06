//! What `pgtenant check` tells a person about the mistakes of a first hour: each
//! settings problem at its file:line:column (or environment variable) with its key
//! and what would be valid, all in one run; registry values checked without
//! connecting; `--connect` reaching every host and tenant.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn pgtenant() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgtenant"));
    // Overrides from the environment running the tests must not leak in.
    for (name, _) in std::env::vars() {
        if name.starts_with("PGTENANT") {
            command.env_remove(name);
        }
    }
    command
}

/// A settings file and a registry in a fresh directory; the settings name the
/// registry by its absolute path.
fn files(settings: &str, registry: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let registry_path = dir.path().join("tenants.toml");
    std::fs::write(&registry_path, registry).unwrap();
    let config = dir.path().join("pgtenant.toml");
    std::fs::write(
        &config,
        format!(
            "{settings}\n[registry]\nfile = {:?}\n",
            registry_path.display().to_string()
        ),
    )
    .unwrap();
    (dir, config)
}

fn check(config: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = pgtenant();
    command.arg("check").arg("--config").arg(config);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const ONE_HOST: &str =
    "[hosts.a]\naddress = \"127.0.0.1:5432\"\n[tenants.acme]\nhost = \"a\"\ndatabase = \"erp\"\n";

#[test]
fn settings_errors_name_place_key_and_valid_values_all_at_once() {
    let (_dir, config) = files(
        "[proxy]\npool_mode = \"transactions\"\n\n[pool]\ncheckout_timeout = 5\npool_sise = 3\n",
        ONE_HOST,
    );
    let file = config.display();
    let out = check(&config, &[("PGTENANT__POOL__POOL_SIZ", "5")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "{file}:2:13: proxy.pool_mode: unknown value \"transactions\" (did you mean \"transaction\"?); expected \"session\" or \"transaction\"\n\
             {file}:5:20: pool.checkout_timeout: expected a duration such as \"5s\" or \"250ms\", found 5\n\
             {file}:6:1: pool.pool_sise: unknown key (did you mean pool_size?); valid keys in [pool]: pool_size, min_idle, max_prepared_statements, max_client_statements, connect_timeout, checkout_timeout, query_wait_timeout, idle_timeout, max_lifetime, reset_query, host_turn, share_schema_tenants, share_streak, shared_pool_size\n\
             PGTENANT__POOL__POOL_SIZ: pool.pool_siz: unknown key (did you mean pool_size?); valid keys in [pool]: pool_size, min_idle, max_prepared_statements, max_client_statements, connect_timeout, checkout_timeout, query_wait_timeout, idle_timeout, max_lifetime, reset_query, host_turn, share_schema_tenants, share_streak, shared_pool_size\n"
        )
    );
}

#[test]
fn validation_problems_are_placed_too() {
    let (_dir, config) = files("[pool]\npool_size = 0\nmin_idle = 3\n", ONE_HOST);
    let file = config.display();
    let out = check(
        &config,
        &[
            ("PGTENANT__PROXY__CHECKOUT", "1"),
            ("PGTENANT__PROXY__LISTEN", "nowhere"),
        ],
    );
    assert_eq!(
        stderr(&out),
        format!(
            "{file}:2:13: pool.pool_size: must be at least 1\n\
             {file}:3:12: pool.min_idle: must not exceed pool.pool_size\n\
             PGTENANT__PROXY__CHECKOUT: proxy.checkout: unknown key; valid keys in [proxy]: listen, tenant_from, pool_mode, auth, startup_timeout, max_client_conn, max_message_size, relay_buffer, workers, shutdown_timeout, park_after, auth_timeout, max_unauthenticated_per_address, max_client_conn_per_tenant, client_idle_timeout, idle_in_transaction_timeout\n\
             PGTENANT__PROXY__LISTEN: proxy.listen: \"nowhere\" is not an IP address and port\n"
        )
    );
}

#[test]
fn syntax_errors_and_unknown_sections_have_a_place() {
    let (_dir, config) = files("[pool]\npool_size = = 3\n", ONE_HOST);
    let out = check(&config, &[]);
    assert_eq!(
        stderr(&out),
        format!(
            "{}:2:13: invalid TOML: invalid string; expected `\"`, `'`\n",
            config.display()
        )
    );
    let (_dir, config) = files("[poool]\npool_size = 3\n", ONE_HOST);
    let out = check(&config, &[]);
    assert_eq!(
        stderr(&out),
        format!(
            "{}:1:2: poool: unknown section (did you mean pool?); valid sections: proxy, pool, registry, admin, tls, passthrough, secrets\n",
            config.display()
        )
    );
}

#[test]
fn environment_overrides_are_typed_like_the_file() {
    let (_dir, config) = files("", ONE_HOST);
    let out = check(
        &config,
        &[
            ("PGTENANT__POOL__POOL_SIZE", "20"),
            ("PGTENANT__POOL__CHECKOUT_TIMEOUT", "5s"),
            ("PGTENANT__PROXY__TENANT_FROM", "user,database"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = check(
        &config,
        &[
            ("PGTENANT__POOL__POOL_SIZE", "many"),
            ("PGTENANT__POOL__CHECKOUT_TIMEOUT", "5"),
        ],
    );
    assert_eq!(
        stderr(&out),
        "PGTENANT__POOL__CHECKOUT_TIMEOUT: pool.checkout_timeout: expected a duration such as \"5s\" or \"250ms\", found \"5\"\n\
         PGTENANT__POOL__POOL_SIZE: pool.pool_size: expected a whole number (0 or more), found \"many\"\n"
    );
}

#[test]
fn registry_addresses_and_placeholders_are_checked_and_counts_read_right() {
    let (dir, config) = files(
        "",
        "[hosts.a]\naddress = \"postgres://127.0.0.1:5432\"\n[tenants.\"*\"]\nhost = \"a\"\ndatabase = \"{tenat}\"\nbackend_user = \"app\"\n",
    );
    let registry = dir.path().join("tenants.toml");
    let registry = registry.display();
    let out = check(&config, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "{registry}: hosts.a.address: \"postgres://127.0.0.1:5432\" is not host:port (such as \"127.0.0.1:5432\" or \"db.example.com:5432\")\n\
             {registry}: tenants.\"*\".database: unknown placeholder \"{{tenat}}\" in \"{{tenat}}\"; the only placeholder is {{tenant}}\n"
        )
    );

    let (dir, config) = files("", ONE_HOST);
    let out = check(&config, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "{}: ok; {}: ok (1 tenant, 1 host)\n",
            config.display(),
            dir.path().join("tenants.toml").display()
        )
    );
}

#[test]
fn settings_file_is_found_in_the_documented_order() {
    let (dir, config) = files("", ONE_HOST);
    // PGTENANT_CONFIG names the file when --config does not.
    let out = pgtenant()
        .arg("check")
        .env("PGTENANT_CONFIG", &config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Then config/pgtenant.toml under the working directory.
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::copy(&config, dir.path().join("config/pgtenant.toml")).unwrap();
    let out = pgtenant()
        .arg("check")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("config/pgtenant.toml: ok;"));
    // Nothing found (and no /etc/pgtenant here): one line saying where it looked.
    if !Path::new("/etc/pgtenant/pgtenant.toml").exists() {
        let empty = tempfile::tempdir().unwrap();
        let out = pgtenant()
            .arg("check")
            .current_dir(empty.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            stderr(&out),
            "pgtenant: no settings file: neither config/pgtenant.toml nor /etc/pgtenant/pgtenant.toml exists; pass --config FILE or set PGTENANT_CONFIG\n"
        );
    }
}

#[test]
fn help_describes_every_option_and_the_environment() {
    let out = pgtenant().arg("--help").output().unwrap();
    let top = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "PGTENANT__<SECTION>__<KEY>",
        "PGTENANT_LOG",
        "PGTENANT_CONFIG",
        "1. --config FILE",
        "3. config/pgtenant.toml",
        "4. /etc/pgtenant/pgtenant.toml",
    ] {
        assert!(top.contains(needle), "--help lacks {needle}:\n{top}");
    }
    for command in ["serve", "check", "demo"] {
        let out = pgtenant().args([command, "-h"]).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("PGTENANT_LOG"), "{command} -h:\n{help}");
        // Every option line carries a description after its name.
        let options = help
            .lines()
            .skip_while(|l| *l != "Options:")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .filter(|l| l.trim_start().starts_with('-'));
        for line in options {
            let words = line
                .split_whitespace()
                .filter(|w| !w.starts_with('-') && !w.starts_with('<'));
            assert!(
                words.count() > 1,
                "{command}: option without a description: {line:?}"
            );
        }
    }
}

#[test]
fn version_names_the_git_revision() {
    let out = pgtenant().arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    let revision = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    assert_eq!(
        version,
        format!("pgtenant {} (git {revision})\n", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_reports_each_host_and_tenant() {
    let env = EnvBuilder::erp().start().await;
    let closed = closed_port_address();
    let registry = format!(
        "{ERP_REGISTRY}\n\
         [hosts.gone]\naddress = \"{closed}\"\n\
         [tenants.noschema]\nhost = \"pg-a\"\ndatabase = \"erp\"\nsearch_path = [\"tenant_nope\", \"public\"]\nbackend_user = \"app\"\n\
         [tenants.nodb]\nhost = \"pg-a\"\ndatabase = \"nowhere\"\nbackend_user = \"app\"\n\
         [tenants.unreachable]\nhost = \"gone\"\ndatabase = \"erp\"\nbackend_user = \"app\"\n"
    );
    env.write_registry(&registry);
    let config = env.dir.path().join("check.toml");
    std::fs::write(
        &config,
        format!(
            "[pool]\nconnect_timeout = \"2s\"\n[registry]\nfile = {:?}\n",
            env.registry_path.display().to_string()
        ),
    )
    .unwrap();

    let out = check_connect(&config).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", stderr(&out));
    let lines: Vec<&str> = stdout.lines().collect();
    let find = |prefix: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line for {prefix}:\n{stdout}"))
            .to_string()
    };
    let a = env.host_address("pg-a");
    assert_eq!(
        find("host pg-a "),
        format!("host pg-a ({a}): ok: reachable")
    );
    assert!(find("host gone ").starts_with(&format!("host gone ({closed}): FAILED: unreachable: ")));
    assert_eq!(
        find("tenant acme:"),
        "tenant acme: ok: database erp on host pg-a as app, schemas tenant_acme"
    );
    assert_eq!(
        find("tenant noschema:"),
        "tenant noschema: FAILED: schema \"tenant_nope\" does not exist (database erp on host pg-a as app, schemas tenant_nope, public)"
    );
    assert_eq!(
        find("tenant nodb:"),
        "tenant nodb: FAILED: server refused: database \"nowhere\" does not exist (database nowhere on host pg-a as app)"
    );
    assert!(
        find("tenant unreachable:").starts_with("tenant unreachable: FAILED: host unreachable: ")
    );
    let failed = lines.iter().filter(|l| l.contains(": FAILED: ")).count();
    assert_eq!(failed, 4, "{stdout}");
    assert_eq!(
        stderr(&out),
        format!("4 of {} checks failed\n", lines.len() - 1)
    );

    // All reachable: exit 0.
    env.write_registry(ERP_REGISTRY);
    let out = check_connect(&config).await;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

async fn check_connect(config: &Path) -> Output {
    let mut command = pgtenant();
    command
        .arg("check")
        .arg("--config")
        .arg(config)
        .arg("--connect");
    tokio::process::Command::from(command)
        .output()
        .await
        .unwrap()
}
