//! Core behaviour of the proxy against real PostgreSQL clusters: tenant routing,
//! search_path, startup handling, errors, large results, COPY, registry reload,
//! backend authentication and asynchronous messages.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, TryStreamExt};
use pgtenant::cluster::ClusterOptions;
use tokio_postgres::error::SqlState;
use tokio_postgres::AsyncMessage;

/// The server pid behind a session (queries go through to the server).
async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    value(client, "SELECT pg_backend_pid()")
        .await
        .parse()
        .unwrap()
}

/// Expects `result` to be a refusal with `code`; returns its message.
fn refused<T>(result: Result<T, tokio_postgres::Error>, code: &SqlState) -> String {
    let err = match result {
        Ok(_) => panic!(
            "expected an error with SQLSTATE {}, got a session",
            code.code()
        ),
        Err(e) => e,
    };
    assert_eq!(err.code(), Some(code), "{}", describe(&err));
    err.as_db_error().unwrap().message().to_string()
}

// a. ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_per_tenant_routes_each_tenant_to_its_schema() {
    let env = EnvBuilder::erp().start().await;

    let acme = env.connect("app", "acme").await;
    let globex = env.connect("app", "globex").await;
    assert_eq!(items(&acme).await, ACME_ITEMS);
    assert_eq!(items(&globex).await, GLOBEX_ITEMS);
    // Both share one database; only the schema differs.
    assert_eq!(value(&acme, "SELECT current_database()").await, "erp");
    assert_eq!(value(&globex, "SELECT current_database()").await, "erp");
    assert_eq!(value(&acme, "SELECT current_schema()").await, "tenant_acme");
    assert_eq!(
        value(&globex, "SELECT current_schema()").await,
        "tenant_globex"
    );
    // Extended protocol (Parse/Bind/Execute) sees the same.
    let row = globex
        .query_one("SELECT name FROM items WHERE id = $1", &[&3i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "globex coupon");
    let n: i64 = acme
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);

    // psql (libpq, with its SSLRequest first) through the proxy.
    let sql = "SELECT string_agg(name, ',' ORDER BY id) FROM items";
    for (tenant, expected) in [("acme", ACME_ITEMS), ("globex", GLOBEX_ITEMS)] {
        let out = env
            .psql(&["-A", "-t", "-U", "app", "-d", tenant, "-c", sql])
            .await;
        assert!(
            out.status.success(),
            "psql for {tenant} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            expected.join(",")
        );
    }
}

// b. ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_path_survives_resets_and_session_handover() {
    // One server connection for the tenant, so the second client gets the first's.
    let env = EnvBuilder::erp()
        .settings("[pool]\npool_size = 1")
        .start()
        .await;

    let client = env.connect("app", "acme").await;
    assert_eq!(value(&client, "SHOW search_path").await, "tenant_acme");
    for reset in [
        "RESET ALL",
        "DISCARD ALL",
        "RESET search_path",
        "SET search_path = public; RESET search_path",
        "SET search_path = public; RESET ALL",
    ] {
        client.batch_execute(reset).await.unwrap();
        assert_eq!(
            value(&client, "SHOW search_path").await,
            "tenant_acme",
            "after {reset}"
        );
        assert_eq!(items(&client).await, ACME_ITEMS, "after {reset}");
    }

    // A client changes its search_path and leaves ...
    client
        .batch_execute("SET search_path = public")
        .await
        .unwrap();
    assert_eq!(items(&client).await, ["public decoy"]);
    let first_pid = backend_pid(&client).await;
    drop(client);

    // ... the next client on the same server connection gets the tenant's again.
    let next = env.connect("app", "acme").await;
    assert_eq!(
        backend_pid(&next).await,
        first_pid,
        "pool_size 1: the server connection should have been reused"
    );
    assert_eq!(value(&next, "SHOW search_path").await, "tenant_acme");
    assert_eq!(items(&next).await, ACME_ITEMS);
}

// c. ------------------------------------------------------------------------------

