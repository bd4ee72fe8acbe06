//! Registry management on the file source: every `tenant`, `host` and `user` command
//! against a running proxy that picks the changes up, the file edited in place
//! (comments kept); and the registry's safety: an empty file, a file without
//! tenants, and a listed tenant removed while a template entry exists.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

fn pgtenant(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("PGTENANT_CONFIG")
        .output()
        .expect("running pgtenant")
}

fn ok(config: &Path, args: &[&str]) -> String {
    let out = pgtenant(config, args);
    assert!(
        out.status.success(),
        "pgtenant {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(config: &Path, args: &[&str]) -> String {
    let out = pgtenant(config, args);
    assert!(!out.status.success(), "pgtenant {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn items_of(env: &Env, tenant: &str) -> Option<Vec<String>> {
    let client = env.try_connect("app", tenant).await.ok()?;
    let rows = client
        .query("SELECT name FROM items ORDER BY id", &[])
        .await
        .ok()?;
    Some(rows.iter().map(|r| r.get(0)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_on_the_file_source() {
    let env = EnvBuilder::erp()
        .registry(&format!(
            "# the registry of the erp fixture\n{ERP_REGISTRY}"
        ))
        .start()
        .await;
    let config = env.settings_path.clone();

    let list = ok(&config, &["tenant", "list"]);
    assert!(list.starts_with("name "), "{list}");
    assert!(
        list.contains("acme") && list.contains("tenant_globex"),
        "{list}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&config, &["tenant", "list", "--output", "json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    let show = ok(&config, &["tenant", "show", "acme", "--output", "json"]);
    let show: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(show["search_path"], serde_json::json!(["tenant_acme"]));
    assert!(refused(&config, &["tenant", "show", "nobody"]).contains("no tenant \"nobody\""));

    ok(
        &config,
        &[
            "tenant",
            "add",
            "initech",
            "--host",
            "pg-a",
            "--database",
            "erp",
            "--search-path",
            "tenant_globex",
            "--backend-user",
            "app",
            "--pool-size",
            "3",
        ],
    );
    let served = eventually(Duration::from_secs(20), || async {
        items_of(&env, "initech")
            .await
            .filter(|i| i == GLOBEX_ITEMS)
    })
    .await;
    assert!(served.is_some(), "initech not served");
    let text = std::fs::read_to_string(&env.registry_path).unwrap();
    assert!(
        text.starts_with("# the registry of the erp fixture\n"),
        "{text}"
    );
    assert!(text.contains("[tenants.initech]"), "{text}");

    let err = refused(
        &config,
        &[
            "tenant",
            "add",
            "initech",
            "--host",
            "pg-a",
            "--database",
            "erp",
        ],
    );
    assert!(err.contains("already in the registry"), "{err}");
    let err = refused(&config, &["tenant", "update", "initech", "--host", "pg-z"]);
    assert!(err.contains("unknown host \"pg-z\""), "{err}");
    assert!(refused(&config, &["tenant", "update", "initech"]).contains("nothing to change"));

    ok(
        &config,
        &[
            "tenant",
            "update",
            "initech",
            "--search-path",
            "tenant_acme",
        ],
    );
    let followed = eventually(Duration::from_secs(20), || async {
        items_of(&env, "initech").await.filter(|i| i == ACME_ITEMS)
    })
    .await;
    assert!(followed.is_some(), "search_path not followed");

    ok(&config, &["tenant", "remove", "initech"]);
    let gone = eventually(Duration::from_secs(20), || async {
        match env.try_connect("app", "initech").await {
            Err(e) if describe(&e).contains("3D000") => Some(()),
            _ => None,
        }
    })
    .await;
    assert!(gone.is_some(), "initech still served");

    let free = closed_port_address();
    ok(
        &config,
        &[
            "host",
            "add",
            "pg-b",
            "--address",
            &free,
            "--max-connections",
            "4",
            "--admin-user",
            "mover",
            "--admin-password",
            "pw",
        ],
    );
    let hosts = ok(&config, &["host", "list", "--output", "json"]);
    let hosts: serde_json::Value = serde_json::from_str(&hosts).unwrap();
    assert_eq!(hosts[1]["name"], "pg-b");
    assert_eq!(hosts[1]["admin_password_set"], true);
    let err = refused(
        &config,
        &[
            "host",
            "add",
            "pg-c",
            "--address",
            "nowhere",
            "--max-connections",
            "4",
        ],
    );
    assert!(err.contains("is not host:port"), "{err}");
    assert!(refused(&config, &["host", "remove", "pg-a"]).contains("still serves"));
    ok(&config, &["host", "remove", "pg-b"]);
    assert!(!ok(&config, &["host", "list"]).contains("pg-b"));

    ok(
        &config,
        &[
            "user",
            "add",
            "carol",
            "--password",
            "pw",
            "--tenants",
            "acme,globex",
        ],
    );
    let users = ok(&config, &["user", "list"]);
    assert!(
        users.contains("carol") && users.contains("acme,globex"),
        "{users}"
    );
    ok(&config, &["user", "remove", "carol"]);
    assert!(!ok(&config, &["user", "list"]).contains("carol"));
    assert!(refused(&config, &["user", "remove", "carol"]).contains("no user \"carol\""));
    let text = std::fs::read_to_string(&env.registry_path).unwrap();
    assert!(
        text.starts_with("# the registry of the erp fixture\n"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_tenantless_file_is_refused() {
    let env = EnvBuilder::erp().start().await;
    assert_eq!(items_of(&env, "acme").await.unwrap(), ACME_ITEMS);
    // An editor that truncates before it writes.
    std::fs::write(&env.registry_path, "").unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(items_of(&env, "acme").await.unwrap(), ACME_ITEMS);
    // A file cut short after its hosts: valid, but without a tenant.
    let hosts_only = ERP_REGISTRY.split("[tenants.acme]").next().unwrap();
    env.write_registry(hosts_only);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(items_of(&env, "acme").await.unwrap(), ACME_ITEMS);
    assert_eq!(items_of(&env, "globex").await.unwrap(), GLOBEX_ITEMS);
    // A real change is still taken.
    env.write_registry(ERP_REGISTRY.split("[tenants.globex]").next().unwrap());
    let gone = eventually(Duration::from_secs(20), || async {
        match env.try_connect("app", "globex").await {
            Err(e) if describe(&e).contains("3D000") => Some(()),
            _ => None,
        }
    })
    .await;
    assert!(gone.is_some());
}

const TEMPLATE: &str = r#"
[tenants."*"]
host = "pg-a"
database = "erp"
search_path = ["public"]
backend_user = "app"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_tenant_does_not_fall_through_to_the_template() {
    let env = EnvBuilder::erp()
        .registry_extra(TEMPLATE)
        .settings("[proxy]\npool_mode = \"transaction\"\n")
        .start()
        .await;
    let client = env.connect("app", "globex").await;
    assert_eq!(items(&client).await, GLOBEX_ITEMS);
    env.write_registry(&format!(
        "{}{TEMPLATE}",
        ERP_REGISTRY.split("[tenants.globex]").next().unwrap()
    ));
    // Its connected client is told the tenant is gone; it never sees `public`.
    let error = eventually(Duration::from_secs(20), || async {
        match client
            .query("SELECT name FROM items ORDER BY id", &[])
            .await
        {
            Ok(rows) => {
                let got: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                assert_eq!(got, GLOBEX_ITEMS, "fell through to the template");
                None
            }
            Err(e) => Some(describe(&e)),
        }
    })
    .await
    .expect("the client of a removed tenant is refused");
    assert!(error.contains("3D000"), "{error}");
}

/// A registry with acme and globex on pg-a (a budget of one server connection) or
/// globex on pg-b; transaction mode, no sharing.
fn two_host_registry(globex_host: &str) -> String {
    format!(
        "[hosts.pg-a]\naddress = \"${{pg-a}}\"\nmax_connections = 1\n\
         [hosts.pg-b]\naddress = \"${{pg-b}}\"\n\
         [tenants.acme]\nhost = \"pg-a\"\ndatabase = \"erp\"\nsearch_path = [\"tenant_acme\"]\nbackend_user = \"app\"\n\
         [tenants.globex]\nhost = \"{globex_host}\"\ndatabase = \"erp\"\nsearch_path = [\"tenant_globex\"]\nbackend_user = \"app\"\n"
    )
}

/// A client waiting for room on a host when the registry moves its tenant elsewhere
/// is served on the new host: the retired pool opens nothing to the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_when_its_tenant_moves_is_served_on_the_new_host() {
    let env = EnvBuilder::new()
        .host("pg-a")
        .seed("postgres", ERP_ROLES)
        .seed("erp", ERP_SCHEMAS)
        .host("pg-b")
        .seed("postgres", ERP_ROLES)
        .seed("erp", ERP_SCHEMAS)
        .registry(&two_host_registry("pg-a"))
        .settings(
            "[proxy]\npool_mode = \"transaction\"\n[pool]\nshare_schema_tenants = false\nhost_turn = \"10ms\"\n",
        )
        .start()
        .await;
    let port_of = |host: &str| -> i32 {
        let address = env.host_address(host);
        address.rsplit(':').next().unwrap().parse().unwrap()
    };
    let (port_a, port_b) = (port_of("pg-a"), port_of("pg-b"));

    // acme holds pg-a's only server connection; globex's query waits for room there.
    let holder = env.connect("app", "acme").await;
    holder.simple_query("BEGIN").await.unwrap();
    assert_eq!(
        value(&holder, "SELECT inet_server_port()").await,
        port_a.to_string()
    );
    let waiter = env.connect("app", "globex").await;
    let waiting = tokio::spawn(async move {
        let port: i32 = waiter
            .query_one("SELECT inet_server_port()", &[])
            .await
            .map_err(|e| describe(&e))?
            .get(0);
        Ok::<i32, String>(port)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "globex should wait for room on pg-a"
    );

    // globex moves to pg-b; a new client of it lands there once the proxy reloaded.
    env.write_registry(&two_host_registry("pg-b"));
    // (A probe before the reload would itself wait for room on pg-a.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let moved = eventually(Duration::from_secs(20), || async {
        let probe = env.try_connect("app", "globex").await.ok()?;
        let port = value(&probe, "SELECT inet_server_port()").await;
        (port == port_b.to_string()).then_some(())
    })
    .await;
    assert!(moved.is_some(), "the proxy never served globex from pg-b");

    // Room on pg-a: the waiting client must not take it to open a connection there.
    holder.simple_query("COMMIT").await.unwrap();
    let port = waiting.await.unwrap().expect("the waiting query");
    assert_eq!(
        port, port_b,
        "the waiting client was served on the old host"
    );
}
