//! Transaction mode that no client can fool: whatever one client does to its session
//! (however it spells it), no other client of the tenant ever sees it, the client
//! itself keeps it from server to server, the proxy's record of the statements a
//! server holds follows the server, and no query takes the proxy down.
//!
//! Each test runs tenant acme on a pool of two server connections with several
//! clients, so servers change hands between clients all the time. A leak check runs
//! ten transactions from each of three other clients at once (both servers get used)
//! and compares what they see with the tenant's untouched state.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use tokio_postgres::Client;

fn txn_env() -> EnvBuilder {
    txn_env_with("")
}

/// `proxy` is TOML for the `[proxy]` table.
fn txn_env_with(proxy: &str) -> EnvBuilder {
    EnvBuilder::erp()
        .settings(&format!(
            "[proxy]\npool_mode = \"transaction\"\n{proxy}\n[pool]\npool_size = 2\n"
        ))
        .seed("erp", "CREATE ROLE r; GRANT r TO app;")
}

/// Adds tenants like acme (its schema, as `backend_user`), each with a pool of its
/// own, so one case's leak cannot spoil the next case's servers.
fn with_tenants(env: EnvBuilder, backend_user: &str, names: &[&str]) -> EnvBuilder {
    names.iter().fold(env, |env, name| {
        env.registry_extra(&format!(
            "[tenants.{name}]\nhost = \"pg-a\"\ndatabase = \"erp\"\nsearch_path = [\"tenant_acme\"]\nbackend_user = \"{backend_user}\"\n"
        ))
    })
}

/// What `SELECT items` shows a client of acme / globex, as one value.
const ITEMS: &str = "(SELECT string_agg(name, ',' ORDER BY id) FROM items)";

fn joined(items: &[&str]) -> String {
    items.join(",")
}

/// `SELECT pg_backend_pid(), EXPRS` as one implicit transaction: the server's pid and
/// the values, as text.
async fn probe(client: &Client, exprs: &str) -> Result<(String, Vec<String>), String> {
    let sql = format!("SELECT pg_backend_pid()::text, {exprs}");
    let messages = client
        .simple_query(&sql)
        .await
        .map_err(|e| format!("{sql}: {}", describe(&e)))?;
    let row = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .ok_or_else(|| format!("{sql}: no row"))?;
    let values: Vec<String> = (0..row.len())
        .map(|i| row.get(i).unwrap_or("NULL").to_string())
        .collect();
    Ok((values[0].clone(), values[1..].to_vec()))
}

/// Whether `got` matches `want`, where "*" matches anything.
fn matches(got: &[String], want: &[&str]) -> bool {
    got.len() == want.len() && got.iter().zip(want).all(|(g, w)| *w == "*" || g == w)
}

/// Three clients of a tenant that watch for leaks; the first also serves as the
/// holder that moves another client to the other server.
struct Others {
    clients: Vec<Client>,
}

impl Others {
    async fn connect(env: &Env, tenant: &str) -> Others {
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(env.connect("app", tenant).await);
        }
        Others { clients }
    }

    /// Ten transactions from each client at once; each must see `want`. Returns the
    /// problems and the server pids they ran on.
    async fn check(
        &self,
        exprs: &str,
        want: &[&str],
        when: &str,
    ) -> (Vec<String>, BTreeSet<String>) {
        let runs = self
            .clients
            .iter()
            .enumerate()
            .map(|(n, client)| async move {
                let mut seen = Vec::new();
                for _ in 0..10 {
                    seen.push(
                        probe(client, exprs)
                            .await
                            .map_err(|e| format!("other client {n}: {e}")),
                    );
                }
                seen
            });
        let mut problems = Vec::new();
        let mut pids = BTreeSet::new();
        for result in futures_util::future::join_all(runs)
            .await
            .into_iter()
            .flatten()
        {
            match result {
                Ok((pid, got)) if matches(&got, want) => {
                    pids.insert(pid);
                }
                Ok((pid, got)) => {
                    problems.push(format!(
                        "{when}: another client saw {got:?} on server {pid}, want {want:?}"
                    ));
                    pids.insert(pid);
                }
                Err(e) => problems.push(format!("{when}: {e}")),
            }
        }
        problems.dedup();
        (problems, pids)
    }

    /// Opens a transaction on the first client, taking a server (under the pool's
    /// last-in-first-out order, the one released last) so the next transaction of
    /// another client runs on the other server.
    async fn hold(&self) {
        self.clients[0]
            .batch_execute("BEGIN; SELECT 1")
            .await
            .expect("holder BEGIN");
    }

    async fn release(&self) {
        self.clients[0]
            .batch_execute("COMMIT")
            .await
            .expect("holder COMMIT");
    }
}

