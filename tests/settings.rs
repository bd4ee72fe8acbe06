//! Transaction mode: a client's session settings follow it from server to server
//! however it changes them (simple query, unnamed or named extended-protocol
//! statement, inside a committed block), never when the change was undone, and never
//! reach another client. Two clients share one server connection, so any leak shows.

mod common;

use common::*;

/// One host with database `erp` in transaction mode on `pool_size` server connections.
fn txn_env(pool_size: usize) -> EnvBuilder {
    EnvBuilder::erp().settings(&format!(
        "[proxy]\npool_mode = \"transaction\"\n[pool]\npool_size = {pool_size}\n"
    ))
}

fn cstr(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

/// Parse/Bind/Execute of `sql` as the unnamed statement and portal, the way pgjdbc
/// sends its setup queries, without the Sync.
fn unnamed_extended(sql: &str) -> Vec<u8> {
    let mut parse = cstr("");
    parse.extend(cstr(sql));
    parse.extend(0u16.to_be_bytes());
    let mut bind = cstr("");
    bind.extend(cstr(""));
    bind.extend([0u8; 6]); // no formats, no parameters, no result formats
    let mut execute = cstr("");
    execute.extend(0u32.to_be_bytes());
    [
        message(b'P', &parse),
        message(b'B', &bind),
        message(b'E', &execute),
    ]
    .concat()
}

fn sync() -> Vec<u8> {
    message(b'S', &[])
}

/// Runs `bytes` (ending in Sync or a simple query) and returns the replies; panics
/// on an ErrorResponse unless `may_fail`.
async fn run(raw: &mut Raw, bytes: &[u8], may_fail: bool) -> Vec<Msg> {
    raw.send(bytes).await;
    let replies = raw.read_until_ready().await;
    if !may_fail {
        if let Some(e) = replies.iter().find(|m| m.tag == b'E') {
            panic!("{:?}", e.error());
        }
    }
    replies
}

async fn show(raw: &mut Raw, name: &str) -> String {
    let replies = run(raw, &query_message(&format!("SHOW {name}")), false).await;
    let row = replies.iter().find(|m| m.tag == b'D').expect("a row");
    row.data_row()[0].clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_changed_by_any_protocol_follow_the_client_and_only_it() {
    let env = txn_env(1).start().await;
    let mut client = Raw::acme(env.addr()).await;
    let mut other = Raw::acme(env.addr()).await;

    // The unnamed statement, as pgjdbc sends `SET extra_float_digits = 3`.
    let set = [unnamed_extended("SET extra_float_digits = 3"), sync()].concat();
    run(&mut client, &set, false).await;
    // A named statement (tokio-postgres prepares every statement).
    let named = env.connect("app", "acme").await;
    named.execute("SET work_mem = '9MB'", &[]).await.unwrap();
    // Inside a block that commits.
    run(&mut client, &query_message("BEGIN"), false).await;
    run(
        &mut client,
        &query_message("SET statement_timeout = '7s'"),
        false,
    )
    .await;
    run(&mut client, &query_message("COMMIT"), false).await;
    // Inside a block that rolls back: undone by the server, so not followed.
    run(&mut client, &query_message("BEGIN"), false).await;
    run(
        &mut client,
        &query_message("SET lock_timeout = '5s'"),
        false,
    )
    .await;
    run(&mut client, &query_message("ROLLBACK"), false).await;
    // In a pipeline that fails after it: the implicit transaction is undone.
    let failing = [
        unnamed_extended("SET idle_in_transaction_session_timeout = '6s'"),
        unnamed_extended("SELECT 1/0"),
        sync(),
    ]
    .concat();
    run(&mut client, &failing, true).await;

    // The one server connection goes back and forth; each client keeps its own.
    for _ in 0..3 {
        assert_eq!(show(&mut other, "extra_float_digits").await, "1");
        assert_eq!(show(&mut other, "statement_timeout").await, "0");
        assert_eq!(show(&mut other, "work_mem").await, "4MB");
        assert_eq!(show(&mut client, "extra_float_digits").await, "3");
        assert_eq!(show(&mut client, "statement_timeout").await, "7s");
        assert_eq!(show(&mut client, "lock_timeout").await, "0");
        assert_eq!(
            show(&mut client, "idle_in_transaction_session_timeout").await,
            "0"
        );
        assert_eq!(value(&named, "SHOW work_mem").await, "9MB");
        assert_eq!(value(&named, "SHOW extra_float_digits").await, "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_role_or_a_set_among_statements_pins_the_client() {
    let env = txn_env(2)
        .seed("erp", "CREATE ROLE reader; GRANT reader TO app;")
        .start()
        .await;
    let role = env.connect("app", "acme").await;
    role.batch_execute("SET ROLE reader").await.unwrap();
    let batch = env.connect("app", "acme").await;
    batch
        .batch_execute("SET work_mem = '9MB'; SELECT 1")
        .await
        .unwrap();
    // Each holds one of the two servers; a third client would wait. Both keep what
    // they set, on the same server every time.
    let role_pid = value(&role, "SELECT pg_backend_pid()::text").await;
    let batch_pid = value(&batch, "SELECT pg_backend_pid()::text").await;
    for _ in 0..3 {
        assert_eq!(value(&role, "SELECT current_user::text").await, "reader");
        assert_eq!(
            value(&role, "SELECT pg_backend_pid()::text").await,
            role_pid
        );
        assert_eq!(value(&batch, "SHOW work_mem").await, "9MB");
        assert_eq!(
            value(&batch, "SELECT pg_backend_pid()::text").await,
            batch_pid
        );
    }
    // When they leave, their servers are reset before anyone else gets them.
    drop(role);
    drop(batch);
    let next = env.connect("app", "acme").await;
    for _ in 0..4 {
        assert_ne!(value(&next, "SELECT current_user::text").await, "reader");
        assert_eq!(value(&next, "SHOW work_mem").await, "4MB");
    }
}

/// ParameterStatus values of a startup as a raw client sees them.
async fn greeting(env: &Env, params: &[(&str, &str)]) -> (Raw, Vec<(String, String)>) {
    let mut all = vec![("user", "app"), ("database", "acme")];
    all.extend_from_slice(params);
    let (raw, replies) = Raw::login(env.addr(), &all).await;
    let reported = replies
        .iter()
        .filter(|m| m.tag == b'S')
        .map(|m| {
            let mut parts = m.body.split(|&b| b == 0);
            let name = String::from_utf8_lossy(parts.next().unwrap()).into_owned();
            let value = String::from_utf8_lossy(parts.next().unwrap()).into_owned();
            (name, value)
        })
        .collect();
    (raw, reported)
}

fn reported<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_greets_without_a_server_once_the_pool_knows_one() {
    let env = EnvBuilder::erp()
        .settings(
            "[proxy]\npool_mode = \"transaction\"\n[pool]\npool_size = 1\ncheckout_timeout = \"1s\"\n",
        )
        .start()
        .await;
    // The first client opens the pool's only connection and holds it in a block.
    let holder = env.connect("app", "acme").await;
    holder.batch_execute("BEGIN").await.unwrap();
    // Others connect although no server is free: the pool knows what to tell them.
    let (mut quick, params) = greeting(&env, &[("application_name", "quick")]).await;
    assert_eq!(reported(&params, "application_name"), Some("quick"));
    assert!(reported(&params, "server_version").is_some(), "{params:?}");
    assert_eq!(reported(&params, "DateStyle"), Some("ISO, MDY"));
    // Another tenant in the same database as the same role is greeted the same way,
    // without opening a server connection of its own.
    let (mut other, replies) =
        Raw::login(env.addr(), &[("user", "app"), ("database", "globex")]).await;
    assert!(replies.iter().any(|m| m.tag == b'S'), "{replies:?}");
    assert_eq!(env.backends("pg-a", "erp").await, 1);
    let items = run(
        &mut other,
        &query_message("SELECT count(*) FROM items"),
        false,
    )
    .await;
    assert!(items.iter().any(|m| m.tag == b'D'), "{items:?}");
    // A setting the server would spell differently needs a server to ask: this one
    // waits for the pool and gives up after checkout_timeout.
    let mut raw = Raw::connect(env.addr()).await;
    raw.send(&startup_packet(
        PROTOCOL_3_0,
        &[("user", "app"), ("database", "acme"), ("DateStyle", "ISO")],
    ))
    .await;
    let refused = raw.expect_fatal().await;
    assert_eq!(refused.code, "53300", "{refused:?}");

    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(show(&mut quick, "application_name").await, "quick");
    let (_, params) = greeting(&env, &[("DateStyle", "ISO")]).await;
    assert_eq!(reported(&params, "DateStyle"), Some("ISO, MDY"));
}
