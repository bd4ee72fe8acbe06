//! Limits on clients against real clusters: clients per tenant, idle clients, and
//! clients idle inside a transaction.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_client_limit_refuses_with_53300() {
    let env = EnvBuilder::erp()
        .settings("[proxy]\nmax_client_conn_per_tenant = 2\n")
        .start()
        .await;
    let a = env.connect("app", "acme").await;
    let _b = env.connect("app", "acme").await;
    let err = env
        .try_connect("app", "acme")
        .await
        .map(|_| ())
        .expect_err("third refused");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "53300");
    assert!(db.message().contains("tenant \"acme\""), "{}", db.message());
    // Other tenants are not counted against acme.
    let globex = env.connect("app", "globex").await;
    assert_eq!(items(&globex).await, GLOBEX_ITEMS);
    // A client that leaves makes room.
    drop(a);
    let again = eventually(Duration::from_secs(10), || async {
        env.try_connect("app", "acme").await.ok()
    })
    .await
    .expect("room again once a client left");
    assert_eq!(items(&again).await, ACME_ITEMS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_is_closed_with_57p05() {
    for mode in ["session", "transaction"] {
        let env = EnvBuilder::erp()
            .settings(&format!(
                "[proxy]\npool_mode = \"{mode}\"\nclient_idle_timeout = \"2s\"\n"
            ))
            .start()
            .await;
        let mut idle = Raw::acme(env.addr()).await;
        let fatal = idle.expect_fatal().await;
        assert_eq!(fatal.code, "57P05", "{mode}: {fatal:?}");
        // A client that keeps talking is not idle: it is busy longer than the timeout,
        // never quiet for long (gaps far below the timeout, even on a loaded machine).
        let busy = env.connect("app", "acme").await;
        for _ in 0..12 {
            assert_eq!(items(&busy).await, ACME_ITEMS);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_in_transaction_is_rolled_back_released_and_told_25p03() {
    let env = EnvBuilder::erp()
        .settings(
            "[proxy]\npool_mode = \"transaction\"\nidle_in_transaction_timeout = \"300ms\"\n[pool]\npool_size = 1\n",
        )
        .start()
        .await;
    let mut silent = Raw::acme(env.addr()).await;
    silent
        .send(&query_message(
            "BEGIN; UPDATE items SET name = 'held' WHERE id = 1",
        ))
        .await;
    silent.read_until_ready().await;
    let fatal = silent.expect_fatal().await;
    assert_eq!(fatal.code, "25P03", "{fatal:?}");
    // The only server of the pool was rolled back and given back: the next client
    // gets it and does not see the update.
    let next = env.connect("app", "acme").await;
    assert_eq!(items(&next).await, ACME_ITEMS);
    let direct = env.direct("pg-a", "erp").await;
    let open: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'erp' AND state LIKE 'idle in transaction%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 0);
    // A long query is not idleness.
    let busy = env.connect("app", "acme").await;
    busy.batch_execute("BEGIN").await.unwrap();
    busy.batch_execute("SELECT pg_sleep(0.6)").await.unwrap();
    busy.batch_execute("COMMIT").await.unwrap();
}
