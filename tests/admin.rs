//! The admin console (`psql …/pgtenant`): every SHOW with psql (simple protocol) and
//! tokio-postgres (extended protocol, typed columns), the refusals, PAUSE/RESUME,
//! KILL, RELOAD and SHUTDOWN against real clusters.

mod common;

use std::time::Duration;

use common::*;
use tokio_postgres::Client;

const COMMANDS: [&str; 8] = [
    "TENANTS", "POOLS", "CLIENTS", "SERVERS", "HOSTS", "STATS", "CONFIG", "VERSION",
];

async fn console(env: &Env) -> Client {
    env.connect("pgtenant", "pgtenant").await
}

/// Rows of a console SHOW through the extended protocol, as (column, text) maps.
async fn show(admin: &Client, what: &str) -> Vec<tokio_postgres::Row> {
    admin
        .query(&format!("SHOW {what}"), &[])
        .await
        .unwrap_or_else(|e| panic!("SHOW {what}: {}", describe(&e)))
}

fn psql_ok(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "psql failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_show_answers_typed_rows_to_psql_and_drivers() {
    let env = EnvBuilder::erp()
        .settings("[proxy]\npool_mode = \"transaction\"\npark_after = \"0s\"\n")
        .start()
        .await;
    let acme = env.connect("app", "acme").await;
    assert_eq!(items(&acme).await, ACME_ITEMS);
    acme.batch_execute("BEGIN").await.unwrap();
    assert_eq!(items(&acme).await, ACME_ITEMS);

    // psql prints a table for each command, headed by the columns.
    for what in COMMANDS {
        let out = env
            .psql(&[
                "-U",
                "pgtenant",
                "-d",
                "pgtenant",
                "-c",
                &format!("SHOW {what}"),
            ])
            .await;
        let text = psql_ok(&out);
        assert!(text.contains("row"), "SHOW {what}: {text}");
    }
    let out = env
        .psql(&["-U", "pgtenant", "-d", "pgtenant", "-c", "SHOW POOLS"])
        .await;
    let text = psql_ok(&out);
    assert!(
        text.contains("servers_active") && text.contains(" acme "),
        "{text}"
    );

    let admin = console(&env).await;
    let pools = show(&admin, "POOLS").await;
    let acme_pool = pools
        .iter()
        .find(|r| r.get::<_, &str>("tenant") == "acme")
        .expect("acme's pool");
    assert_eq!(acme_pool.get::<_, i64>("pool_size"), 10);
    assert_eq!(acme_pool.get::<_, i64>("servers_active"), 1);
    assert_eq!(acme_pool.get::<_, i64>("clients_active"), 1);
    assert!(!acme_pool.get::<_, bool>("paused"));

    let clients = show(&admin, "CLIENTS").await;
    assert_eq!(clients.len(), 1, "only the tenant client is listed");
    let c = &clients[0];
    assert_eq!(c.get::<_, &str>("tenant"), "acme");
    assert_eq!(c.get::<_, &str>("user"), "app");
    assert_eq!(c.get::<_, &str>("state"), "active");
    assert!(c.get::<_, bool>("in_transaction"));
    let pid: i64 = c.get("server_pid");
    let real_pid: i32 = acme
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid, i64::from(real_pid));

    let servers = show(&admin, "SERVERS").await;
    assert!(servers.iter().any(|s| s.get::<_, &str>("state") == "active"
        && s.get::<_, i64>("pid") == pid
        && s.get::<_, Option<&str>>("client") == Some(c.get::<_, &str>("id"))));

    let tenants = show(&admin, "TENANTS").await;
    let names: Vec<&str> = tenants.iter().map(|r| r.get("tenant")).collect();
    assert_eq!(names, ["acme", "globex"]);
    assert_eq!(tenants[0].get::<_, i64>("clients"), 1);
    assert_eq!(tenants[0].get::<_, &str>("pool_mode"), "transaction");

    let hosts = show(&admin, "HOSTS").await;
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].get::<_, &str>("host"), "pg-a");
    assert_eq!(hosts[0].get::<_, i64>("max_connections"), 50);
    assert_eq!(hosts[0].get::<_, i64>("open"), 1);
    assert_eq!(hosts[0].get::<_, i64>("opens"), 1);

    acme.batch_execute("COMMIT").await.unwrap();
    let stats = show(&admin, "STATS").await;
    let s = stats
        .iter()
        .find(|r| r.get::<_, &str>("tenant") == "acme")
        .unwrap();
    // items() twice, pg_backend_pid(), BEGIN, COMMIT.
    assert_eq!(s.get::<_, i64>("queries"), 5);
    // One implicit transaction, then BEGIN … COMMIT.
    assert_eq!(s.get::<_, i64>("transactions"), 2);
    assert!(s.get::<_, i64>("bytes_in") > 0 && s.get::<_, i64>("bytes_out") > 0);
    assert!(s.get::<_, f64>("avg_xact_ms") > 0.0);

    let config = show(&admin, "CONFIG").await;
    assert!(config
        .iter()
        .any(|r| r.get::<_, &str>("key") == "admin.console_database"
            && r.get::<_, &str>("value") == "pgtenant"));
    let version = show(&admin, "VERSION").await;
    assert!(version[0]
        .get::<_, &str>("version")
        .starts_with("pgtenant "));

    // The simple protocol from a driver too, several statements in one query.
    let replies = admin
        .simple_query("SHOW VERSION; SHOW HOSTS")
        .await
        .unwrap();
    let rows = replies
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_commands_and_strangers_are_refused() {
    let env = EnvBuilder::erp().start().await;
    let admin = console(&env).await;
    let err = admin.simple_query("SELECT 1").await.unwrap_err();
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "42601");
    assert!(
        db.message().contains("SHOW TENANTS") && db.message().contains("PAUSE"),
        "{}",
        db.message()
    );
    // Extended protocol: the error ends the exchange, the session goes on.
    let err = admin.query("SHOW NOTHING", &[]).await.unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "42601");
    assert_eq!(show(&admin, "VERSION").await.len(), 1);

    // A tenant's user asking for the console database.
    let err = env
        .try_connect("app", "pgtenant")
        .await
        .map(|_| ())
        .expect_err("refused");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "28000", "{}", describe(&err));
    assert!(db.message().contains("admin.users"), "{}", db.message());
    let out = env
        .psql(&["-U", "app", "-d", "pgtenant", "-c", "SHOW POOLS"])
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin console"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_console_is_loopback_only_unless_allowed() {
    // The proxy listens on every address; a client from a non-loopback address of
    // this machine is refused with trust.
    let env = EnvBuilder::erp().start().await;
    let other = local_non_loopback_ip();
    let Some(ip) = other else {
        eprintln!("no non-loopback address on this machine; nothing to check");
        return;
    };
    let server = env
        .start_server(&format!("[proxy]\nlisten = \"{ip}:0\"\n"))
        .await;
    let config = config_for(server.local_addr(), "pgtenant", Some("pgtenant"));
    let err = connect(&config)
        .await
        .map(|_| ())
        .expect_err("refused from a remote address");
    assert_eq!(err.as_db_error().unwrap().code().code(), "28000");
    assert!(describe(&err).contains("loopback"), "{}", describe(&err));
    let allowed = env
        .start_server(&format!(
            "[proxy]\nlisten = \"{ip}:0\"\n[admin]\nconsole_trust_remote = true\n"
        ))
        .await;
    let admin = connect(&config_for(
        allowed.local_addr(),
        "pgtenant",
        Some("pgtenant"),
    ))
    .await
    .unwrap();
    assert_eq!(show(&admin, "VERSION").await.len(), 1);
}

