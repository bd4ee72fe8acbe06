//! Client authentication: SCRAM-SHA-256 users scoped to tenants, md5, channel
//! binding, cleartext only over TLS, template limits, the auth timeout and the cap on
//! unauthenticated connections per address, and `pgtenant user add`. No password
//! used here may appear in any log.

mod common;

use std::time::Duration;

use common::tls::{assert_not_logged, capture_logs, connect_tls, psql, TestCa};
use common::*;

const ALICE_PW: &str = "alice-Secret-4711";
const BOB_PW: &str = "bob-Secret-0815";
const CAROL_PW: &str = "carol-Md5-2323";

fn users() -> String {
    format!(
        "[users.alice]\npassword = {:?}\ntenants = [\"acme\"]\n\
         [users.bob]\npassword = {:?}\ntenants = [\"*\"]\n\
         [users.nobody]\npassword = {:?}\ntenants = []\n\
         [users.carol]\npassword = {:?}\ntenants = [\"acme\"]\n",
        pgtenant::auth::Verifier::scram_text(ALICE_PW),
        pgtenant::auth::Verifier::scram_text(BOB_PW),
        pgtenant::auth::Verifier::scram_text(BOB_PW),
        postgres_protocol::password::md5(CAROL_PW.as_bytes(), "carol"),
    )
}