const HOST_B_ROLES: &str = "
CREATE ROLE app LOGIN;
CREATE DATABASE initech OWNER app;
CREATE DATABASE hooli OWNER app;
";
const HOST_B_TENANT_DB: &str = "
SET ROLE app;
CREATE TABLE items (id int PRIMARY KEY, name text);
INSERT INTO items SELECT 1, current_database() || ' stapler';
";
const ODD_SCHEMA: &str = r#"
SET ROLE app;
CREATE SCHEMA "Odd ""Name""";
CREATE TABLE "Odd ""Name""".items (id int PRIMARY KEY, name text);
INSERT INTO "Odd ""Name""".items VALUES (1, 'odd row');
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_per_tenant_through_the_template_entry() {
    let env = EnvBuilder::new()
        .host("pg-b")
        .seed("postgres", HOST_B_ROLES)
        .seed("initech", HOST_B_TENANT_DB)
        .seed("hooli", HOST_B_TENANT_DB)
        .seed("initech", ODD_SCHEMA)
        .registry(
            r#"
            [hosts.pg-b]
            address = "${pg-b}"

            [tenants.odd]
            host = "pg-b"
            database = "initech"
            search_path = ['Odd "Name"']
            backend_user = "app"

            [tenants."*"]
            host = "pg-b"
            database = "{tenant}"
            backend_user = "app"
            "#,
        )
        .start()
        .await;

    for tenant in ["initech", "hooli"] {
        let client = env.connect("app", tenant).await;
        assert_eq!(value(&client, "SELECT current_database()").await, tenant);
        assert_eq!(items(&client).await, [format!("{tenant} stapler")]);
    }

    // A schema name that needs quoting (space and double quote) in search_path.
    let odd = env.connect("app", "odd").await;
    assert_eq!(value(&odd, "SELECT current_database()").await, "initech");
    assert_eq!(value(&odd, "SELECT current_schema()").await, "Odd \"Name\"");
    assert_eq!(value(&odd, "SHOW search_path").await, r#""Odd ""Name""""#);
    assert_eq!(items(&odd).await, ["odd row"]);

    // A template tenant whose database does not exist: the server's own refusal.
    let msg = refused(
        env.try_connect("app", "nosuchdb").await,
        &SqlState::INVALID_CATALOG_NAME,
    );
    assert!(msg.contains("nosuchdb"), "{msg}");
}

// d. ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_from_user_suffix_and_user() {
    let env = EnvBuilder::erp().start().await;

    // `app.acme` without a database in the startup packet.
    let client = connect(&env.config("app.acme", None)).await.unwrap();
    assert_eq!(items(&client).await, ACME_ITEMS);
    assert_eq!(value(&client, "SELECT current_user").await, "app");

    // `app@acme` in a URL (%40), with a database that is not a tenant.
    let url = env.url("app@acme", "postgres");
    assert!(url.contains("app%40acme@"), "{url}");
    let client = connect(&url.parse().unwrap()).await.unwrap();
    assert_eq!(items(&client).await, ACME_ITEMS);

    // `app.globex` with a non-tenant database lands in globex.
    let client = env.connect("app.globex", "postgres").await;
    assert_eq!(items(&client).await, GLOBEX_ITEMS);

    // tenant_from = ["user"]: the user name is the tenant, the database is ignored.
    let by_user = env.start_server("[proxy]\ntenant_from = [\"user\"]").await;
    let addr = by_user.local_addr();
    let client = connect(&config_for(addr, "globex", Some("acme")))
        .await
        .unwrap();
    assert_eq!(items(&client).await, GLOBEX_ITEMS);
    assert_eq!(value(&client, "SELECT current_user").await, "app");
    let client = connect(&config_for(addr, "acme", None)).await.unwrap();
    assert_eq!(items(&client).await, ACME_ITEMS);
    let msg = refused(
        connect(&config_for(addr, "app", Some("acme"))).await,
        &SqlState::INVALID_CATALOG_NAME,
    );
    assert!(msg.contains("\"app\""), "{msg}");
}