fn local_non_loopback_ip() -> Option<std::net::IpAddr> {
    // The address the system would use towards the outside: no packet is sent.
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_transactions_until_resume() {
    let env = EnvBuilder::erp()
        .settings("[proxy]\npool_mode = \"transaction\"\n[pool]\npool_size = 1\n")
        .start()
        .await;
    let admin = console(&env).await;
    // Each waiter writes its number when its turn comes: the sequence shows the order.
    env.direct("pg-a", "erp")
        .await
        .batch_execute(
            "CREATE TABLE tenant_acme.resume_order (seq serial PRIMARY KEY, who int);
             GRANT ALL ON tenant_acme.resume_order, tenant_acme.resume_order_seq_seq TO app",
        )
        .await
        .unwrap();
    const WAITERS: usize = 6;
    let mut clients = Vec::new();
    for _ in 0..WAITERS {
        let c = env.connect("app", "acme").await;
        assert_eq!(items(&c).await, ACME_ITEMS);
        clients.push(c);
    }
    // In flight when PAUSE comes: it finishes; PAUSE returns once it has.
    clients[0].batch_execute("BEGIN").await.unwrap();
    let pausing = {
        let admin = console(&env).await;
        tokio::spawn(async move { admin.simple_query("PAUSE acme").await.map(|_| ()) })
    };
    let tenants = eventually(Duration::from_secs(10), || async {
        let rows = show(&admin, "TENANTS").await;
        rows.iter()
            .any(|r| r.get::<_, &str>("tenant") == "acme" && r.get::<_, bool>("paused"))
            .then_some(())
    })
    .await;
    assert!(tenants.is_some(), "acme shows as paused");
    assert!(
        !pausing.is_finished(),
        "PAUSE waits for the open transaction"
    );
    assert_eq!(items(&clients[0]).await, ACME_ITEMS);
    clients[0].batch_execute("COMMIT").await.unwrap();
    pausing.await.unwrap().expect("PAUSE returns once drained");

    // New transactions wait, in a known order: each client queues only once the one
    // before it is seen waiting.
    let mut waiting = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        waiting.push(tokio::spawn(async move {
            c.simple_query(&format!("INSERT INTO resume_order (who) VALUES ({i})"))
                .await
                .map(|_| ())
        }));
        let waiters = eventually(Duration::from_secs(10), || async {
            let rows = show(&admin, "POOLS").await;
            let w: i64 = rows
                .iter()
                .map(|r| r.get::<_, i64>("clients_waiting"))
                .sum();
            (w as usize == i + 1).then_some(())
        })
        .await;
        assert!(waiters.is_some(), "client {i} waits at the paused tenant");
    }
    // globex is not held up.
    let globex = env.connect("app", "globex").await;
    assert_eq!(items(&globex).await, GLOBEX_ITEMS);
    let direct = env.direct("pg-a", "erp").await;
    let order = || async {
        direct
            .query("SELECT who FROM tenant_acme.resume_order ORDER BY seq", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, i32>(0) as usize)
            .collect::<Vec<_>>()
    };
    assert!(order().await.is_empty(), "nothing ran while paused");

    admin.simple_query("RESUME acme").await.unwrap();
    for w in waiting {
        w.await.unwrap().expect("each waiter runs after RESUME");
    }
    // One server (pool_size 1): the waiters ran one at a time, in the order they came.
    assert_eq!(order().await, (0..WAITERS).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_waiter_past_checkout_timeout_gets_57p03() {
    let env = EnvBuilder::erp()
        .settings("[proxy]\npool_mode = \"transaction\"\n[pool]\ncheckout_timeout = \"300ms\"\n")
        .start()
        .await;
    let admin = console(&env).await;
    let acme = env.connect("app", "acme").await;
    admin.simple_query("PAUSE acme").await.unwrap();
    let err = acme.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(
        err.as_db_error().map(|d| d.code().code()),
        Some("57P03"),
        "{}",
        describe(&err)
    );
    assert!(
        describe(&err).contains("tenant \"acme\" is paused"),
        "{}",
        describe(&err)
    );
    // A new client of the paused tenant is told the same.
    let err = env.try_connect("app", "acme").await;
    // (transaction mode greets without a server once one opened: the refusal may
    // come at its first query instead)
    match err {
        Err(e) => assert_eq!(e.as_db_error().unwrap().code().code(), "57P03"),
        Ok(c) => {
            let e = c.simple_query("SELECT 1").await.unwrap_err();
            assert_eq!(e.as_db_error().unwrap().code().code(), "57P03");
        }
    }
    admin.simple_query("RESUME").await.unwrap();
    let acme = env.connect("app", "acme").await;
    assert_eq!(items(&acme).await, ACME_ITEMS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_times_out_naming_session_clients_and_kill_ends_them() {
    let env = EnvBuilder::erp()
        .settings("[proxy]\npool_mode = \"session\"\n[admin]\npause_timeout = \"300ms\"\n")
        .start()
        .await;
    let admin = console(&env).await;
    let (held, mut notices) = env.connect_with_messages("app", "acme").await;
    assert_eq!(items(&held).await, ACME_ITEMS);
    let err = admin.simple_query("PAUSE acme").await.unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "55006");
    let clients = show(&admin, "CLIENTS").await;
    let id: &str = clients[0].get("id");
    assert!(
        db.message().contains(&format!("{id} (app@")),
        "{}",
        db.message()
    );
    assert!(db.message().contains("session mode"), "{}", db.message());
    // Still paused: RESUME undoes it; KILL ends the session client first.
    assert!(show(&admin, "POOLS").await[0].get::<_, bool>("paused"));
    admin.simple_query("KILL acme").await.unwrap();
    let err = held.simple_query("SELECT 1").await.unwrap_err();
    let _ = notices.try_recv();
    assert!(
        held.is_closed() || err.is_closed() || err.as_db_error().is_some(),
        "{err}"
    );
    let drained = eventually(Duration::from_secs(10), || async {
        (show(&admin, "CLIENTS").await.is_empty()).then_some(())
    })
    .await;
    assert!(drained.is_some(), "the killed client is gone");
    admin.simple_query("PAUSE acme").await.expect("drained now");
    admin.simple_query("RESUME acme").await.unwrap();
    let again = env.connect("app", "acme").await;
    assert_eq!(items(&again).await, ACME_ITEMS);
    // An unknown tenant is named.
    let err = admin.simple_query("KILL nobody").await.unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "3D000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_tells_an_idle_client_why() {
    let env = EnvBuilder::erp().start().await;
    let admin = console(&env).await;
    let mut idle = Raw::acme(env.addr()).await;
    admin.simple_query("KILL acme").await.unwrap();
    let fatal = idle.expect_fatal().await;
    assert_eq!(fatal.code, "57P01", "{fatal:?}");
    assert!(fatal.message.contains("KILL acme"), "{fatal:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reads_the_registry_and_shutdown_stops() {
    let env = EnvBuilder::erp()
        .settings("[registry]\nwatch_interval = \"1h\"\n")
        .start()
        .await;
    let admin = console(&env).await;
    env.write_registry(&format!(
        "{ERP_REGISTRY}\n[tenants.initech]\nhost = \"pg-a\"\ndatabase = \"erp\"\nsearch_path = [\"tenant_acme\"]\nbackend_user = \"app\"\n"
    ));
    admin.simple_query("RELOAD").await.unwrap();
    let tenants = show(&admin, "TENANTS").await;
    assert!(tenants
        .iter()
        .any(|r| r.get::<_, &str>("tenant") == "initech"));
    // A broken file is refused and named; the old registry keeps serving.
    std::fs::write(&env.registry_path, "[tenants.x]\nhost = \n").unwrap();
    let err = admin.simple_query("RELOAD").await.unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "F0000");
    assert_eq!(
        items(&env.connect("app", "initech").await).await,
        ACME_ITEMS
    );

    let stop = env.server().stop_requested();
    admin.simple_query("SHUTDOWN").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), stop)
        .await
        .expect("SHUTDOWN asks the proxy to stop");
}

/// Under `proxy.auth = "scram-sha-256"` the console is for registry users listed in
/// admin.users, who prove their password like everyone: psql and tokio-postgres get
/// in, a wrong password is 28P01, a tenant's user with the right password is 28000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_users_log_in_with_scram() {
    const OPS_PW: &str = "ops-Console-9931";
    const ALICE_PW: &str = "alice-Tenant-1234";
    let users = format!(
        "[users.ops]\npassword = {:?}\ntenants = []\n[users.alice]\npassword = {:?}\ntenants = [\"acme\"]\n",
        pgtenant::auth::Verifier::scram_text(OPS_PW),
        pgtenant::auth::Verifier::scram_text(ALICE_PW),
    );
    let env = EnvBuilder::erp()
        .registry_extra(&users)
        .settings("[proxy]\nauth = \"scram-sha-256\"\n[admin]\nusers = [\"ops\"]\n")
        .start()
        .await;
    let with_password = |user: &str, db: &str, password: &str| {
        let mut config = env.config(user, Some(db));
        config.password(password);
        config
    };

    // tokio-postgres: extended protocol, typed rows.
    let admin = connect(&with_password("ops", "pgtenant", OPS_PW))
        .await
        .unwrap_or_else(|e| panic!("{}", describe(&e)));
    let version = show(&admin, "VERSION").await;
    assert!(version[0].get::<_, &str>(0).contains("pgtenant"));
    // The console sees the tenant's client that logged in with its own password.
    let alice = connect(&with_password("alice", "acme", ALICE_PW))
        .await
        .unwrap();
    assert_eq!(items(&alice).await, ACME_ITEMS);
    let clients = show(&admin, "CLIENTS").await;
    assert!(
        clients
            .iter()
            .any(|r| r.get::<_, &str>("tenant") == "acme" && r.get::<_, &str>("user") == "alice"),
        "alice is listed"
    );

    // psql: simple protocol, the password from the environment.
    let port = env.addr().port().to_string();
    let psql = |user: &str, password: &str| {
        let mut command = tokio::process::Command::new("/usr/bin/psql");
        command
            .args(["-X", "-h", "127.0.0.1", "-p", &port, "-U", user])
            .args(["-d", "pgtenant", "-c", "SHOW TENANTS"])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(std::process::Stdio::null());
        command.output()
    };
    let out = psql("ops", OPS_PW).await.unwrap();
    let table = psql_ok(&out);
    assert!(
        table.contains("acme") && table.contains("globex"),
        "{table}"
    );
    let out = psql("ops", "wrong").await.unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Wrong password: 28P01; a registry user not in admin.users: 28000, even with
    // the right password.
    let err = connect(&with_password("ops", "pgtenant", "guess"))
        .await
        .map(|_| ())
        .expect_err("wrong password");
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("28P01"),
        "{}",
        describe(&err)
    );
    let err = connect(&with_password("alice", "pgtenant", ALICE_PW))
        .await
        .map(|_| ())
        .expect_err("alice is not a console user");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{}", describe(&err)));
    assert_eq!(db.code().code(), "28000");
    assert!(db.message().contains("admin.users"), "{}", db.message());
    let out = psql("alice", ALICE_PW).await.unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin.users"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
