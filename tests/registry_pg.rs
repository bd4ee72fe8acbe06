//! The registry in PostgreSQL: `registry init`, two instances following one registry
//! database (changes made with the CLI and the API reach both), the registry
//! database restarted under running clients, the cache file serving a restart during
//! an outage, an emptied tenants table refused, and an application's own tenant
//! table adopted with `registry.tenants_query`.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pgtenant::Server;

const REGISTRY_HOST: &str = "registry";

async fn env() -> Env {
    EnvBuilder::erp().host(REGISTRY_HOST).start().await
}

fn url(env: &Env) -> String {
    format!(
        "postgres://postgres@{}/postgres",
        env.host_address(REGISTRY_HOST)
    )
}

/// A settings file naming the registry database, for the CLI.
fn cli_settings(env: &Env, extra: &str) -> PathBuf {
    let path = env.dir.path().join("cli.toml");
    std::fs::write(&path, format!("[registry]\nurl = {:?}\n{extra}", url(env))).unwrap();
    path
}

fn pgtenant(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(args)
        .env_remove("PGTENANT_CONFIG")
        .output()
        .expect("running pgtenant")
}

/// Runs a command with `--config` and expects success; its standard output.
fn cli(config: &std::path::Path, args: &[&str]) -> String {
    let mut all: Vec<&str> = args.to_vec();
    let config = config.display().to_string();
    all.extend(["--config", &config]);
    let out = pgtenant(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgtenant {args:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `registry init`, host pg-a and tenant acme, through the CLI.
fn seed(env: &Env) -> PathBuf {
    let out = pgtenant(&["registry", "init", "--url", &url(env)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = cli_settings(env, "");
    let address = env.host_address(ERP_HOST);
    cli(
        &config,
        &[
            "host",
            "add",
            "pg-a",
            "--address",
            &address,
            "--max-connections",
            "50",
        ],
    );
    cli(
        &config,
        &[
            "tenant",
            "add",
            "acme",
            "--host",
            "pg-a",
            "--database",
            "erp",
            "--search-path",
            "tenant_acme",
            "--backend-user",
            "app",
        ],
    );
    config
}

async fn instance(env: &Env, extra: &str) -> Server {
    env.start_server(&format!("[registry]\nurl = {:?}\n{extra}", url(env)))
        .await
}

async fn try_items(server: &Server, tenant: &str) -> Result<Vec<String>, String> {
    let client = connect(&config_for(server.local_addr(), "app", Some(tenant)))
        .await
        .map_err(|e| describe(&e))?;
    let rows = client
        .query("SELECT name FROM items ORDER BY id", &[])
        .await
        .map_err(|e| describe(&e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Waits until every server gives `want` for `tenant`; how long it took.
async fn all_follow(servers: &[&Server], tenant: &str, want: &[&str]) -> Duration {
    let start = Instant::now();
    for server in servers {
        loop {
            if try_items(server, tenant).await.is_ok_and(|got| got == want) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "tenant {tenant} not followed: {:?}",
                try_items(server, tenant).await
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_follow_changes_made_with_the_cli() {
    let env = env().await;
    let config = seed(&env);
    // Again: nothing to do, and says so.
    let out = pgtenant(&["registry", "init", "--url", &url(&env)]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));
    let versions = env.direct(REGISTRY_HOST, "postgres").await;
    let applied: i64 = versions
        .query_one("SELECT count(*) FROM pgtenant.schema_version", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, pgtenant::registry::migrate::latest() as i64);

    let checked = cli(&config, &["check"]);
    assert!(
        checked.contains("registry database: ok (1 tenant, 1 host)"),
        "{checked}"
    );

    let a = instance(&env, "").await;
    let b = instance(&env, "").await;
    assert_eq!(try_items(&a, "acme").await.unwrap(), ACME_ITEMS);
    assert_eq!(try_items(&b, "acme").await.unwrap(), ACME_ITEMS);
    assert!(try_items(&a, "globex").await.unwrap_err().contains("3D000"));

    cli(
        &config,
        &[
            "tenant",
            "add",
            "globex",
            "--host",
            "pg-a",
            "--database",
            "erp",
            "--search-path",
            "tenant_globex",
            "--backend-user",
            "app",
        ],
    );
    let took = all_follow(&[&a, &b], "globex", GLOBEX_ITEMS).await;
    println!("tenant add reached both instances in {took:?}");

    cli(
        &config,
        &[
            "tenant",
            "update",
            "globex",
            "--search-path",
            "tenant_acme,public",
        ],
    );
    let took = all_follow(&[&a, &b], "globex", ACME_ITEMS).await;
    println!("search_path update reached both instances in {took:?}");

    let list = cli(&config, &["tenant", "list", "--output", "json"]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme", "globex"]);
    let shown = cli(&config, &["tenant", "show", "globex", "--output", "json"]);
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(
        shown["search_path"],
        serde_json::json!(["tenant_acme", "public"])
    );
    let text = cli(&config, &["tenant", "show", "globex"]);
    assert!(text.contains("database: erp"), "{text}");

    cli(&config, &["tenant", "remove", "globex"]);
    for server in [&a, &b] {
        let refused = eventually(Duration::from_secs(20), || async {
            try_items(server, "globex")
                .await
                .err()
                .filter(|e| e.contains("3D000"))
        })
        .await;
        assert!(refused.is_some(), "globex still served");
    }

    // Hosts and users through the CLI too.
    let free = closed_port_address();
    cli(
        &config,
        &[
            "host",
            "add",
            "pg-b",
            "--address",
            &free,
            "--max-connections",
            "5",
            "--admin-user",
            "mover",
            "--admin-password",
            "pw",
        ],
    );
    let hosts = cli(&config, &["host", "list"]);
    assert!(hosts.contains("pg-b") && hosts.contains("mover"), "{hosts}");
    let out = pgtenant(&[
        "host",
        "remove",
        "pg-a",
        "--config",
        &config.display().to_string(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("still serves tenant(s) acme"));
    cli(&config, &["host", "remove", "pg-b"]);
    cli(
        &config,
        &[
            "user",
            "add",
            "alice",
            "--password",
            "pw1",
            "--tenants",
            "acme",
        ],
    );
    let users = cli(&config, &["user", "list", "--output", "json"]);
    assert!(
        users.contains("\"alice\"") && !users.contains("SCRAM"),
        "{users}"
    );
    cli(&config, &["user", "remove", "alice"]);
    assert!(!cli(&config, &["user", "list"]).contains("alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_restart_under_running_clients_and_the_cache() {
    let mut env = env().await;
    let config = seed(&env);
    let cache = env.dir.path().join("registry-cache.toml");
    let cache_setting = format!("cache_file = {:?}\n", cache.display().to_string());
    let a = instance(&env, &cache_setting).await;
    let b = instance(&env, "").await;

    // Clients on both instances query throughout the restart.
    let errors = Arc::new(AtomicUsize::new(0));
    let queries = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for addr in [a.local_addr(), b.local_addr()] {
        let (errors, queries, stop) = (errors.clone(), queries.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = connect(&config_for(addr, "app", Some("acme")))
                .await
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                match client
                    .query("SELECT name FROM items ORDER BY id", &[])
                    .await
                {
                    Ok(rows) if rows.len() == ACME_ITEMS.len() => {}
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                queries.fetch_add(1, Ordering::Relaxed);
                // New connections too: each resolves the tenant in the registry.
                if connect(&config_for(addr, "app", Some("acme")))
                    .await
                    .is_err()
                {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.stop_host(REGISTRY_HOST);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // During the outage a new instance serves from the cache file.
    let c = instance(&env, &cache_setting).await;
    assert_eq!(try_items(&c, "acme").await.unwrap(), ACME_ITEMS);
    // Without a cache it cannot start.
    let err = Server::start(
        pgtenant::Settings::from_toml(&format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[registry]\nurl = {:?}\n",
            url(&env)
        ))
        .unwrap(),
    )
    .await
    .err()
    .expect("no registry, no cache: refused");
    assert!(err.to_string().contains("registry database"), "{err}");

    env.start_host_again(REGISTRY_HOST);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0);
    assert!(queries.load(Ordering::Relaxed) > 2);

    // After the restart, changes reach every instance again (they reconnected).
    cli(
        &config,
        &[
            "tenant",
            "add",
            "globex",
            "--host",
            "pg-a",
            "--database",
            "erp",
            "--search-path",
            "tenant_globex",
            "--backend-user",
            "app",
        ],
    );
    all_follow(&[&a, &b, &c], "globex", GLOBEX_ITEMS).await;

    // An update that empties the tenants table is refused: the registry keeps serving.
    let registry = env.direct(REGISTRY_HOST, "postgres").await;
    registry
        .batch_execute("DELETE FROM pgtenant.tenants")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for server in [&a, &b, &c] {
        assert_eq!(try_items(server, "acme").await.unwrap(), ACME_ITEMS);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_route() {
    let env = env().await;
    seed(&env);
    let server = instance(
        &env,
        "[admin]\nhttp_listen = \"127.0.0.1:0\"\nhttp_token = \"t0ken\"\n",
    )
    .await;
    let base = format!("http://{}/api", server.http_addr().unwrap());
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        let mut request = http
            .request(method, format!("{base}{path}"))
            .header("Authorization", "Bearer t0ken");
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
            (status, json)
        }
    };
    use reqwest::Method;
    use serde_json::json;

    let unauthorised = http.get(format!("{base}/tenants")).send().await.unwrap();
    assert_eq!(unauthorised.status().as_u16(), 401);

    let (status, tenants) = call(Method::GET, "/tenants", None).await;
    assert_eq!(status, 200);
    assert_eq!(tenants[0]["name"], "acme");
    let (status, acme) = call(Method::GET, "/tenants/acme", None).await;
    assert_eq!((status, acme["database"].clone()), (200, json!("erp")));
    let (status, _) = call(Method::GET, "/tenants/nobody", None).await;
    assert_eq!(status, 404);

    let globex = json!({"name": "globex", "host": "pg-a", "database": "erp",
        "search_path": ["tenant_globex"], "backend_user": "app", "backend_password": "x"});
    let (status, created) = call(Method::POST, "/tenants", Some(globex.clone())).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["backend_password_set"], true);
    assert!(created.get("backend_password").is_none());
    let (status, _) = call(Method::POST, "/tenants", Some(globex)).await;
    assert_eq!(status, 409);
    let bad = json!({"name": "x", "host": "pg-z", "database": "erp"});
    let (status, body) = call(Method::POST, "/tenants", Some(bad)).await;
    assert_eq!(status, 422);
    assert!(
        body["error"].as_str().unwrap().contains("unknown host"),
        "{body}"
    );
    all_follow(&[&server], "globex", GLOBEX_ITEMS).await;

    let (status, updated) = call(
        Method::PATCH,
        "/tenants/globex",
        Some(json!({"search_path": ["tenant_acme"]})),
    )
    .await;
    assert_eq!(
        (status, updated["search_path"].clone()),
        (200, json!(["tenant_acme"]))
    );
    all_follow(&[&server], "globex", ACME_ITEMS).await;
    let (status, _) = call(Method::DELETE, "/tenants/globex", None).await;
    assert_eq!(status, 204);

    let (status, hosts) = call(Method::GET, "/hosts", None).await;
    assert_eq!((status, hosts[0]["name"].clone()), (200, json!("pg-a")));
    let host = json!({"name": "pg-b", "address": closed_port_address(), "max_connections": 7});
    let (status, _) = call(Method::POST, "/hosts", Some(host)).await;
    assert_eq!(status, 201);
    let (status, pg_b) = call(Method::GET, "/hosts/pg-b", None).await;
    assert_eq!((status, pg_b["max_connections"].clone()), (200, json!(7)));
    let (status, _) = call(Method::DELETE, "/hosts/pg-a", None).await;
    assert_eq!(status, 422);
    let (status, _) = call(Method::DELETE, "/hosts/pg-b", None).await;
    assert_eq!(status, 204);

    let user = json!({"name": "bob", "password": "pw", "tenants": ["acme"]});
    let (status, created) = call(Method::POST, "/users", Some(user)).await;
    assert_eq!(status, 201, "{created}");
    assert!(created.get("password").is_none());
    let (status, users) = call(Method::GET, "/users", None).await;
    assert_eq!((status, users[0]["name"].clone()), (200, json!("bob")));
    let registry = env.direct(REGISTRY_HOST, "postgres").await;
    let stored: String = registry
        .query_one(
            "SELECT password FROM pgtenant.users WHERE name = 'bob'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored.starts_with("SCRAM-SHA-256$"), "stored as a verifier");
    let (status, _) = call(Method::DELETE, "/users/bob", None).await;
    assert_eq!(status, 204);
    let (status, _) = call(Method::DELETE, "/users/bob", None).await;
    assert_eq!(status, 404);
}

/// An application's own tenant table, as it was before pgtenant.
const APP_TABLE: &str = "
CREATE TABLE public.tenant_registry (
    tenant_slug text PRIMARY KEY,
    finance_schema text NOT NULL,
    active boolean NOT NULL DEFAULT true
);
INSERT INTO public.tenant_registry VALUES ('acme-co', 'tenant_acme', true), ('old-co', 'tenant_globex', false);
";

const APP_QUERY: &str = "SELECT tenant_slug AS name, 'pg-a' AS host, 'erp' AS database, \
     finance_schema AS search_path, 'app' AS backend_user \
     FROM public.tenant_registry WHERE active";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_table_is_adopted_with_tenants_query() {
    let env = env().await;
    let out = pgtenant(&["registry", "init", "--url", &url(&env)]);
    assert!(out.status.success());
    let config = cli_settings(&env, &format!("tenants_query = {APP_QUERY:?}\n"));
    let registry = env.direct(REGISTRY_HOST, "postgres").await;
    registry.batch_execute(APP_TABLE).await.unwrap();
    let address = env.host_address(ERP_HOST);
    cli(
        &config,
        &[
            "host",
            "add",
            "pg-a",
            "--address",
            &address,
            "--max-connections",
            "20",
        ],
    );

    let query = format!("tenants_query = {APP_QUERY:?}\n");
    // One instance relies on the documented trigger, one on polling alone.
    let notified = instance(&env, &query).await;
    let polled = instance(&env, &format!("{query}poll_interval = \"300ms\"\n")).await;
    for server in [&notified, &polled] {
        assert_eq!(try_items(server, "acme-co").await.unwrap(), ACME_ITEMS);
        assert!(try_items(server, "old-co")
            .await
            .unwrap_err()
            .contains("3D000"));
    }
    let list = cli(&config, &["tenant", "list"]);
    assert!(
        list.contains("acme-co") && !list.contains("old-co"),
        "{list}"
    );
    let err = pgtenant(&[
        "tenant",
        "remove",
        "acme-co",
        "--config",
        &config.display().to_string(),
    ]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("application's table"));

    // Without the trigger only polling sees the change.
    registry
        .batch_execute(
            "UPDATE public.tenant_registry SET active = true WHERE tenant_slug = 'old-co'",
        )
        .await
        .unwrap();
    all_follow(&[&polled], "old-co", GLOBEX_ITEMS).await;

    // With it (as the README says), every instance hears of each change at once.
    registry
        .batch_execute(
            "CREATE TRIGGER pgtenant_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE \
             ON public.tenant_registry FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.notify_change();
             UPDATE public.tenant_registry SET finance_schema = 'tenant_acme' WHERE tenant_slug = 'old-co';",
        )
        .await
        .unwrap();
    all_follow(&[&notified, &polled], "old-co", ACME_ITEMS).await;
    registry
        .batch_execute(
            "INSERT INTO public.tenant_registry VALUES ('new-co', 'tenant_globex', true)",
        )
        .await
        .unwrap();
    let took = all_follow(&[&notified], "new-co", GLOBEX_ITEMS).await;
    println!("a row of the application's table reached the instance in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_through_the_other_instance_reaches_the_query() {
    let env = env().await;
    seed(&env);
    let a = instance(&env, "").await;
    let b = instance(&env, "").await;
    let registry = env.direct(REGISTRY_HOST, "postgres").await;
    let live: i64 = registry
        .query_one("SELECT count(*) FROM pgtenant.instances", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(live, 2);
    // Both know each other before the test goes on (each refreshes every heartbeat).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (mut raw, replies) =
        Raw::login(a.local_addr(), &[("user", "app"), ("database", "acme")]).await;
    let key = replies
        .into_iter()
        .find(|m| m.tag == b'K')
        .expect("BackendKeyData");
    raw.send(&query_message("SELECT pg_sleep(30)")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Through the other instance, as a load balancer may route it.
    let mut cancel = Raw::connect(b.local_addr()).await;
    cancel.send(&packet(80_877_102, &key.body)).await;
    let replies = raw.read_until_ready().await;
    let error = replies
        .iter()
        .find(|m| m.tag == b'E')
        .expect("the query was cancelled");
    assert_eq!(error.error().code, "57014", "{:?}", error.error());

    // A wrong secret sent through the other instance cancels nothing. (The next query
    // waits a moment first: PostgreSQL may apply a cancel signal that lands just after
    // the query it was meant for ended to the next one, which would read as the
    // wrong secret's doing on a loaded machine.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    raw.send(&query_message("SELECT pg_sleep(1), 'finished'"))
        .await;
    let mut body = key.body.clone();
    body[7] ^= 0xff;
    let mut cancel = Raw::connect(b.local_addr()).await;
    cancel.send(&packet(80_877_102, &body)).await;
    let replies = raw.read_until_ready().await;
    assert!(replies.iter().all(|m| m.tag != b'E'), "{replies:?}");

    // A stopped instance's row expires (5 heartbeats); the live one's stays.
    registry
        .batch_execute(
            "INSERT INTO pgtenant.instances (id, address, slot, heartbeat) \
             SELECT 'gone', '127.0.0.1:1', s, now() - interval '1 hour' \
             FROM generate_series(1, 2047) s \
             WHERE s NOT IN (SELECT slot FROM pgtenant.instances) LIMIT 1",
        )
        .await
        .unwrap();
    let expired = eventually(Duration::from_secs(10), || async {
        let n: i64 = registry
            .query_one(
                "SELECT count(*) FROM pgtenant.instances WHERE id = 'gone'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    })
    .await;
    assert!(expired.is_some(), "a stale instance row stays");

    // A stopped instance takes its row away.
    b.stop().await;
    let left: i64 = registry
        .query_one("SELECT count(*) FROM pgtenant.instances", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1);
    drop(a);
}
