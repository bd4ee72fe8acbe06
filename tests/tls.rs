//! Client TLS (verify-full with a CA made in the test, require mode, direct TLS with
//! ALPN, certificate reload), the `sni` and `options` tenant sources, and TLS towards
//! the server.

mod common;

use std::sync::Arc;

use common::tls::{connect_tls, psql, TestCa};
use common::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Settings that serve TLS with the certificate in `dir/<prefix>.crt`.
fn tls_settings(env_dir: &std::path::Path, prefix: &str, mode: &str) -> String {
    format!(
        "[tls]\nmode = \"{mode}\"\ncert = {:?}\nkey = {:?}\n",
        env_dir.join(format!("{prefix}.crt")).display().to_string(),
        env_dir.join(format!("{prefix}.key")).display().to_string(),
    )
}

/// An erp environment whose proxy serves TLS with a certificate for 127.0.0.1 and
/// `*.db.example.com`, issued by a CA made here.
async fn tls_env(mode: &str, extra: &str) -> (Env, TestCa, std::path::PathBuf) {
    tls_env_with(mode, "", extra).await
}

/// `tls_env` with more `[tls]` lines.
async fn tls_env_with(mode: &str, tls: &str, extra: &str) -> (Env, TestCa, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap().keep();
    let ca = TestCa::new("pgtenant test CA");
    let (ca_path, _, _) = ca.write(&dir, "server", &["127.0.0.1", "*.db.example.com"]);
    let env = EnvBuilder::erp()
        .settings(&format!("{}{tls}", tls_settings(&dir, "server", mode)))
        .settings(extra)
        .start()
        .await;
    (env, ca, ca_path)
}