/// One client changes its session with `change`; then three others must keep seeing
/// `others_want` for `exprs` (right after, while the client moves between servers,
/// and after it left), and the client itself `own_want` in six later transactions,
/// every other one run while a holder keeps the server it used last.
async fn session_change(
    env: &Env,
    tenant: &str,
    change: &str,
    exprs: &str,
    own_want: &[&str],
    others_want: &[&str],
) -> Vec<String> {
    let others = Others::connect(env, tenant).await;
    let client = env.connect("app", tenant).await;
    let mut problems = Vec::new();
    if let Err(e) = client.simple_query(change).await {
        return vec![format!("{change}: {}", describe(&e))];
    }
    problems.extend(others.check(exprs, others_want, "after it").await.0);
    let mut own_pids = BTreeSet::new();
    for round in 0..6 {
        if round % 2 == 1 {
            others.hold().await;
        }
        match probe(&client, exprs).await {
            Ok((pid, got)) => {
                if !matches(&got, own_want) {
                    problems.push(format!("round {round}: the client itself saw {got:?} on server {pid}, want {own_want:?}"));
                }
                own_pids.insert(pid);
            }
            Err(e) => problems.push(format!("round {round}: the client itself: {e}")),
        }
        if round % 2 == 1 {
            others.release().await;
        }
    }
    problems.extend(others.check(exprs, others_want, "while it stays").await.0);
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    problems.extend(others.check(exprs, others_want, "after it left").await.0);
    problems
        .into_iter()
        .map(|p| format!("{change} (client on servers {own_pids:?}): {p}"))
        .collect()
}

