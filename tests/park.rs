//! Idle transaction-mode clients park: after `proxy.park_after` of quiet they wait
//! without a task, keep everything that follows them (settings, prepared statements,
//! cancel key), and are served again by their next message, told of a shutdown, and
//! counted out when they leave while parked.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

/// Transaction mode, clients park after 100 ms of quiet.
fn parking_env(mode: &str) -> EnvBuilder {
    EnvBuilder::erp().settings(&format!(
        "[proxy]\npool_mode = \"{mode}\"\npark_after = \"100ms\"\nshutdown_timeout = \"10s\"\n[pool]\npool_size = 2\n"
    ))
}

/// Waits until `count` clients are parked; the count seen if that never happens.
async fn parked(env: &Env, count: usize) -> usize {
    let lot = env.server().app().parking.clone();
    eventually(Duration::from_secs(5), || {
        let lot = lot.clone();
        async move { (lot.len() == count).then_some(()) }
    })
    .await
    .map_or_else(|| env.server().app().parking.len(), |()| count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_client_parks_and_keeps_its_session() {
    let env = parking_env("transaction").start().await;
    let client = env.connect("app", "acme").await;
    client
        .batch_execute("SET statement_timeout = '7s'")
        .await
        .unwrap();
    let plus_one = client.prepare("SELECT $1::int + 1").await.unwrap();
    assert_eq!(parked(&env, 1).await, 1, "the quiet client did not park");

    // Its next message serves it again, with its setting and its statement.
    let row = client.query_one(&plus_one, &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(value(&client, "SHOW statement_timeout").await, "7s");
    assert_eq!(value(&client, "SHOW search_path").await, "tenant_acme");
    // And it parks again once quiet.
    assert_eq!(
        parked(&env, 1).await,
        1,
        "the client did not park a second time"
    );
    let row = client.query_one(&plus_one, &[&1i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_parked_clients_are_all_served_again() {
    let env = parking_env("transaction").start().await;
    let mut clients = Vec::new();
    for i in 0..200 {
        let client = env.connect("app", "acme").await;
        client
            .batch_execute(&format!("SET application_name = 'c{i}'"))
            .await
            .unwrap();
        clients.push(client);
    }
    assert_eq!(parked(&env, 200).await, 200);
    let answers = futures_util::future::join_all(
        clients
            .iter()
            .map(|client| value(client, "SHOW application_name")),
    )
    .await;
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer, &format!("c{i}"));
    }
    // Two server connections served all of them.
    assert_eq!(env.backends("pg-a", "erp").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_that_leaves_is_counted_out() {
    let env = parking_env("transaction").start().await;
    let mut raw = Raw::acme(env.addr()).await;
    raw.send(&query_message("SELECT 1")).await;
    raw.read_until_ready().await;
    assert_eq!(parked(&env, 1).await, 1);
    assert_eq!(env.server().app().clients.load(Ordering::Acquire), 1);

    drop(raw);
    let app = env.server().app().clone();
    let gone =
        eventually(Duration::from_secs(5), || {
            let app = app.clone();
            async move {
                (app.clients.load(Ordering::Acquire) == 0 && app.parking.is_empty()).then_some(())
            }
        })
        .await;
    assert!(
        gone.is_some(),
        "a client that left while parked still counts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_hears_of_a_shutdown() {
    let mut env = parking_env("transaction").start().await;
    let mut raw = Raw::acme(env.addr()).await;
    raw.send(&query_message("SELECT 1")).await;
    raw.read_until_ready().await;
    assert_eq!(parked(&env, 1).await, 1);

    let stop = tokio::time::timeout(Duration::from_secs(5), env.stop()).await;
    assert!(stop.is_ok(), "the stop waited for a parked client");
    let fatal = raw.expect_fatal().await;
    assert_eq!(fatal.code, "57P01", "{fatal:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_and_pinned_clients_do_not_park() {
    // A session-level advisory lock needs the client's own server: it is pinned.
    for (mode, sql, who) in [
        ("session", "SELECT 1::text", "a session-mode client"),
        (
            "transaction",
            "SELECT pg_advisory_lock(7)::text",
            "a pinned client",
        ),
    ] {
        let env = parking_env(mode).start().await;
        let client = env.connect("app", "acme").await;
        value(&client, sql).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(env.server().app().parking.len(), 0, "{who} parked");
        assert_eq!(value(&client, "SELECT 1::text").await, "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_follows_a_registry_change() {
    let env = parking_env("transaction").start().await;
    let client = env.connect("app", "acme").await;
    assert_eq!(items(&client).await, ACME_ITEMS);
    assert_eq!(parked(&env, 1).await, 1);

    // acme now lives in globex's schema; new clients see it once the file is read.
    env.write_registry(&ERP_REGISTRY.replacen(
        "search_path = [\"tenant_acme\"]",
        "search_path = [\"tenant_globex\"]",
        1,
    ));
    let moved = eventually(Duration::from_secs(10), || async {
        let fresh = env.connect("app", "acme").await;
        (items(&fresh).await == GLOBEX_ITEMS).then_some(())
    })
    .await;
    assert!(moved.is_some(), "the registry change was not picked up");
    // The parked client is served from the tenant as the registry says now.
    assert_eq!(items(&client).await, GLOBEX_ITEMS);
}