fn conninfo(env: &Env, extra: &str) -> String {
    format!("host=127.0.0.1 port={} user=app {extra}", env.addr().port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_verify_the_proxy_and_reach_their_tenant_over_tls() {
    let (env, ca, ca_path) = tls_env("allow", "").await;
    let ca_arg = format!("sslrootcert={}", ca_path.display());

    let info = conninfo(&env, &format!("dbname=acme sslmode=verify-full {ca_arg}"));
    let got = psql(
        &info,
        "SELECT string_agg(name, ',' ORDER BY id) FROM items",
        None,
    )
    .await;
    assert_eq!(got.unwrap(), ACME_ITEMS.join(","));

    let client = connect_tls(&env.config("app", Some("globex")), &ca.pem())
        .await
        .unwrap_or_else(|e| panic!("tokio-postgres over TLS: {}", describe(&e)));
    assert_eq!(items(&client).await, GLOBEX_ITEMS);

    // A client trusting another CA refuses the proxy's certificate.
    let other = TestCa::new("someone else");
    let err = connect_tls(&env.config("app", Some("acme")), &other.pem()).await;
    assert!(
        err.is_err(),
        "a certificate from an unknown CA was accepted"
    );

    // Plain clients are still served in allow mode.
    assert_eq!(items(&env.connect("app", "acme").await).await, ACME_ITEMS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_mode_refuses_a_plain_startup() {
    let (env, ca, _) = tls_env("require", "").await;
    let Err(err) = env.try_connect("app", "acme").await else {
        panic!("a plain login was served in require mode");
    };
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "28000");
    assert!(db.message().contains("TLS"), "{}", db.message());
    let client = connect_tls(&env.config("app", Some("acme")), &ca.pem())
        .await
        .unwrap();
    assert_eq!(items(&client).await, ACME_ITEMS);
}

/// PostgreSQL 17's `sslnegotiation=direct`: TLS from the first byte, ALPN "postgresql".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_is_served_with_alpn_and_refused_without() {
    let (env, ca, _) = tls_env("allow", "").await;
    let connect = |alpn: Option<&'static [u8]>| {
        let ca = ca.pem();
        let addr = env.addr();
        async move {
            let mut roots = rustls::RootCertStore::empty();
            use rustls::pki_types::pem::PemObject;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = alpn.into_iter().map(<[u8]>::to_vec).collect();
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("127.0.0.1").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .expect("TLS handshake");
            tls.write_all(&startup_packet(
                PROTOCOL_3_0,
                &[("user", "app"), ("database", "acme")],
            ))
            .await
            .unwrap();
            let mut reply = Vec::new();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = tls.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    reply.extend_from_slice(&chunk[..n]);
                    // Through ReadyForQuery, or an ErrorResponse.
                    if reply.windows(6).any(|w| w == [b'Z', 0, 0, 0, 5, b'I'])
                        || reply.first() == Some(&b'E')
                    {
                        break;
                    }
                }
            })
            .await;
            reply
        }
    };
    let served = connect(Some(b"postgresql")).await;
    assert_eq!(
        served.first(),
        Some(&b'R'),
        "authentication first: {served:?}"
    );
    assert!(served.windows(6).any(|w| w == [b'Z', 0, 0, 0, 5, b'I']));
    let refused = connect(None).await;
    assert_eq!(refused.first(), Some(&b'E'));
    let text = String::from_utf8_lossy(&refused);
    assert!(text.contains("08P01") && text.contains("ALPN"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_server_name_names_the_tenant() {
    let sni = "sni_suffix = \".db.example.com\"\n";
    let (env, _, ca_path) =
        tls_env_with("require", sni, "[proxy]\ntenant_from = [\"sni\"]\n").await;
    for (tenant, expected) in [("acme", ACME_ITEMS), ("globex", GLOBEX_ITEMS)] {
        let info = format!(
            "host={tenant}.db.example.com hostaddr=127.0.0.1 port={} user=app dbname=whatever sslmode=verify-full sslrootcert={}",
            env.addr().port(),
            ca_path.display()
        );
        let got = psql(
            &info,
            "SELECT string_agg(name, ',' ORDER BY id) FROM items",
            None,
        )
        .await;
        assert_eq!(got.unwrap(), expected.join(","), "{tenant}");
    }
    let info = format!(
        "host=nope.db.example.com hostaddr=127.0.0.1 port={} user=app dbname=acme sslmode=verify-full sslrootcert={}",
        env.addr().port(),
        ca_path.display()
    );
    let err = psql(&info, "SELECT 1", None).await.unwrap_err();
    assert!(err.contains("tenant \"nope\" does not exist"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_name_the_tenant_and_never_reach_the_server() {
    let env = EnvBuilder::erp()
        .settings("[proxy]\ntenant_from = [\"options\", \"database\"]\n")
        .start()
        .await;
    let info = conninfo(
        &env,
        "dbname=postgres options='--tenant=globex -c work_mem=3MB'",
    );
    let got = psql(
        &info,
        "SELECT count(*) || ',' || current_setting('work_mem') FROM items",
        None,
    )
    .await;
    assert_eq!(got.unwrap(), "3,3MB");
    let info = conninfo(&env, "dbname=postgres options='-c pgtenant.tenant=acme'");
    let got = psql(&info, "SELECT count(*) || ',' || coalesce(current_setting('pgtenant.tenant', true), 'unset') FROM items", None).await;
    assert_eq!(
        got.unwrap(),
        "2,unset",
        "the tenant option reached the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_sighup_under_live_connections() {
    let (env, first_ca, _) = tls_env("require", "").await;
    let dir = env.server().app().settings.tls.cert.clone().unwrap();
    let dir = dir.parent().unwrap().to_path_buf();
    let mut live = Vec::new();
    for _ in 0..3 {
        live.push(
            connect_tls(&env.config("app", Some("acme")), &first_ca.pem())
                .await
                .unwrap(),
        );
    }

    let second_ca = TestCa::new("the next CA");
    second_ca.write(&dir, "server", &["127.0.0.1"]);
    // SAFETY: signalling our own process; the proxy handles SIGHUP.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);

    let reloaded = eventually(std::time::Duration::from_secs(10), || async {
        connect_tls(&env.config("app", Some("acme")), &second_ca.pem())
            .await
            .ok()
    })
    .await
    .expect("new connections get the new certificate");
    assert_eq!(items(&reloaded).await, ACME_ITEMS);
    assert!(
        connect_tls(&env.config("app", Some("acme")), &first_ca.pem())
            .await
            .is_err()
    );
    for client in &live {
        assert_eq!(
            items(client).await,
            ACME_ITEMS,
            "a live connection survived the reload"
        );
    }
}

/// The server accepts `app` only over TLS, with a certificate for `db.internal` from
/// a CA made here; each `hosts.*.tls` mode is held to what it promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_reaches_servers_over_verified_tls() {
    let opts = pgtenant::cluster::ClusterOptions {
        hba: vec![
            "hostssl all app 127.0.0.1/32 trust".into(),
            "host all app 127.0.0.1/32 reject".into(),
        ],
        settings: vec![],
    };
    let ca = TestCa::new("server CA");
    let wrong = TestCa::new("not the server's CA");
    let env = EnvBuilder::erp_with(opts).start().await;
    // The server's certificate goes into its data directory, owned by its user.
    let data_dir = env.host(ERP_HOST).data_dir().to_path_buf();
    let (_, cert, key) = ca.write(&data_dir, "server", &["db.internal"]);
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&data_dir).unwrap();
    for path in [&cert, &key] {
        std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid())).unwrap();
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }
    let admin = env.direct(ERP_HOST, "postgres").await;
    admin
        .batch_execute("ALTER SYSTEM SET ssl = on")
        .await
        .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let ca_file = env.dir.path().join("server-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let wrong_file = env.dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong_file, wrong.pem()).unwrap();

    let env = &env;
    let host_lines = |lines: String| {
        env.write_registry(&ERP_REGISTRY.replace(
            "max_connections = 50",
            &format!("max_connections = 50\n{lines}"),
        ))
    };
    let ca_line =
        |path: &std::path::Path| format!("tls_ca_file = {:?}", path.display().to_string());
    let served_over_tls = || async {
        eventually(std::time::Duration::from_secs(10), || async {
            let client = env.try_connect("app", "acme").await.ok()?;
            let ssl: bool = client
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            ssl.then_some(client)
        })
        .await
    };
    let refused_with = |needle: &'static str| async move {
        eventually(std::time::Duration::from_secs(10), || async {
            let e = env.try_connect("app", "acme").await.err()?;
            describe(&e).contains(needle).then_some(e)
        })
        .await
    };

    // verify-full against the name the certificate holds.
    let named = format!(
        "tls = \"verify-full\"\n{}\ntls_server_name = \"db.internal\"",
        ca_line(&ca_file)
    );
    host_lines(named);
    let client = served_over_tls().await.expect("served with verify-full");
    assert_eq!(items(&client).await, ACME_ITEMS);
    drop(client);

    // verify-full against the address (127.0.0.1), which the certificate does not
    // name: refused. verify-ca does not check the name: served.
    host_lines(format!("tls = \"verify-full\"\n{}", ca_line(&ca_file)));
    let refused = refused_with("TLS")
        .await
        .expect("verify-full checks the name");
    assert_eq!(refused.as_db_error().unwrap().code().code(), "08001");
    host_lines(format!("tls = \"verify-ca\"\n{}", ca_line(&ca_file)));
    assert!(
        served_over_tls().await.is_some(),
        "verify-ca checks the chain only"
    );

    // A certificate from an unknown CA: refused by verify-ca, accepted by require.
    host_lines(format!("tls = \"verify-ca\"\n{}", ca_line(&wrong_file)));
    let refused = refused_with("TLS").await.expect("an unknown CA is refused");
    assert_eq!(refused.as_db_error().unwrap().code().code(), "08001");
    host_lines("tls = \"require\"".into());
    assert!(
        served_over_tls().await.is_some(),
        "require encrypts without checking"
    );

    // Without TLS the server refuses the role.
    host_lines("tls = \"disable\"".into());
    let refused = refused_with("pg_hba.conf").await;
    assert!(refused.is_some(), "a plain connection reached the server");
}

/// TLS clients reach the relay through a socket pair: in transaction mode they park
/// like plain ones and are served again on their next query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_park_and_come_back() {
    let extra = "[proxy]\npool_mode = \"transaction\"\npark_after = \"100ms\"\n";
    let (env, ca, _) = tls_env("require", extra).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = connect_tls(&env.config("app", Some("acme")), &ca.pem())
            .await
            .unwrap();
        assert_eq!(items(&client).await, ACME_ITEMS);
        clients.push(client);
    }
    let lot = env.server().app().parking.clone();
    eventually(std::time::Duration::from_secs(10), || async {
        (lot.len() == 3).then_some(())
    })
    .await
    .expect("the TLS clients parked");
    for client in &clients {
        assert_eq!(items(client).await, ACME_ITEMS);
    }
}