// e. ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tenant_is_refused_with_3d000() {
    // No server is needed to refuse an unknown tenant.
    let env = EnvBuilder::new()
        .registry(&format!(
            r#"
            [hosts.pg-x]
            address = "{}"
            [tenants.acme]
            host = "pg-x"
            database = "erp"
            "#,
            closed_port_address()
        ))
        .start()
        .await;

    let msg = refused(
        env.try_connect("app", "nosuch").await,
        &SqlState::INVALID_CATALOG_NAME,
    );
    assert!(msg.contains("nosuch"), "{msg}");

    let msg = refused(
        connect(&env.config("app.nowhere", None)).await,
        &SqlState::INVALID_CATALOG_NAME,
    );
    assert!(msg.contains("nowhere"), "{msg}");
}

// f. ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_hosts_are_reported_quickly_with_08001() {
    let mut env = EnvBuilder::erp()
        .registry_extra(&format!(
            r#"
            [hosts.pg-gone]
            address = "{}"
            [tenants.ghost]
            host = "pg-gone"
            database = "erp"
            backend_user = "app"
            "#,
            closed_port_address()
        ))
        .start()
        .await;

    // A host where nothing listens.
    let started = Instant::now();
    let msg = refused(
        env.try_connect("app", "ghost").await,
        &SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(msg.contains("ghost") && msg.contains("pg-gone"), "{msg}");

    // A host that was up (an idle pooled connection left behind) and crashed.
    let live = env.connect("app", "acme").await;
    drop(env.connect("app", "acme").await);
    assert_eq!(items(&live).await, ACME_ITEMS);
    env.kill_host(ERP_HOST);

    // The session that was open ends with an error instead of hanging.
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(5), live.simple_query("SELECT 1")).await;
    assert!(
        matches!(result, Ok(Err(_))),
        "open session after the host crashed: {result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let started = Instant::now();
    let msg = refused(
        env.try_connect("app", "acme").await,
        &SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(msg.contains("acme") && msg.contains(ERP_HOST), "{msg}");
}

// g. ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_startup_packets_are_refused_and_others_keep_working() {
    let env = EnvBuilder::erp()
        .settings("[proxy]\nstartup_timeout = \"500ms\"")
        .start()
        .await;

    // A normal client keeps querying throughout.
    let normal = Arc::new(env.connect("app", "acme").await);
    assert_eq!(items(&normal).await, ACME_ITEMS);
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let background = {
        let (normal, stop, rounds) = (normal.clone(), stop.clone(), rounds.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(items(&normal).await, ACME_ITEMS);
                rounds.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let user_db: &[(&str, &str)] = &[("user", "app"), ("database", "acme")];
    // (name, packet, a word the refusal must mention: it is about this packet and
    // not the startup timeout, which also answers 08P01)
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("length 4", vec![0, 0, 0, 4], "4"),
        (
            "length 20000",
            {
                let mut p = 20_000u32.to_be_bytes().to_vec();
                p.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
                p
            },
            "20000",
        ),
        ("protocol 2.0", startup_packet(2 << 16, user_db), "2.0"),
        ("unknown code", packet((1234 << 16) | 9999, &[]), "1234"),
        (
            "missing terminator",
            packet(PROTOCOL_3_0, b"user\0app"),
            "startup packet",
        ),
    ];
    for (name, bytes, mentions) in &cases {
        let mut raw = Raw::connect(env.addr()).await;
        raw.send(bytes).await;
        let err = raw.expect_fatal().await;
        assert_eq!(err.code, "08P01", "{name}: {err:?}");
        assert_eq!(err.severity, "FATAL", "{name}: {err:?}");
        assert!(err.message.contains(mentions), "{name}: {err:?}");
    }

    // Clients that stall during startup are closed after startup_timeout (500ms):
    // one that sends nothing, one that sends half a startup packet.
    let addr = env.addr();
    let stalled = |partial: Vec<u8>| async move {
        let mut raw = Raw::connect(addr).await;
        raw.timeout = Duration::from_secs(5);
        raw.send(&partial).await;
        let started = Instant::now();
        let messages = raw.read_to_end().await;
        (started.elapsed(), messages)
    };
    let mut half = 100u32.to_be_bytes().to_vec();
    half.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    let (silent, partial) = tokio::join!(stalled(Vec::new()), stalled(half));
    for (name, (elapsed, messages)) in [("silent", silent), ("partial", partial)] {
        assert!(
            elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(2),
            "{name} client closed after {elapsed:?}"
        );
        let codes: Vec<_> = messages.iter().map(|m| m.error().code).collect();
        assert_eq!(codes, ["08P01"], "{name} client got {messages:?}");
    }

    stop.store(true, Ordering::Relaxed);
    background
        .await
        .expect("the normal client failed meanwhile");
    assert!(rounds.load(Ordering::Relaxed) > 0);
    assert_eq!(items(&normal).await, ACME_ITEMS);
    let fresh = env.connect("app", "globex").await;
    assert_eq!(items(&fresh).await, GLOBEX_ITEMS);
}

// h. ------------------------------------------------------------------------------

/// Runs `SHOW search_path` on a raw session that is ready for a query.
async fn raw_search_path(raw: &mut Raw) -> String {
    raw.send(&query_message("SHOW search_path")).await;
    let messages = raw.read_until_ready().await;
    let row = messages
        .iter()
        .find(|m| m.tag == b'D')
        .unwrap_or_else(|| panic!("no DataRow in {messages:?}"));
    row.data_row()[0].clone().unwrap()
}

/// Checks a startup answer: AuthenticationOk, parameters, BackendKeyData, ReadyForQuery.
fn assert_session_started(messages: &[Msg]) {
    let tags: Vec<char> = messages.iter().map(|m| m.tag as char).collect();
    assert_eq!(messages[0].tag, b'R', "{tags:?}");
    assert_eq!(messages[0].body, [0, 0, 0, 0], "AuthenticationOk");
    assert!(tags.contains(&'S'), "no ParameterStatus: {tags:?}");
    let key = messages
        .iter()
        .find(|m| m.tag == b'K')
        .expect("BackendKeyData");
    assert_eq!(key.body.len(), 8);
    let last = messages.last().unwrap();
    assert_eq!((last.tag, last.body.as_slice()), (b'Z', &b"I"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encryption_requests_and_protocol_negotiation() {
    let env = EnvBuilder::erp().start().await;
    let startup = startup_packet(PROTOCOL_3_0, &[("user", "app"), ("database", "acme")]);

    // SSLRequest, GSSENCRequest, and both in a row (libpq tries GSS, then SSL).
    for requests in [
        vec![SSL_REQUEST_CODE],
        vec![GSSENC_REQUEST_CODE],
        vec![GSSENC_REQUEST_CODE, SSL_REQUEST_CODE],
    ] {
        let mut raw = Raw::connect(env.addr()).await;
        for code in &requests {
            raw.send(&packet(*code, &[])).await;
            assert_eq!(raw.read_byte().await, Some(b'N'), "answer to {code}");
        }
        raw.send(&startup).await;
        assert_session_started(&raw.read_until_ready().await);
        assert_eq!(raw_search_path(&mut raw).await, "tenant_acme");
        raw.send(&message(b'X', &[])).await;
    }

    // Protocol 3.2 with an unknown _pq_ option: NegotiateProtocolVersion, then a session.
    let mut raw = Raw::connect(env.addr()).await;
    raw.send(&startup_packet(
        (3 << 16) | 2,
        &[
            ("user", "app"),
            ("database", "globex"),
            ("_pq_.test_option", "1"),
        ],
    ))
    .await;
    let negotiate = raw.read_message().await.expect("an answer");
    assert_eq!(
        negotiate.tag, b'v',
        "expected NegotiateProtocolVersion: {negotiate:?}"
    );
    let b = &negotiate.body;
    assert_eq!(
        i32::from_be_bytes(b[0..4].try_into().unwrap()),
        0,
        "newest minor"
    );
    assert_eq!(
        i32::from_be_bytes(b[4..8].try_into().unwrap()),
        1,
        "unrecognised options"
    );
    assert_eq!(&b[8..], b"_pq_.test_option\0");
    assert_session_started(&raw.read_until_ready().await);
    assert_eq!(raw_search_path(&mut raw).await, "tenant_globex");
    raw.send(&query_message("SELECT name FROM items ORDER BY id"))
        .await;
    let rows: Vec<String> = raw
        .read_until_ready()
        .await
        .iter()
        .filter(|m| m.tag == b'D')
        .map(|m| m.data_row()[0].clone().unwrap())
        .collect();
    assert_eq!(rows, GLOBEX_ITEMS);
}

// i. ------------------------------------------------------------------------------

const INITECH_SCHEMA: &str = "
SET ROLE app;
CREATE SCHEMA tenant_initech;
CREATE TABLE tenant_initech.items (id int PRIMARY KEY, name text);
INSERT INTO tenant_initech.items VALUES (1, 'initech stapler'), (2, 'initech tps report'),
  (3, 'initech printer'), (4, 'initech flair');
";
const INITECH_ITEMS: &[&str] = &[
    "initech stapler",
    "initech tps report",
    "initech printer",
    "initech flair",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_sessions_over_three_tenants() {
    const SESSIONS: usize = 200;
    let opts = ClusterOptions {
        settings: vec![("max_connections".into(), "300".into())],
        ..Default::default()
    };
    let env = EnvBuilder::erp_with(opts)
        .seed("erp", INITECH_SCHEMA)
        .registry(&ERP_REGISTRY.replace("max_connections = 50", "max_connections = 250"))
        .registry_extra(
            r#"
            [tenants.initech]
            host = "pg-a"
            database = "erp"
            search_path = ["tenant_initech"]
            backend_user = "app"
            "#,
        )
        .settings("[pool]\npool_size = 80")
        .start()
        .await;

    let tenants: [(&str, &[&str]); 3] = [
        ("acme", ACME_ITEMS),
        ("globex", GLOBEX_ITEMS),
        ("initech", INITECH_ITEMS),
    ];
    // All sessions connect and query, meet at `connected`, and query again after `go`.
    let connected = Arc::new(tokio::sync::Barrier::new(SESSIONS + 1));
    let go = Arc::new(tokio::sync::Barrier::new(SESSIONS + 1));
    let mut tasks = Vec::new();
    for i in 0..SESSIONS {
        let (tenant, expected) = tenants[i % 3];
        let config = env.config("app", Some(tenant));
        let (connected, go) = (connected.clone(), go.clone());
        tasks.push(tokio::spawn(async move {
            let client = connect(&config)
                .await
                .unwrap_or_else(|e| panic!("session {i} ({tenant}): {}", describe(&e)));
            assert_eq!(items(&client).await, expected, "session {i} ({tenant})");
            let pid = backend_pid(&client).await;
            connected.wait().await;
            go.wait().await;
            assert_eq!(items(&client).await, expected, "session {i} ({tenant})");
            pid
        }));
    }
    if tokio::time::timeout(Duration::from_secs(60), connected.wait())
        .await
        .is_err()
    {
        for task in tasks.into_iter().filter(|t| t.is_finished()) {
            task.await.expect("a session failed");
        }
        panic!("not all {SESSIONS} sessions were connected within 60s");
    }
    // Session mode: every client holds its own server connection.
    assert_eq!(env.backends(ERP_HOST, "erp").await, SESSIONS as i64);
    go.wait().await;
    let mut pids = HashSet::new();
    for task in tasks {
        pids.insert(task.await.expect("a session failed"));
    }
    assert_eq!(
        pids.len(),
        SESSIONS,
        "server connections shared between sessions"
    );
}

// j. ------------------------------------------------------------------------------

const BIG_ROWS: i64 = 100_000;
const BIG_TABLES: &str = r#"
SET ROLE app;
CREATE TABLE tenant_acme.big AS
  SELECT g AS id,
         CASE WHEN g % 1000 = 0 THEN E'tab\there, newline\nand backslash\\ ' || g
              ELSE md5(g::text) || repeat('x', g % 97) END AS v
  FROM generate_series(1, 100000) g;
CREATE TABLE tenant_acme.sink (id int, v text);
"#;

/// FNV-1a over every row, in order.
fn checksum(rows: impl IntoIterator<Item = (i32, String)>) -> (usize, u64) {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut n = 0;
    for (id, v) in rows {
        n += 1;
        for b in id.to_le_bytes().iter().chain(v.as_bytes()).chain(&[0xff]) {
            hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    (n, hash)
}

async fn copy_out(client: &tokio_postgres::Client, sql: &str) -> Vec<u8> {
    let stream = client.copy_out(sql).await.unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    chunks.concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_and_copy_pass_intact() {
    let env = EnvBuilder::erp().seed("erp", BIG_TABLES).start().await;
    let acme = env.connect("app", "acme").await;
    let direct = env.direct(ERP_HOST, "erp").await;

    // A 100,000-row result, extended protocol.
    let rows =
        |rows: Vec<tokio_postgres::Row>| checksum(rows.into_iter().map(|r| (r.get(0), r.get(1))));
    let via_proxy = rows(
        acme.query("SELECT id, v FROM big ORDER BY id", &[])
            .await
            .unwrap(),
    );
    let expected = rows(
        direct
            .query("SELECT id, v FROM tenant_acme.big ORDER BY id", &[])
            .await
            .unwrap(),
    );
    assert_eq!(via_proxy.0, BIG_ROWS as usize);
    assert_eq!(via_proxy, expected);

    // The same through the simple protocol.
    let values = column(&acme, "SELECT v FROM big ORDER BY id").await;
    let direct_values = column(&direct, "SELECT v FROM tenant_acme.big ORDER BY id").await;
    assert_eq!(values.len(), BIG_ROWS as usize);
    assert!(values == direct_values, "simple-protocol rows differ");

    // COPY OUT.
    let out = copy_out(&acme, "COPY big TO STDOUT").await;
    let direct_out = copy_out(&direct, "COPY tenant_acme.big TO STDOUT").await;
    assert_eq!(
        out.iter().filter(|&&b| b == b'\n').count(),
        BIG_ROWS as usize
    );
    assert_eq!(out.len(), direct_out.len());
    assert!(out == direct_out, "COPY OUT bytes differ");

    // COPY IN of those bytes, in 64 KiB pieces.
    let sink = acme
        .copy_in::<_, Bytes>("COPY sink FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    for chunk in out.chunks(64 * 1024) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), BIG_ROWS as u64);

    // Count and checksum of what arrived, computed by the server itself.
    let summary = |table: &str| {
        format!(
            "SELECT count(*) || ' ' || sum(hashtext(id::text || ':' || v)::bigint) \
             FROM tenant_acme.{table}"
        )
    };
    let got = value(&direct, &summary("sink")).await;
    let want = value(&direct, &summary("big")).await;
    assert!(got.starts_with(&format!("{BIG_ROWS} ")), "{got}");
    assert_eq!(got, want);
    let missing: i64 = direct
        .query_one(
            "SELECT count(*) FROM (SELECT id, v FROM tenant_acme.big \
             EXCEPT SELECT id, v FROM tenant_acme.sink) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(missing, 0);
    // The session is still in step after all that.
    assert_eq!(items(&acme).await, ACME_ITEMS);
}

// k. ------------------------------------------------------------------------------

const NEWCO_SCHEMA: &str = "
SET ROLE app;
CREATE SCHEMA tenant_newco;
CREATE TABLE tenant_newco.items (id int PRIMARY KEY, name text);
INSERT INTO tenant_newco.items VALUES (1, 'newco widget');
";
const NEWCO_ON_PG_A: &str = r#"
[tenants.newco]
host = "pg-a"
database = "erp"
search_path = ["tenant_newco"]
backend_user = "app"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_reload_adds_tenants_and_keeps_the_last_good_snapshot() {
    let env = EnvBuilder::erp()
        .seed("erp", NEWCO_SCHEMA)
        .settings("[registry]\nwatch_interval = \"200ms\"")
        .start()
        .await;
    let acme = env.connect("app", "acme").await;
    refused(
        env.try_connect("app", "newco").await,
        &SqlState::INVALID_CATALOG_NAME,
    );

    // Added to the file: served within a few seconds, no restart.
    env.write_registry(&format!("{ERP_REGISTRY}\n{NEWCO_ON_PG_A}"));
    let started = Instant::now();
    let newco = eventually(Duration::from_secs(10), || async {
        env.try_connect("app", "newco").await.ok()
    })
    .await
    .expect("tenant newco was not served within 10s of being added");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(items(&newco).await, ["newco widget"]);

    // A file with a syntax error, then one naming an unknown host: both refused whole.
    // Neither lists newco correctly, so accepting either would lose it.
    let broken = ERP_REGISTRY.replace("[tenants.globex]", "[tenants.globex");
    let invalid = format!(
        "{ERP_REGISTRY}\n{}",
        NEWCO_ON_PG_A.replace("host = \"pg-a\"", "host = \"pg-nowhere\"")
    );
    for (name, text) in [("syntax error", broken), ("unknown host", invalid)] {
        env.write_registry(&text);
        tokio::time::sleep(Duration::from_millis(1000)).await; // five watch intervals
        assert_eq!(items(&acme).await, ACME_ITEMS, "open session after {name}");
        let client = env.connect("app", "acme").await;
        assert_eq!(items(&client).await, ACME_ITEMS, "acme after {name}");
        let client = env.connect("app", "newco").await;
        assert_eq!(items(&client).await, ["newco widget"], "newco after {name}");
    }

    // The watcher is still alive after the refusals: a good file removing newco wins.
    env.write_registry(ERP_REGISTRY);
    let gone = eventually(Duration::from_secs(10), || async {
        match env.try_connect("app", "newco").await {
            Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => Some(()),
            _ => None,
        }
    })
    .await;
    assert!(gone.is_some(), "tenant newco still served after removal");
    assert_eq!(
        items(&newco).await,
        ["newco widget"],
        "open newco session ended"
    );
}

// l. ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_startup_parameters_reach_the_server() {
    let env = EnvBuilder::erp()
        .settings("[pool]\npool_size = 1")
        .start()
        .await;
    let direct = env.direct(ERP_HOST, "erp").await;
    let default_tz = value(&direct, "SHOW TimeZone").await;
    assert_ne!(default_tz, "Asia/Tokyo");

    let mut config = env.config("app", Some("acme"));
    config
        .application_name("myapp")
        .options("-c statement_timeout=1234 -c TimeZone=Asia/Tokyo");
    let client = connect(&config).await.unwrap();
    let setting = |name: &'static str| {
        let client = &client;
        async move { value(client, &format!("SELECT current_setting('{name}')")).await }
    };
    assert_eq!(setting("application_name").await, "myapp");
    assert_eq!(setting("statement_timeout").await, "1234ms");
    assert_eq!(value(&client, "SHOW TimeZone").await, "Asia/Tokyo");
    // The client's options do not displace the tenant's search_path.
    assert_eq!(value(&client, "SHOW search_path").await, "tenant_acme");
    // And the server acts on them: a longer statement is cancelled.
    let started = Instant::now();
    let err = client.simple_query("SELECT pg_sleep(5)").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::QUERY_CANCELED),
        "{}",
        describe(&err)
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    // The application name shows in pg_stat_activity on the server.
    let pid = backend_pid(&client).await;
    let name: String = direct
        .query_one(
            "SELECT application_name FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "myapp");
    drop(client);

    // The next client on that server connection does not inherit them.
    let next = env.connect("app", "acme").await;
    assert_eq!(
        backend_pid(&next).await,
        pid,
        "pool_size 1: same server connection"
    );
    assert_eq!(
        value(&next, "SELECT current_setting('application_name')").await,
        ""
    );
    assert_eq!(
        value(&next, "SELECT current_setting('statement_timeout')").await,
        "0"
    );
    assert_eq!(value(&next, "SHOW TimeZone").await, default_tz);
}

// m. ------------------------------------------------------------------------------

const AUTH_ROLES: &str = "
CREATE ROLE scram_user LOGIN PASSWORD 'scram-secret';
SET password_encryption = 'md5';
CREATE ROLE md5_user LOGIN PASSWORD 'md5-secret';
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_scram_and_md5_authentication() {
    let opts = ClusterOptions {
        hba: vec![
            "host all scram_user 127.0.0.1/32 scram-sha-256".into(),
            "host all md5_user 127.0.0.1/32 md5".into(),
        ],
        ..Default::default()
    };
    let env = EnvBuilder::new()
        .host_with("pg-auth", opts)
        .seed("postgres", AUTH_ROLES)
        .registry(
            r#"
            [hosts.pg-auth]
            address = "${pg-auth}"

            [tenants.scramco]
            host = "pg-auth"
            database = "postgres"
            backend_user = "scram_user"
            backend_password = "scram-secret"

            [tenants.md5co]
            host = "pg-auth"
            database = "postgres"
            backend_user = "md5_user"
            backend_password = "md5-secret"

            [tenants.wrongpw]
            host = "pg-auth"
            database = "postgres"
            backend_user = "scram_user"
            backend_password = "not-the-password"
            "#,
        )
        .start()
        .await;

    // The setup really asks for these methods: stored verifiers, and no way in without.
    let direct = env.direct("pg-auth", "postgres").await;
    let kinds = column(
        &direct,
        "SELECT rolname || ':' || split_part(rolpassword, '$', 1) FROM pg_authid \
         WHERE rolname IN ('md5_user', 'scram_user') ORDER BY rolname",
    )
    .await;
    assert_eq!(kinds.len(), 2);
    assert!(kinds[0].starts_with("md5_user:md5"), "{kinds:?}");
    assert_eq!(kinds[1], "scram_user:SCRAM-SHA-256");
    let mut no_password = tokio_postgres::Config::new();
    no_password
        .host("127.0.0.1")
        .port(env.host("pg-auth").port())
        .user("scram_user")
        .dbname("postgres");
    assert!(connect(&no_password).await.is_err());

    for (tenant, role) in [("scramco", "scram_user"), ("md5co", "md5_user")] {
        let client = env.connect("someone", tenant).await;
        assert_eq!(value(&client, "SELECT current_user").await, role);
    }

    let msg = refused(
        env.try_connect("someone", "wrongpw").await,
        &SqlState::INVALID_PASSWORD,
    );
    assert!(msg.contains("wrongpw"), "{msg}");
    assert!(msg.contains("scram_user"), "{msg}");
}

// n. ------------------------------------------------------------------------------

async fn next_message(
    messages: &mut tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>,
) -> Option<AsyncMessage> {
    tokio::time::timeout(Duration::from_secs(5), messages.recv())
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_and_notifications_pass_through() {
    let env = EnvBuilder::erp().start().await;
    let (client, mut messages) = env.connect_with_messages("app", "acme").await;

    client
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello from %', current_schema(); END $$")
        .await
        .unwrap();
    match next_message(&mut messages).await {
        Some(AsyncMessage::Notice(notice)) => {
            assert_eq!(notice.message(), "hello from tenant_acme");
            assert_eq!(notice.severity(), "NOTICE");
        }
        other => panic!("expected a notice, got {other:?}"),
    }

    client.batch_execute("LISTEN x").await.unwrap();
    let other = env.connect("app", "acme").await;
    let notifier = backend_pid(&other).await;
    other.batch_execute("NOTIFY x, 'payload-1'").await.unwrap();
    // Delivered while the listener is idle, without it sending anything.
    match next_message(&mut messages).await {
        Some(AsyncMessage::Notification(n)) => {
            assert_eq!(n.channel(), "x");
            assert_eq!(n.payload(), "payload-1");
            assert_eq!(n.process_id(), notifier);
        }
        other => panic!("expected a notification, got {other:?}"),
    }
    // The session carries on.
    assert_eq!(items(&client).await, ACME_ITEMS);
}
