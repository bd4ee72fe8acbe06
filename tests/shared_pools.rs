//! Schema tenants of one host, database and role share server connections in
//! transaction mode, and no statement ever runs under another tenant's search_path:
//! many tenants and clients interleave on a host budget of a few servers, and every
//! statement checks `current_schemas()` and a per-tenant table against its own
//! tenant, by simple and extended protocol, including right after each statement that
//! puts search_path back to the server's default.

mod common;

use std::collections::BTreeSet;

use common::*;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Run in `erp`: a schema per tenant `t0…t{n-1}`, each with a `whoami` table naming
/// its tenant, and a decoy `public.whoami`.
fn schemas(n: usize) -> String {
    let mut sql = String::from(
        "SET ROLE app;\nCREATE TABLE public.whoami (name text);\nINSERT INTO public.whoami VALUES ('public');\n",
    );
    for i in 0..n {
        sql.push_str(&format!(
            "CREATE SCHEMA tenant_t{i};\nCREATE TABLE tenant_t{i}.whoami (name text);\nINSERT INTO tenant_t{i}.whoami VALUES ('t{i}');\n"
        ));
    }
    sql
}

fn registry(n: usize, max_connections: usize, extra: &str) -> String {
    let mut text =
        format!("[hosts.pg-a]\naddress = \"${{pg-a}}\"\nmax_connections = {max_connections}\n");
    for i in 0..n {
        text.push_str(&format!(
            "\n[tenants.t{i}]\nhost = \"pg-a\"\ndatabase = \"erp\"\nsearch_path = [\"tenant_t{i}\"]\nbackend_user = \"app\"\n"
        ));
    }
    text.push_str(extra);
    text
}

/// `n` schema tenants on a host budget of `max_connections`, transaction mode,
/// `pool_size` per tenant; `pool` is more TOML for `[pool]`, `extra` more registry.
fn env(n: usize, max_connections: usize, pool_size: usize, pool: &str, extra: &str) -> EnvBuilder {
    EnvBuilder::new()
        .host("pg-a")
        .seed("postgres", ERP_ROLES)
        .seed("erp", &schemas(n))
        .registry(&registry(n, max_connections, extra))
        .settings(&format!(
            "[proxy]\npool_mode = \"transaction\"\n[pool]\npool_size = {pool_size}\n{pool}\n"
        ))
}

fn rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<String>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

const CHECK: &str =
    "SELECT current_schemas(false)::text, (SELECT name FROM whoami), pg_backend_pid()::text";

/// Checks by simple query that the client runs under its tenant's path; returns the
/// server's pid.
async fn check_simple(client: &Client, tenant: &str, after: &str) -> String {
    let got = rows(
        &client
            .simple_query(CHECK)
            .await
            .unwrap_or_else(|e| panic!("{tenant} after {after}: {}", describe(&e))),
    );
    assert_eq!(
        got[0][..2],
        [format!("{{tenant_{tenant}}}"), tenant.to_string()],
        "{tenant}: wrong search_path after {after} (simple protocol)"
    );
    got[0][2].clone()
}

/// The same check by the extended protocol (a named statement).
async fn check_extended(client: &Client, tenant: &str, after: &str) -> String {
    let row = client
        .query_one(CHECK, &[])
        .await
        .unwrap_or_else(|e| panic!("{tenant} after {after}: {}", describe(&e)));
    let got: (String, String) = (row.get(0), row.get(1));
    assert_eq!(
        got,
        (format!("{{tenant_{tenant}}}"), tenant.to_string()),
        "{tenant}: wrong search_path after {after} (extended protocol)"
    );
    row.get(2)
}