fn with_password(env: &Env, user: &str, db: &str, password: &str) -> tokio_postgres::Config {
    let mut config = env.config(user, Some(db));
    config.password(password);
    config
}

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|db| db.code().code().to_string())
        .unwrap_or_else(|| describe(e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_users_reach_only_the_tenants_granted_to_them() {
    capture_logs();
    let env = EnvBuilder::erp()
        .registry_extra(&users())
        .settings("[proxy]\nauth = \"scram-sha-256\"\n")
        .start()
        .await;

    let alice = connect(&with_password(&env, "alice", "acme", ALICE_PW))
        .await
        .unwrap();
    assert_eq!(items(&alice).await, ACME_ITEMS);
    let bob = connect(&with_password(&env, "bob", "globex", BOB_PW))
        .await
        .unwrap();
    assert_eq!(items(&bob).await, GLOBEX_ITEMS);
    // The user_suffix source: the user part is the proxy user.
    let suffixed = connect(&with_password(&env, "bob.acme", "bob.acme", BOB_PW))
        .await
        .unwrap();
    assert_eq!(items(&suffixed).await, ACME_ITEMS);

    let wrong = connect(&with_password(&env, "alice", "acme", "guess"))
        .await
        .err()
        .unwrap();
    let unknown = connect(&with_password(&env, "mallory", "acme", "guess"))
        .await
        .err()
        .unwrap();
    assert_eq!(code(&wrong), "28P01");
    assert_eq!(code(&unknown), "28P01");
    let message = |e: &tokio_postgres::Error| e.as_db_error().unwrap().message().to_string();
    assert_eq!(
        message(&wrong).replace("alice", "X"),
        message(&unknown).replace("mallory", "X"),
        "a wrong password and an unknown user are told the same"
    );

    let not_granted = connect(&with_password(&env, "alice", "globex", ALICE_PW))
        .await
        .err()
        .unwrap();
    assert_eq!(code(&not_granted), "28000");
    assert!(
        message(&not_granted).contains("tenant \"globex\""),
        "{}",
        message(&not_granted)
    );
    let console_only = connect(&with_password(&env, "nobody", "acme", BOB_PW))
        .await
        .err()
        .unwrap();
    assert_eq!(code(&console_only), "28000");
    assert!(
        env.try_connect("alice", "acme").await.is_err(),
        "no password, no login"
    );

    // psql with the password from the environment, and a wrong one.
    let info = format!(
        "host=127.0.0.1 port={} user=alice dbname=acme",
        env.addr().port()
    );
    assert_eq!(
        psql(&info, "SELECT count(*) FROM items", Some(ALICE_PW))
            .await
            .unwrap(),
        "2"
    );
    let err = psql(&info, "SELECT 1", Some("nope")).await.unwrap_err();
    assert!(
        err.contains("password authentication failed for user \"alice\""),
        "{err}"
    );

    assert_not_logged(&env, &[ALICE_PW, BOB_PW, "guess"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_users_log_in_with_md5() {
    capture_logs();
    let env = EnvBuilder::erp()
        .registry_extra(&users())
        .settings("[proxy]\nauth = \"md5\"\n")
        .start()
        .await;
    let carol = connect(&with_password(&env, "carol", "acme", CAROL_PW))
        .await
        .unwrap();
    assert_eq!(items(&carol).await, ACME_ITEMS);
    let wrong = connect(&with_password(&env, "carol", "acme", "guess"))
        .await
        .err()
        .unwrap();
    assert_eq!(code(&wrong), "28P01");
    // A SCRAM verifier is served with SCRAM under md5, as PostgreSQL does.
    let alice = connect(&with_password(&env, "alice", "acme", ALICE_PW))
        .await
        .unwrap();
    assert_eq!(items(&alice).await, ACME_ITEMS);
    let info = format!(
        "host=127.0.0.1 port={} user=carol dbname=acme",
        env.addr().port()
    );
    assert_eq!(
        psql(&info, "SELECT count(*) FROM items", Some(CAROL_PW))
            .await
            .unwrap(),
        "2"
    );
    assert_not_logged(&env, &[CAROL_PW, ALICE_PW]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_and_cleartext_over_tls() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap().keep();
    let ca = TestCa::new("auth test CA");
    let (ca_path, cert, key) = ca.write(&dir, "server", &["127.0.0.1"]);
    let tls = format!(
        "[tls]\nmode = \"allow\"\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let env = EnvBuilder::erp()
        .registry_extra(&users())
        .settings(&tls)
        .settings("[proxy]\nauth = \"scram-sha-256\"\n")
        .start()
        .await;
    let port = env.addr().port();
    let info = |extra: &str| {
        format!(
            "host=127.0.0.1 port={port} user=alice dbname=acme sslrootcert={} {extra}",
            ca_path.display()
        )
    };
    // libpq insists on SCRAM-SHA-256-PLUS bound to the proxy's certificate.
    let bound = psql(
        &info("sslmode=verify-full channel_binding=require"),
        "SELECT 1",
        Some(ALICE_PW),
    )
    .await;
    assert_eq!(bound.unwrap(), "1");
    let plain = psql(
        &info("sslmode=disable channel_binding=require"),
        "SELECT 1",
        Some(ALICE_PW),
    )
    .await;
    assert!(plain.is_err(), "channel binding cannot happen without TLS");
    let client = connect_tls(&with_password(&env, "alice", "acme", ALICE_PW), &ca.pem())
        .await
        .unwrap();
    assert_eq!(items(&client).await, ACME_ITEMS);

    // Cleartext passwords: only over TLS.
    let server = env
        .start_server(&format!("{tls}[proxy]\nauth = \"password\"\n"))
        .await;
    let cleartext = format!(
        "host=127.0.0.1 port={} user=alice dbname=acme sslrootcert={}",
        server.local_addr().port(),
        ca_path.display()
    );
    let ok = psql(
        &format!("{cleartext} sslmode=verify-full"),
        "SELECT 1",
        Some(ALICE_PW),
    )
    .await;
    assert_eq!(ok.unwrap(), "1");
    let refused = psql(
        &format!("{cleartext} sslmode=disable"),
        "SELECT 1",
        Some(ALICE_PW),
    )
    .await;
    let refused = refused.unwrap_err();
    assert!(refused.contains("TLS"), "{refused}");
    let wrong = psql(
        &format!("{cleartext} sslmode=require"),
        "SELECT 1",
        Some("guess"),
    )
    .await;
    assert!(wrong
        .unwrap_err()
        .contains("password authentication failed"));
    assert_not_logged(&env, &[ALICE_PW, "guess"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_never_serves_maintenance_databases_nor_a_role_of_the_clients_choice() {
    let env = EnvBuilder::erp()
        .registry_extra(
            "[tenants.\"*\"]\nhost = \"pg-a\"\ndatabase = \"{tenant}\"\nbackend_user = \"app\"\n",
        )
        .settings("[proxy]\ntenant_from = [\"database\"]\n")
        .start()
        .await;
    for db in ["postgres", "template1", "template0"] {
        let Err(err) = env.try_connect("postgres", db).await else {
            panic!("{db} was served");
        };
        assert_eq!(code(&err), "3D000", "{db}: {}", describe(&err));
    }
    // The console's name leads to the console, never to a tenant database.
    let Err(err) = env.try_connect("postgres", "pgtenant").await else {
        panic!("pgtenant was served to a user the console does not list");
    };
    assert!(
        describe(&err).contains("admin console"),
        "{}",
        describe(&err)
    );
    // `erp` is served by the template as role app, whatever user the client names.
    let client = env.connect("postgres", "erp").await;
    assert_eq!(value(&client, "SELECT current_user").await, "app");

    // A template that would let the client pick the role is refused whole.
    env.write_registry(&format!(
        "{ERP_REGISTRY}\n[tenants.\"*\"]\nhost = \"pg-a\"\ndatabase = \"{{tenant}}\"\n"
    ));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["check", "--config"])
        .arg(&env.settings_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("tenants.\"*\".backend_user"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_logins_time_out_and_one_address_cannot_crowd_out_others() {
    let env = EnvBuilder::erp()
        .registry_extra(&users())
        .settings("[proxy]\nauth = \"scram-sha-256\"\nauth_timeout = \"3s\"\nmax_unauthenticated_per_address = 3\nstartup_timeout = \"30s\"\n")
        .start()
        .await;
    // A client that stops answering in the middle of SCRAM is told, not kept.
    let mut stalled = Raw::connect(env.addr()).await;
    stalled
        .send(&startup_packet(
            PROTOCOL_3_0,
            &[("user", "alice"), ("database", "acme")],
        ))
        .await;
    let request = stalled.read_message().await.expect("SASL request");
    assert_eq!(request.tag, b'R');
    let fatal = stalled.expect_fatal().await;
    assert_eq!(fatal.code, "08P01");
    assert!(
        fatal.message.contains("authentication"),
        "{}",
        fatal.message
    );

    // Three silent connections from 127.0.0.1 fill its share...
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(Raw::connect(env.addr()).await);
    }
    let pending = env.server().app().unauthenticated.clone();
    eventually(Duration::from_secs(5), || async {
        (pending.count("127.0.0.1".parse().unwrap()) == 3).then_some(())
    })
    .await
    .expect("three pending");
    let mut fourth = Raw::connect(env.addr()).await;
    let fatal = fourth.expect_fatal().await;
    assert_eq!(fatal.code, "53300");
    assert!(fatal.message.contains("127.0.0.1"), "{}", fatal.message);
    // ...while a client from another address logs in.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = socket.connect(env.addr()).await.unwrap();
    let mut config = with_password(&env, "alice", "acme", ALICE_PW);
    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    let (client, connection) = config
        .connect_raw(stream, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    assert_eq!(items(&client).await, ACME_ITEMS);
    // Once the silent ones go, 127.0.0.1 is served again.
    drop(silent);
    let back = eventually(Duration::from_secs(5), || async {
        connect(&with_password(&env, "alice", "acme", ALICE_PW))
            .await
            .ok()
    })
    .await;
    assert!(back.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_add_stores_a_verifier_that_logs_in() {
    capture_logs();
    let env = EnvBuilder::erp()
        .settings("[proxy]\nauth = \"scram-sha-256\"\n")
        .start()
        .await;
    let password = "dave-Added-9999";
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args([
            "user",
            "add",
            "dave",
            "--password",
            password,
            "--tenants",
            "acme,globex",
            "--config",
        ])
        .arg(&env.settings_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let registry = std::fs::read_to_string(&env.registry_path).unwrap();
    assert!(registry.contains("SCRAM-SHA-256$4096:"), "{registry}");
    assert!(
        !registry.contains(password),
        "the password itself was stored"
    );
    assert!(
        registry.contains("[tenants.acme]"),
        "the rest of the file is kept"
    );
    let client = eventually(Duration::from_secs(10), || async {
        connect(&with_password(&env, "dave", "globex", password))
            .await
            .ok()
    })
    .await
    .expect("the new user logs in after the registry reload");
    assert_eq!(items(&client).await, GLOBEX_ITEMS);
    assert_not_logged(&env, &[password]);
}
