//! Auth passthrough: clients log in with their own server roles' passwords, which
//! pgtenant never sees or stores; and encrypted secrets (`enc:…`) in the registry.

mod common;

use std::path::Path;
use std::time::Duration;

use common::tls::{assert_not_logged, capture_logs};
use common::*;
use pgtenant::cluster::ClusterOptions;

const ALICE_PW: &str = "alice-Backend-1111";
const ALICE_NEW_PW: &str = "alice-Changed-2222";
const AUTH_PW: &str = "auth-Lookup-3333";
const APP_PW: &str = "app-Registry-4444";

/// Roles with passwords on the server. The lookup function is what the README
/// recommends: the auth user may read one role's verifier, nothing else.
fn seed_roles() -> String {
    format!(
        "CREATE ROLE alice LOGIN PASSWORD '{ALICE_PW}';
         CREATE ROLE pgtenant_auth LOGIN PASSWORD '{AUTH_PW}';
         ALTER ROLE app PASSWORD '{APP_PW}';"
    )
}

const SEED_ERP: &str = "
GRANT USAGE ON SCHEMA tenant_acme TO alice;
GRANT SELECT ON tenant_acme.items TO alice;
CREATE SCHEMA pgtenant;
CREATE FUNCTION pgtenant.lookup(role text, OUT usename name, OUT passwd text)
  RETURNS record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog
  AS 'SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = role';
REVOKE ALL ON FUNCTION pgtenant.lookup(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA pgtenant TO pgtenant_auth;
GRANT EXECUTE ON FUNCTION pgtenant.lookup(text) TO pgtenant_auth;
";

/// `pgtenant secret encrypt` under the key in `key_file`.
fn encrypt(dir: &Path, key_file: &Path, value: &str) -> String {
    let config = dir.join("secret.toml");
    std::fs::write(
        &config,
        format!(
            "[secrets]\nkey_file = {:?}\n",
            key_file.display().to_string()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["secret", "encrypt", "--value", value, "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sealed = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(sealed.starts_with("enc:") && !sealed.contains(value));
    sealed
}

fn login(env: &Env, user: &str, password: &str) -> tokio_postgres::Config {
    let mut config = env.config(user, Some("acme"));
    config.password(password);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_log_in_with_server_roles_pgtenant_never_saw() {
    capture_logs();
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("secret.key");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["secret", "key"])
        .output()
        .unwrap();
    std::fs::write(&key_file, &out.stdout).unwrap();
    let auth_sealed = encrypt(keys.path(), &key_file, AUTH_PW);
    let app_sealed = encrypt(keys.path(), &key_file, APP_PW);

    let opts = ClusterOptions {
        hba: vec![
            "host all alice 127.0.0.1/32 scram-sha-256".into(),
            "host all pgtenant_auth 127.0.0.1/32 scram-sha-256".into(),
            "host all app 127.0.0.1/32 scram-sha-256".into(),
        ],
        settings: vec![],
    };
    let registry = format!(
        r#"
[hosts.pg-a]
address = "${{pg-a}}"
auth_user = "pgtenant_auth"
auth_password = "{auth_sealed}"

[tenants.acme]
host = "pg-a"
database = "erp"
search_path = ["tenant_acme"]

[tenants.globex]
host = "pg-a"
database = "erp"
search_path = ["tenant_globex"]
backend_user = "app"
backend_password = "{app_sealed}"
"#
    );
    let env = EnvBuilder::erp_with(opts)
        .seed("postgres", &seed_roles())
        .seed("erp", SEED_ERP)
        .registry(&registry)
        .settings(&format!(
            "[proxy]\nauth = \"passthrough\"\n[passthrough]\nauth_query = \"SELECT * FROM pgtenant.lookup($1)\"\ncache_ttl = \"200ms\"\n[secrets]\nkey_file = {:?}\n",
            key_file.display().to_string()
        ))
        .start()
        .await;

    let alice = connect(&login(&env, "alice", ALICE_PW))
        .await
        .unwrap_or_else(|e| panic!("passthrough login: {}", describe(&e)));
    assert_eq!(items(&alice).await, ACME_ITEMS);
    assert_eq!(value(&alice, "SELECT current_user").await, "alice");

    let wrong = connect(&login(&env, "alice", "guess")).await.err().unwrap();
    assert_eq!(wrong.as_db_error().unwrap().code().code(), "28P01");
    let unknown = connect(&login(&env, "mallory", "guess"))
        .await
        .err()
        .unwrap();
    assert_eq!(unknown.as_db_error().unwrap().code().code(), "28P01");

    // A password changed on the server takes effect once the cached verifier expires.
    let admin = env.direct(ERP_HOST, "postgres").await;
    admin
        .batch_execute(&format!("ALTER ROLE alice PASSWORD '{ALICE_NEW_PW}'"))
        .await
        .unwrap();
    // Its server sessions end too, so the next login must open one with the new keys.
    drop(alice);
    admin
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'alice'",
        )
        .await
        .unwrap();
    let renewed = eventually(Duration::from_secs(10), || async {
        connect(&login(&env, "alice", ALICE_NEW_PW)).await.ok()
    })
    .await
    .expect("the new password works");
    assert_eq!(value(&renewed, "SELECT current_user").await, "alice");
    let old = connect(&login(&env, "alice", ALICE_PW))
        .await
        .err()
        .unwrap();
    assert_eq!(old.as_db_error().unwrap().code().code(), "28P01");
    // globex logs in as app with the decrypted registry password (under trust).
    let trusting = env
        .start_server(&format!(
            "[proxy]\nauth = \"trust\"\n[secrets]\nkey_file = {:?}\n",
            key_file.display().to_string()
        ))
        .await;
    let globex = connect(&config_for(
        trusting.local_addr(),
        "someone",
        Some("globex"),
    ))
    .await
    .unwrap_or_else(|e| panic!("encrypted backend_password: {}", describe(&e)));
    assert_eq!(items(&globex).await, GLOBEX_ITEMS);

    assert_not_logged(&env, &[ALICE_PW, ALICE_NEW_PW, AUTH_PW, APP_PW, "guess"]);
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["check", "--config"])
        .arg(&env.settings_path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "{text}");
    assert!(!text.contains(AUTH_PW) && !text.contains(APP_PW), "{text}");
}