fn assert_none(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_bytes_after_a_setting_name_get_an_error_not_a_crash() {
    let env = txn_env_with("max_client_conn = 5").start().await;
    let queries = ["SET statement_timeout = 'é'", "RESET é", "SET x éé"];
    let mut problems = Vec::new();
    // More clients than max_client_conn, one after the other: a client whose task
    // ends any way at all must give its place back.
    for n in 0..20 {
        let client = eventually(Duration::from_secs(5), || async {
            env.try_connect("app", "acme").await.ok()
        })
        .await;
        let Some(client) = client else {
            let refusal = env
                .try_connect("app", "acme")
                .await
                .err()
                .map(|e| describe(&e));
            problems.push(format!("client {n} could not connect for 5 s: {refusal:?}"));
            break;
        };
        for sql in queries {
            match client.simple_query(sql).await {
                Err(e) if e.as_db_error().is_some() => {}
                Err(e) => problems.push(format!("client {n}, {sql}: not an ErrorResponse: {e}")),
                Ok(_) => {}
            }
        }
        if let Err(e) = client.simple_query("SELECT 1").await {
            problems.push(format!("client {n}, afterwards: {}", describe(&e)));
        }
    }
    let last = eventually(Duration::from_secs(5), || async {
        env.try_connect("app", "acme").await.ok()
    })
    .await;
    match last {
        Some(client) => assert_eq!(items(&client).await, ACME_ITEMS),
        None => problems.push(format!(
            "a new client is refused: {:?}",
            env.try_connect("app", "acme")
                .await
                .err()
                .map(|e| describe(&e))
        )),
    }
    assert_none(problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_set_in_any_spelling_stays_with_its_client() {
    let tenants = ["t0", "t1", "t2", "t3"];
    let env = with_tenants(txn_env(), "app", &tenants).start().await;
    let mut problems = Vec::new();
    let changes = [
        "SET SESSION ROLE r",
        "SET \"role\" = 'r'",
        "set role r",
        "SET ROLE 'r'",
    ];
    for (change, tenant) in changes.into_iter().zip(tenants) {
        problems.extend(
            session_change(
                &env,
                tenant,
                change,
                "current_user::text, session_user::text",
                &["r", "app"],
                &["app", "app"],
            )
            .await,
        );
    }
    assert_none(problems);
}

/// SET SESSION AUTHORIZATION needs a superuser session, so this tenant's servers log
/// in as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_authorization_stays_with_its_client() {
    let env = txn_env().seed("postgres", "CREATE ROLE boss LOGIN SUPERUSER;");
    let tenants = ["boss0", "boss1"];
    let env = with_tenants(env, "boss", &tenants).start().await;
    let mut problems = Vec::new();
    let changes = [
        "SET SESSION AUTHORIZATION r",
        "SET session_authorization = 'r'",
    ];
    for (change, tenant) in changes.into_iter().zip(tenants) {
        problems.extend(
            session_change(
                &env,
                tenant,
                change,
                "current_user::text, session_user::text",
                &["r", "r"],
                &["boss", "boss"],
            )
            .await,
        );
    }
    assert_none(problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_characteristics_stay_with_their_client() {
    let env = txn_env().start().await;
    assert_none(
        session_change(
            &env,
            "acme",
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "current_setting('transaction_isolation')",
            &["serializable"],
            &["read committed"],
        )
        .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quoted_search_path_list_stays_with_its_client() {
    let env = txn_env().start().await;
    assert_none(
        session_change(
            &env,
            "acme",
            "SET search_path TO 'tenant_globex', 'public'",
            &format!("current_setting('search_path'), {ITEMS}"),
            &["*", &joined(GLOBEX_ITEMS)],
            &["tenant_acme", &joined(ACME_ITEMS)],
        )
        .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_written_with_comments_or_other_quotes_follow_their_client() {
    let tenants = ["t0", "t1", "t2", "t3"];
    let env = with_tenants(txn_env(), "app", &tenants).start().await;
    let mut problems = Vec::new();
    for ((change, shown), tenant) in [
        ("SET statement_timeout = 5000 -- five seconds", "5s"),
        ("SET statement_timeout = E'7s'", "7s"),
        ("SET statement_timeout = $$9s$$", "9s"),
        ("SET statement_timeout TO '3s' /* c */", "3s"),
    ]
    .into_iter()
    .zip(tenants)
    {
        problems.extend(
            session_change(
                &env,
                tenant,
                change,
                "current_setting('statement_timeout')",
                &[shown],
                &["0"],
            )
            .await,
        );
    }
    assert_none(problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_config_in_a_do_block_stays_with_its_client() {
    let env = txn_env().start().await;
    assert_none(
        session_change(
            &env,
            "acme",
            "DO $$ BEGIN PERFORM set_config('statement_timeout', '1234', false); END $$",
            "current_setting('statement_timeout')",
            &["1234ms"],
            &["0"],
        )
        .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_set_config_stays_with_its_client() {
    let env = txn_env().start().await;
    assert_none(
        session_change(
            &env,
            "acme",
            "SELECT set_config('statement_timeout', '4321', false)",
            "current_setting('statement_timeout')",
            &["4321ms"],
            &["0"],
        )
        .await,
    );
}

/// The server holding a session advisory lock is never one another client gets,
/// and the lock goes with the client's session when it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_advisory_lock_stays_with_its_client() {
    let env = txn_env().start().await;
    let direct = env.direct("pg-a", "erp").await;
    let holder_of_lock = || async {
        column(
            &direct,
            "SELECT pid::text FROM pg_locks WHERE locktype = 'advisory' AND objid = 1 AND granted",
        )
        .await
    };
    let others = Others::connect(&env, "acme").await;
    let client = env.connect("app", "acme").await;
    client
        .simple_query("SELECT pg_advisory_lock(1)")
        .await
        .unwrap();
    let locked_by = holder_of_lock().await;
    assert_eq!(locked_by.len(), 1, "the lock is held once: {locked_by:?}");
    let mut problems = Vec::new();
    let (p, mut pids) = others.check("1", &["1"], "after the lock").await;
    problems.extend(p);
    for round in 0..6 {
        if round % 2 == 1 {
            others.hold().await;
        }
        let (pid, _) = probe(&client, "1").await.unwrap();
        if pid != locked_by[0] {
            problems.push(format!(
                "round {round}: the client moved from server {} to {pid}",
                locked_by[0]
            ));
        }
        if round % 2 == 1 {
            others.release().await;
        }
    }
    let (p, more) = others.check("1", &["1"], "while it stays").await;
    problems.extend(p);
    pids.extend(more);
    if pids.contains(&locked_by[0]) {
        problems.push(format!(
            "other clients ran on {pids:?}, one of them the lock holder {}",
            locked_by[0]
        ));
    }
    drop(client);
    let released = eventually(Duration::from_secs(10), || async {
        holder_of_lock().await.is_empty().then_some(())
    })
    .await;
    if released.is_none() {
        problems.push(format!(
            "the lock is still held by {:?} after its client left",
            holder_of_lock().await
        ));
    }
    assert_none(problems);
}

// ---------------------------------------------------------------------------------
// Statement bookkeeping
// ---------------------------------------------------------------------------------

const PLUS_ONE: &str = "SELECT $1::int + 1";

/// Prepares `sql` on both clients, each inside a transaction while the other holds
/// its server, so both servers of the pool end up holding the statement.
async fn prepare_on_both_servers(a: &Client, b: &Client, sql: &str) -> Vec<String> {
    let mut problems = Vec::new();
    a.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    for (n, client) in [a, b].into_iter().enumerate() {
        let run = async {
            let statement = client.prepare(sql).await?;
            client.query_one(&statement, &[&41i32]).await
        };
        match run.await {
            Ok(row) if row.get::<_, i32>(0) == 42 => {}
            Ok(row) => problems.push(format!(
                "client {n} in a block got {}",
                row.get::<_, i32>(0)
            )),
            Err(e) => problems.push(format!("client {n} in a block: {}", describe(&e))),
        }
    }
    for client in [a, b] {
        if let Err(e) = client.batch_execute("COMMIT").await {
            problems.push(format!("COMMIT: {}", describe(&e)));
        }
    }
    problems
}

/// Each client prepares `PLUS_ONE` afresh and runs it and its first statement, 20
/// times, all at once; returns every error or wrong answer.
async fn prepared_loops(clients: &[&Client]) -> Vec<String> {
    let runs = clients.iter().enumerate().map(|(n, client)| async move {
        let mut problems = Vec::new();
        let first = match client.prepare(PLUS_ONE).await {
            Ok(s) => s,
            Err(e) => return vec![format!("client {n} prepare: {}", describe(&e))],
        };
        for i in 0..20i32 {
            let fresh = match client.prepare(PLUS_ONE).await {
                Ok(s) => s,
                Err(e) => {
                    problems.push(format!("client {n} round {i} prepare: {}", describe(&e)));
                    continue;
                }
            };
            for statement in [&first, &fresh] {
                match client.query_one(statement, &[&i]).await {
                    Ok(row) if row.get::<_, i32>(0) == i + 1 => {}
                    Ok(row) => problems.push(format!(
                        "client {n} round {i}: got {}",
                        row.get::<_, i32>(0)
                    )),
                    Err(e) => problems.push(format!("client {n} round {i}: {}", describe(&e))),
                }
            }
        }
        problems
    });
    futures_util::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// A statement-dropping command from one client (`want`: the SQLSTATE it gets, or
/// None) must not make the proxy forget statements the server still holds.
async fn statements_survive(sql: &str, want: Option<&str>) {
    let env = txn_env().start().await;
    let (a, b, c) = (
        env.connect("app", "acme").await,
        env.connect("app", "acme").await,
        env.connect("app", "acme").await,
    );
    let mut problems = prepare_on_both_servers(&a, &b, PLUS_ONE).await;
    let dropper = env.connect("app", "acme").await;
    let got = dropper.simple_query(sql).await.err();
    // It leaves, so that however the proxy takes the command (it may even pin the
    // client) both servers are free for the others below.
    drop(dropper);
    let got_code = got
        .as_ref()
        .and_then(|e| e.as_db_error())
        .map(|e| e.code().code().to_string());
    if got_code.as_deref() != want {
        problems.push(format!(
            "{sql}: got {:?}, want SQLSTATE {want:?}",
            got.map(|e| describe(&e))
        ));
    }
    problems.extend(prepare_on_both_servers(&a, &b, PLUS_ONE).await);
    let late = env.connect("app", "acme").await;
    problems.extend(prepared_loops(&[&a, &b, &c, &late]).await);
    problems.dedup();
    assert_none(
        problems
            .into_iter()
            .map(|p| format!("after {sql}: {p}"))
            .collect(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocating_a_name_the_server_never_had_keeps_other_statements() {
    statements_survive("DEALLOCATE a1", Some("26000")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_plans_keeps_other_statements() {
    statements_survive("DISCARD PLANS", None).await;
}

/// pgjdbc sends every statement by the extended protocol, DEALLOCATE ALL included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_all_by_the_extended_protocol_never_breaks_other_clients() {
    let env = txn_env().start().await;
    let (a, b, c) = (
        env.connect("app", "acme").await,
        env.connect("app", "acme").await,
        env.connect("app", "acme").await,
    );
    let mut problems = prepare_on_both_servers(&a, &b, PLUS_ONE).await;
    let dropper = env.connect("app", "acme").await;
    if let Err(e) = dropper.execute("DEALLOCATE ALL", &[]).await {
        problems.push(format!("DEALLOCATE ALL: {}", describe(&e)));
    }
    // It leaves, so both servers are free for the others below however the proxy
    // took the command; another comes back for the loops.
    drop(dropper);
    tokio::time::sleep(Duration::from_millis(300)).await;
    problems.extend(prepare_on_both_servers(&a, &b, PLUS_ONE).await);
    // And again in the middle of the others' loops.
    let dropper = env.connect("app", "acme").await;
    let drops = async {
        let mut problems = Vec::new();
        for _ in 0..10 {
            if let Err(e) = dropper.execute("DEALLOCATE ALL", &[]).await {
                problems.push(format!("DEALLOCATE ALL: {}", describe(&e)));
            }
            tokio::task::yield_now().await;
        }
        problems
    };
    let clients = [&a, &b, &c];
    let (loops, drops) = tokio::join!(prepared_loops(&clients), drops);
    problems.extend(loops);
    problems.extend(drops);
    problems.dedup();
    assert_none(problems);
}

fn cstr(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    message(b'P', &[cstr(name), cstr(sql), vec![0, 0]].concat())
}

/// Bind of `statement` to the unnamed portal, Execute and Sync.
fn bind_execute_sync(statement: &str) -> Vec<u8> {
    let bind = [cstr(""), cstr(statement), vec![0; 6]].concat();
    let execute = [cstr(""), vec![0; 4]].concat();
    [
        message(b'B', &bind),
        message(b'E', &execute),
        message(b'S', &[]),
    ]
    .concat()
}

fn sync() -> Vec<u8> {
    message(b'S', &[])
}

/// Sends `bytes` and reads to ReadyForQuery: the SQLSTATE of the error if any, else
/// the first DataRow's values and the last command tag.
async fn exchange(raw: &mut Raw, bytes: &[u8]) -> Result<(Vec<String>, String), String> {
    raw.send(bytes).await;
    let replies = raw.read_until_ready().await;
    if let Some(e) = replies.iter().find(|m| m.tag == b'E') {
        let e = e.error();
        return Err(format!("{} {}", e.code, e.message));
    }
    let row = replies
        .iter()
        .find(|m| m.tag == b'D')
        .map(|m| {
            m.data_row()
                .into_iter()
                .map(Option::unwrap_or_default)
                .collect()
        })
        .unwrap_or_default();
    let tag = replies
        .iter()
        .rfind(|m| m.tag == b'C')
        .map(|m| String::from_utf8_lossy(m.body.strip_suffix(&[0]).unwrap_or(&m.body)).into_owned())
        .unwrap_or_default();
    Ok((row, tag))
}

/// PHP's PDO and Perl's DBD::Pg prepare by protocol and deallocate with SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_by_sql_of_a_protocol_statement() {
    let env = txn_env().start().await;
    let others = Others::connect(&env, "acme").await;
    let mut raw = Raw::acme(env.addr()).await;
    let mut problems = Vec::new();
    let first = [
        parse("s1", "SELECT 1, pg_backend_pid()"),
        bind_execute_sync("s1"),
    ]
    .concat();
    assert_eq!(exchange(&mut raw, &first).await.unwrap().0[0], "1");
    match exchange(&mut raw, &query_message("DEALLOCATE s1")).await {
        Ok((_, tag)) if tag == "DEALLOCATE" => {}
        other => problems.push(format!(
            "DEALLOCATE s1: {other:?}, want CommandComplete DEALLOCATE"
        )),
    }
    match exchange(&mut raw, &bind_execute_sync("s1")).await {
        Err(e) if e.starts_with("26000") => {}
        other => problems.push(format!(
            "Bind of s1 after DEALLOCATE: {other:?}, want 26000"
        )),
    }
    let again = [parse("s1", "SELECT 2, pg_backend_pid()"), sync()].concat();
    if let Err(e) = exchange(&mut raw, &again).await {
        problems.push(format!("Parse of s1 with other text: {e}"));
    }
    let mut pids = BTreeSet::new();
    for round in 0..6 {
        if round % 2 == 1 {
            others.hold().await;
        }
        match exchange(&mut raw, &bind_execute_sync("s1")).await {
            Ok((row, _)) if row[0] == "2" => {
                pids.insert(row[1].clone());
            }
            other => problems.push(format!("round {round}: s1 ran as {other:?}, want 2")),
        }
        if round % 2 == 1 {
            others.release().await;
        }
    }
    assert_none(
        problems
            .into_iter()
            .map(|p| format!("{p} (servers {pids:?})"))
            .collect(),
    );
}

/// What the server calls the statement a client of `tenant` prepared as `sql`,
/// looked up on the same server inside one transaction.
async fn server_names(env: &Env, tenant: &str, sql: &str) -> Vec<String> {
    let client = env.connect("app", tenant).await;
    client.batch_execute("BEGIN").await.unwrap();
    let statement = client.prepare(sql).await.unwrap();
    client.query(&statement, &[]).await.unwrap();
    let names = column(
        &client,
        &format!("SELECT name FROM pg_prepared_statements WHERE statement = '{sql}'"),
    )
    .await;
    client.batch_execute("COMMIT").await.unwrap();
    names
}

/// Server-side statement names must tell one tenant nothing about another: the same
/// text gets different names in two tenants' pools, and no name is a small sequence
/// number. The rule checked: not `pgtenant_` followed by five digits or fewer, which
/// a client could enumerate or predict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_names_are_per_pool_and_unguessable() {
    let env = txn_env().start().await;
    let sql = "SELECT 4242 AS probe";
    let acme = server_names(&env, "acme", sql).await;
    let globex = server_names(&env, "globex", sql).await;
    assert_eq!(acme.len(), 1, "acme's server holds {acme:?}");
    assert_eq!(globex.len(), 1, "globex's server holds {globex:?}");
    assert_ne!(acme, globex, "two tenants' pools name the same text alike");
    for name in acme.iter().chain(&globex) {
        let sequential = name
            .strip_prefix("pgtenant_")
            .is_some_and(|n| !n.is_empty() && n.len() < 6 && n.bytes().all(|b| b.is_ascii_digit()));
        assert!(
            !sequential,
            "server-side name {name:?} is a small sequence number"
        );
    }
}

/// A DO block can run any SQL, here re-preparing a name the proxy gave another
/// client's statement with other text: the other client must still run its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_do_block_cannot_plant_a_statement_for_another_client() {
    let env = txn_env().start().await;
    let victim = env.connect("app", "acme").await;
    let sql = "SELECT 'victim'::text AS who";
    let statement = victim.prepare(sql).await.unwrap();
    assert_eq!(
        victim
            .query_one(&statement, &[])
            .await
            .unwrap()
            .get::<_, String>(0),
        "victim"
    );
    let mut attacker = Some(env.connect("app", "acme").await);
    let attacker_client = attacker.as_ref().unwrap();
    attacker_client.batch_execute("BEGIN").await.unwrap();
    // On the server the victim used last (the pool hands out the last one released).
    let names = column(
        attacker_client,
        &format!(
            "SELECT name FROM pg_prepared_statements WHERE statement = '{}'",
            sql.replace('\'', "''")
        ),
    )
    .await;
    for name in &names {
        attacker_client
            .batch_execute(&format!(
                "DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; \
                 EXECUTE 'PREPARE {name} AS SELECT ''attacker''::text AS who'; END $$"
            ))
            .await
            .unwrap();
    }
    attacker_client.batch_execute("COMMIT").await.unwrap();
    // While the attacker stays (its server is then its own) and after it left.
    let mut problems = Vec::new();
    for round in 0..8 {
        if round == 4 {
            drop(attacker.take());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        match victim.query_one(&statement, &[]).await {
            Ok(row) if row.get::<_, String>(0) == "victim" => {}
            Ok(row) => problems.push(format!(
                "round {round}: the victim's statement ran as {:?} (planted over {names:?})",
                row.get::<_, String>(0)
            )),
            Err(e) => problems.push(format!("round {round}: {}", describe(&e))),
        }
    }
    assert_none(problems);
}

// ---------------------------------------------------------------------------------
// Settings that would let a session through
// ---------------------------------------------------------------------------------

fn check_config(extra: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("tenants.toml");
    std::fs::write(
        &registry,
        "[hosts.a]\naddress = \"127.0.0.1:5432\"\n[tenants.acme]\nhost = \"a\"\ndatabase = \"erp\"\n",
    )
    .unwrap();
    let config = dir.path().join("pgtenant.toml");
    std::fs::write(
        &config,
        format!(
            "[registry]\nfile = {:?}\n{extra}",
            registry.display().to_string()
        ),
    )
    .unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap()
}

#[test]
fn check_refuses_settings_that_let_a_session_through_in_transaction_mode() {
    // The baseline passes, so a refusal below is the key's doing.
    let out = check_config("[proxy]\npool_mode = \"transaction\"\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut problems = Vec::new();
    for (extra, key) in [
        (
            "[proxy]\npool_mode = \"transaction\"\n[pool]\nreset_query = \"\"\n",
            "pool.reset_query",
        ),
        (
            "[proxy]\npool_mode = \"transaction\"\nrelay_buffer = 0\n",
            "proxy.relay_buffer",
        ),
    ] {
        let out = check_config(extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            problems.push(format!("check accepted {extra:?}"));
        } else if !stderr.contains(key) {
            problems.push(format!(
                "the refusal of {extra:?} does not name {key}: {stderr}"
            ));
        }
    }
    assert_none(problems);
}

/// Whichever way the proxy answers an empty reset_query (refusing it, or closing a
/// pinned client's server instead of reusing it), a role must not reach the next
/// client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_reset_query_never_hands_a_role_to_the_next_client() {
    let env = txn_env().start().await;
    let path = env.dir.path().join("no-reset.toml");
    std::fs::write(
        &path,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\npool_mode = \"transaction\"\n[pool]\npool_size = 1\nreset_query = \"\"\n[registry]\nfile = {:?}\n",
            env.registry_path.display().to_string()
        ),
    )
    .unwrap();
    let settings = match pgtenant::Settings::load(&path) {
        Err(e) => {
            assert!(e.to_string().contains("reset_query"), "{e}");
            return;
        }
        Ok(settings) => settings,
    };
    let server = pgtenant::Server::start(settings).await.unwrap();
    let config = config_for(server.local_addr(), "app", Some("acme"));
    let client = connect(&config).await.unwrap();
    client.batch_execute("SET ROLE r").await.unwrap();
    assert_eq!(value(&client, "SELECT current_user::text").await, "r");
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let next = connect(&config).await.unwrap();
    for _ in 0..3 {
        assert_eq!(value(&next, "SELECT current_user::text").await, "app");
    }
}

/// A function the client may call runs any SQL unseen, here preparing, on the server
/// the proxy's record says lacks it, a statement under the server-side name of
/// another client's statement with other text. When that client's statement is
/// prepared there, it must still run its own text (and not fail with 42P05).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_cannot_plant_a_statement_under_a_proxy_name() {
    let env = txn_env()
        .seed(
            "erp",
            "CREATE FUNCTION public.plant(name text) RETURNS void LANGUAGE plpgsql AS $$ \
             BEGIN EXECUTE format('PREPARE %I AS SELECT %L::text AS who', name, 'attacker'); END $$; \
             GRANT EXECUTE ON FUNCTION public.plant(text) TO PUBLIC;",
        )
        .start()
        .await;
    let victim = env.connect("app", "acme").await;
    let holder = env.connect("app", "acme").await;
    let attacker = env.connect("app", "acme").await;
    let sql = "SELECT 'victim'::text AS who";
    let statement = victim.prepare(sql).await.unwrap();
    async fn run(client: &Client, statement: &tokio_postgres::Statement) -> Result<String, String> {
        client
            .query_one(statement, &[])
            .await
            .map(|row| row.get::<_, String>(0))
            .map_err(|e| describe(&e))
    }
    assert_eq!(run(&victim, &statement).await.as_deref(), Ok("victim"));
    // The victim's server was released last, so it is handed out next: read the
    // name there, then hold it so the attacker runs on the other server.
    let name = value(
        &attacker,
        &format!(
            "SELECT name FROM pg_prepared_statements WHERE statement = '{}'",
            sql.replace('\'', "''")
        ),
    )
    .await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let planted_on = value(&attacker, "SELECT pg_backend_pid()::text").await;
    attacker
        .simple_query(&format!("SELECT public.plant('{name}')"))
        .await
        .expect("the function plants the statement");
    // With the holder still on the other server, the victim runs where it was planted.
    let mut problems = Vec::new();
    for round in 0..4 {
        let pid = value(&victim, "SELECT pg_backend_pid()::text").await;
        match run(&victim, &statement).await {
            Ok(who) if who == "victim" => {}
            Ok(who) => problems.push(format!("round {round} on {pid}: ran as {who:?}")),
            Err(e) => problems.push(format!("round {round} on {pid}: {e}")),
        }
        if pid != planted_on {
            problems.push(format!(
                "round {round}: ran on {pid}, not on the server the statement was planted on ({planted_on})"
            ));
        }
    }
    holder.batch_execute("COMMIT").await.unwrap();
    assert_none(problems);
}
