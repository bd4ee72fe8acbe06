//! Stopping the proxy: clients between transactions are told (FATAL 57P01) and
//! closed; a client inside a transaction finishes it first.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_lets_transactions_finish_then_says_why() {
    let mut env = EnvBuilder::erp()
        .settings("[proxy]\nshutdown_timeout = \"10s\"\n")
        .start()
        .await;
    let mut idle = Raw::acme(env.addr()).await;
    let mut busy = Raw::acme(env.addr()).await;
    busy.send(&query_message(
        "BEGIN; UPDATE items SET name = name WHERE id = 1",
    ))
    .await;
    busy.read_until_ready().await;

    let stopping = tokio::spawn(async move {
        env.stop().await;
        env
    });
    // The idle client is told at once.
    let fatal = idle.expect_fatal().await;
    assert_eq!(fatal.code, "57P01", "{fatal:?}");
    // The client in a transaction may finish it, and is told after.
    tokio::time::sleep(Duration::from_millis(300)).await;
    busy.send(&query_message(
        "UPDATE items SET name = name WHERE id = 2; COMMIT",
    ))
    .await;
    let replies = busy.read_until_ready().await;
    assert!(replies.iter().all(|m| m.tag != b'E'), "{replies:?}");
    let fatal = busy.expect_fatal().await;
    assert_eq!(fatal.code, "57P01", "{fatal:?}");
    let env = tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("stop returns once the clients are gone")
        .unwrap();
    // Nothing was left open on the server.
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
}