/// One client's round of statements: plain checks, and each form of reset followed
/// at once by a check, by both protocols, alone, in a block and pipelined.
async fn round(client: &Client, tenant: &str, step: usize) -> BTreeSet<String> {
    let mut pids = BTreeSet::new();
    pids.insert(check_simple(client, tenant, "nothing").await);
    pids.insert(check_extended(client, tenant, "nothing").await);
    let resets = [
        "RESET ALL",
        "RESET search_path",
        "DISCARD ALL",
        "SET search_path TO DEFAULT",
        "SELECT 1; RESET ALL",
    ];
    let reset = resets[step % resets.len()];
    match step % 5 {
        0 => {
            client.simple_query(reset).await.unwrap();
            pids.insert(check_simple(client, tenant, reset).await);
        }
        1 => {
            // Extended protocol: the reset as a prepared statement.
            if !reset.contains(';') && reset != "DISCARD ALL" {
                client.execute(reset, &[]).await.unwrap();
                pids.insert(check_extended(client, tenant, reset).await);
            }
        }
        2 if reset != "DISCARD ALL" => {
            // Pipelined: the check is sent before the reset's answer came.
            let (a, b) = tokio::join!(client.simple_query(reset), client.query_one(CHECK, &[]));
            a.unwrap();
            let row = b.unwrap();
            let got: (String, String) = (row.get(0), row.get(1));
            assert_eq!(
                got,
                (format!("{{tenant_{tenant}}}"), tenant.to_string()),
                "{tenant}: wrong search_path right after a pipelined {reset}"
            );
        }
        2 => {}
        3 => {
            // Inside a transaction block, then after it commits.
            if reset != "DISCARD ALL" && !reset.contains(';') {
                client.simple_query("BEGIN").await.unwrap();
                client.simple_query(reset).await.unwrap();
                pids.insert(check_simple(client, tenant, reset).await);
                client
                    .simple_query("SET LOCAL search_path TO DEFAULT")
                    .await
                    .unwrap();
                check_extended(client, tenant, "SET LOCAL search_path TO DEFAULT").await;
                client.simple_query("COMMIT").await.unwrap();
                pids.insert(check_extended(client, tenant, "COMMIT").await);
            }
        }
        _ => {
            // The client's own path follows it; a reset brings back the tenant's.
            client
                .simple_query(&format!("SET search_path TO tenant_{tenant}, public"))
                .await
                .unwrap();
            let got = rows(&client.simple_query(CHECK).await.unwrap());
            assert_eq!(got[0][0], format!("{{tenant_{tenant},public}}"));
            client.simple_query("RESET search_path").await.unwrap();
            pids.insert(check_simple(client, tenant, "RESET search_path").await);
        }
    }
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_statement_runs_under_another_tenants_path() {
    const TENANTS: usize = 6;
    const CLIENTS: usize = 2;
    const ROUNDS: usize = 15;
    let env = env(TENANTS, 3, 2, "", "").start().await;
    let mut tasks = Vec::new();
    for i in 0..TENANTS * CLIENTS {
        let tenant = format!("t{}", i % TENANTS);
        let client = env.connect("app", &tenant).await;
        tasks.push(tokio::spawn(async move {
            let mut pids = BTreeSet::new();
            for step in 0..ROUNDS {
                pids.extend(round(&client, &tenant, step + i).await);
            }
            pids
        }));
    }
    let mut all = BTreeSet::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    // Twelve clients of six tenants ran on the host's three servers: they were shared.
    assert!(all.len() <= 3, "servers used: {all:?}");
    assert!(env.backends("pg-a", "erp").await <= 3);
}

#[tokio::test]
async fn a_query_that_resets_the_path_before_more_statements_is_refused() {
    let env = env(2, 2, 1, "", "").start().await;
    let client = env.connect("app", "t0").await;
    let err = client
        .simple_query("RESET ALL; SELECT * FROM whoami")
        .await
        .expect_err("refused");
    assert_eq!(err.code().unwrap().code(), "0A000", "{}", describe(&err));
    assert!(describe(&err).contains("last statement"));
    // The client goes on, under its tenant's path.
    check_simple(&client, "t0", "a refused query").await;
    // In a block the refusal leaves the block as it was.
    client.simple_query("BEGIN").await.unwrap();
    client
        .simple_query("DISCARD ALL; SELECT 1")
        .await
        .expect_err("refused");
    check_simple(&client, "t0", "a refused query in a block").await;
    client.simple_query("COMMIT").await.unwrap();
}

/// The pids of the client backends connected to `erp`.
async fn server_pids(env: &Env) -> BTreeSet<i32> {
    let client = env.direct("pg-a", "postgres").await;
    client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = 'erp' \
             AND backend_type = 'client backend'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// `n` tenants × 1 client, each running `rounds` transactions at once.
async fn run_clients(env: &Env, n: usize, rounds: usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let tenant = format!("t{i}");
        let config = env.config("app", Some(&tenant));
        tasks.push(tokio::spawn(async move {
            let client = connect(&config).await.unwrap();
            for _ in 0..rounds {
                check_extended(&client, &tenant, "nothing").await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// With sharing, 8 tenants × 1 client on a budget of 3 servers open no connection in
/// steady state; without it they take turns and open connections all along.
#[tokio::test]
async fn shared_servers_are_not_reopened_in_steady_state() {
    let env = env(8, 3, 1, "", "").start().await;
    run_clients(&env, 8, 5).await;
    let before = server_pids(&env).await;
    assert!(!before.is_empty() && before.len() <= 3, "{before:?}");
    run_clients(&env, 8, 40).await;
    assert_eq!(server_pids(&env).await, before, "servers were reopened");

    // The same load with sharing off: tenants take turns on the host, so servers
    // close and open (the check above would fail).
    let env = env_off().start().await;
    run_clients(&env, 8, 5).await;
    let before = server_pids(&env).await;
    run_clients(&env, 8, 40).await;
    assert_ne!(
        server_pids(&env).await,
        before,
        "without sharing servers turn over"
    );
}

fn env_off() -> EnvBuilder {
    env(
        8,
        3,
        1,
        "share_schema_tenants = false\nhost_turn = \"10ms\"",
        "",
    )
}

/// A tenant that opts out keeps servers of its own with the path in their startup
/// packet: a reset returns to its schema, even among other statements.
#[tokio::test]
async fn a_tenant_may_opt_out_of_sharing() {
    let extra = "\n[tenants.solo]\nhost = \"pg-a\"\ndatabase = \"erp\"\nsearch_path = [\"tenant_t1\"]\nbackend_user = \"app\"\nshare = false\n";
    let env = env(2, 4, 1, "", extra).start().await;
    let shared = env.connect("app", "t0").await;
    let solo = env.connect("app", "solo").await;
    let shared_pid = check_simple(&shared, "t0", "nothing").await;
    let got = rows(
        &solo
            .simple_query(&format!("RESET ALL; {CHECK}"))
            .await
            .unwrap(),
    );
    assert_eq!(got[0][..2], ["{tenant_t1}".to_string(), "t1".to_string()]);
    assert_ne!(
        got[0][2], shared_pid,
        "the opted-out tenant has its own server"
    );
    // The shared tenant's next server is never the opted-out one's.
    for _ in 0..5 {
        assert_ne!(check_simple(&shared, "t0", "nothing").await, got[0][2]);
    }
}

/// Session mode keeps the path in the startup packet: nothing is refused and a
/// reset returns to the tenant's schema.
#[tokio::test]
async fn session_mode_is_unchanged() {
    let extra = "\n[tenants.sess]\nhost = \"pg-a\"\ndatabase = \"erp\"\nsearch_path = [\"tenant_t0\"]\nbackend_user = \"app\"\npool_mode = \"session\"\n";
    let env = env(1, 4, 1, "", extra).start().await;
    let client = env.connect("app", "sess").await;
    let got = rows(
        &client
            .simple_query(&format!("RESET ALL; {CHECK}"))
            .await
            .unwrap_or_else(|e| panic!("{}", describe(&e))),
    );
    assert_eq!(got[0][..2], ["{tenant_t0}".to_string(), "t0".to_string()]);
}

/// On one shared server, two tenants preparing the same text each get a statement
/// of their own (planned under their own path), and each reads its own table.
#[tokio::test]
async fn prepared_statements_are_per_tenant_on_a_shared_server() {
    let env = env(2, 1, 1, "", "").start().await;
    let a = env.connect("app", "t0").await;
    let b = env.connect("app", "t1").await;
    let text = "SELECT name FROM whoami";
    let (sa, sb) = (
        a.prepare(text).await.unwrap(),
        b.prepare(text).await.unwrap(),
    );
    for _ in 0..5 {
        let got: String = a.query_one(&sa, &[]).await.unwrap().get(0);
        assert_eq!(got, "t0");
        let got: String = b.query_one(&sb, &[]).await.unwrap().get(0);
        assert_eq!(got, "t1");
    }
    let copies: i64 = a
        .query_one(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement = $1",
            &[&text],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(copies, 2, "one server-side statement per tenant");
}

/// A tenant's pool_size caps the shared servers it holds: its second client waits
/// while another tenant is served.
#[tokio::test]
async fn a_tenant_at_its_cap_waits_while_others_are_served() {
    let env = env(2, 3, 1, "checkout_timeout = \"1s\"", "").start().await;
    let holder = env.connect("app", "t0").await;
    holder.simple_query("BEGIN").await.unwrap();
    check_simple(&holder, "t0", "BEGIN").await;
    let waiter = env.connect("app", "t0").await;
    let other = env.connect("app", "t1").await;
    check_simple(&other, "t1", "nothing").await;
    let err = waiter.simple_query(CHECK).await.expect_err("at its cap");
    assert_eq!(err.code().unwrap().code(), "53300", "{}", describe(&err));
    holder.simple_query("COMMIT").await.unwrap();
}

/// Serves the clients queued in `waiting` (tenant, name), in that order, on a host of
/// one server held by a client of t0 in a block; returns the order they were served in.
async fn served_order(share_streak: u32, waiting: &[(&str, &str)]) -> Vec<String> {
    let env = env(2, 1, 3, &format!("share_streak = {share_streak}"), "")
        .start()
        .await;
    let holder = env.connect("app", "t0").await;
    holder.simple_query("BEGIN").await.unwrap();
    check_simple(&holder, "t0", "BEGIN").await;
    let (done, mut served) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for (tenant, name) in waiting {
        let client = env.connect("app", tenant).await;
        let (done, tenant, name) = (done.clone(), tenant.to_string(), name.to_string());
        tasks.push(tokio::spawn(async move {
            check_simple(&client, &tenant, "waiting").await;
            done.send(name).unwrap();
        }));
        // Each client queues before the next asks (the order is the point).
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
    holder.simple_query("COMMIT").await.unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    drop(done);
    let mut order = Vec::new();
    while let Some(name) = served.recv().await {
        order.push(name);
    }
    order
}

/// A returning server goes to a waiting client of the search_path it has, ahead of
/// the first in line, at most `share_streak` times in a row; with 0, strictly in order.
#[tokio::test]
async fn a_server_serves_its_own_path_first_for_a_bounded_streak() {
    let waiting = [("t1", "b"), ("t0", "a1"), ("t0", "a2")];
    assert_eq!(served_order(1, &waiting).await, ["a1", "b", "a2"]);
    assert_eq!(served_order(0, &waiting).await, ["b", "a1", "a2"]);
}

/// `n` tenants × 1 client at once, each running `rounds` statements that hold their
/// server a moment; the server pids they ran on.
async fn run_sleepers(env: &Env, n: usize, rounds: usize) -> BTreeSet<String> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let tenant = format!("t{i}");
        let config = env.config("app", Some(&tenant));
        tasks.push(tokio::spawn(async move {
            let client = connect(&config).await.unwrap();
            let mut pids = BTreeSet::new();
            for _ in 0..rounds {
                client.simple_query("SELECT pg_sleep(0.02)").await.unwrap();
                pids.insert(check_simple(&client, &tenant, "a sleep").await);
            }
            pids
        }));
    }
    let mut pids = BTreeSet::new();
    for task in tasks {
        pids.extend(task.await.unwrap());
    }
    pids
}

/// `pool.shared_pool_size` bounds the servers a shared set opens for all its tenants
/// together, below the host's budget; every client is still served, under its own
/// path. Without it the same load opens more, up to the budget.
#[tokio::test]
async fn a_shared_set_holds_at_most_shared_pool_size_servers() {
    let bounded = env(8, 10, 2, "shared_pool_size = 2", "").start().await;
    let used = run_sleepers(&bounded, 8, 6).await;
    assert!(used.len() <= 2, "ran on {} servers: {used:?}", used.len());
    assert!(server_pids(&bounded).await.len() <= 2);

    // A server that closes gives its place back: the set opens a replacement.
    let admin = bounded.direct("pg-a", "postgres").await;
    admin
        .simple_query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = 'erp' AND backend_type = 'client backend'",
        )
        .await
        .unwrap();
    // Gone before the clients come back, so none is handed a server still dying.
    while !server_pids(&bounded).await.is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let after = run_sleepers(&bounded, 8, 3).await;
    assert!(
        after.len() <= 2 && after.is_disjoint(&used),
        "{after:?} after {used:?}"
    );

    let open = env(8, 10, 2, "", "").start().await;
    let unbounded = run_sleepers(&open, 8, 6).await;
    assert!(unbounded.len() > 2, "without a set size: {unbounded:?}");
}
