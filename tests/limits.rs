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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_s_own_client_limit_overrides_the_default() {
    // The default lets 1 client per tenant; acme's registry entry lets 3.
    let registry = ERP_REGISTRY.replace(
        "search_path = [\"tenant_acme\"]",
        "search_path = [\"tenant_acme\"]\nmax_client_conn = 3",
    );
    let env = EnvBuilder::erp()
        .registry(&registry)
        .settings("[proxy]\nmax_client_conn_per_tenant = 1\n")
        .start()
        .await;
    let mut acme = Vec::new();
    for _ in 0..3 {
        acme.push(env.connect("app", "acme").await);
    }
    let err = env
        .try_connect("app", "acme")
        .await
        .map(|_| ())
        .expect_err("a fourth acme client is refused");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "53300");
    assert!(
        db.message().contains("tenant \"acme\"")
            && db.message().contains("at most 3")
            && db.message().contains("max_client_conn"),
        "{}",
        db.message()
    );
    for c in &acme {
        assert_eq!(items(c).await, ACME_ITEMS);
    }
    // globex has no entry of its own: the default of 1 holds.
    let globex = env.connect("app", "globex").await;
    let err = env
        .try_connect("app", "globex")
        .await
        .map(|_| ())
        .expect_err("a second globex client is refused");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "53300");
    assert!(
        db.message().contains("tenant \"globex\"")
            && db.message().contains("proxy.max_client_conn_per_tenant"),
        "{}",
        db.message()
    );
    assert_eq!(items(&globex).await, GLOBEX_ITEMS);
}

/// `pool.query_wait_timeout`: a connected transaction-mode client whose query finds
/// no server within it is refused 57014 naming the setting, long before
/// `pool.checkout_timeout` would have ended its wait (53300).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_waiting_past_query_wait_timeout_gets_57014() {
    let env = EnvBuilder::erp()
        .settings(
            "[proxy]\npool_mode = \"transaction\"\n[pool]\npool_size = 1\ncheckout_timeout = \"60s\"\nquery_wait_timeout = \"300ms\"\n",
        )
        .start()
        .await;
    let holder = env.connect("app", "acme").await;
    let waiter = env.connect("app", "acme").await;
    holder.batch_execute("BEGIN").await.unwrap();
    assert_eq!(items(&holder).await, ACME_ITEMS);
    let err = tokio::time::timeout(Duration::from_secs(30), waiter.simple_query("SELECT 1"))
        .await
        .expect("refused by query_wait_timeout, not left to checkout_timeout")
        .expect_err("no server for the query");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{}", describe(&err)));
    assert_eq!(db.code().code(), "57014", "{}", describe(&err));
    assert!(
        db.message().contains("query_wait_timeout") && db.message().contains("tenant \"acme\""),
        "{}",
        db.message()
    );
    // The holder goes on; once it is done, a new client is served.
    holder.batch_execute("COMMIT").await.unwrap();
    let next = env.connect("app", "acme").await;
    assert_eq!(items(&next).await, ACME_ITEMS);
}
