//! Query cancellation through the proxy: the client's CancelRequest carries the proxy's
//! key and reaches the server that runs its query, in both pool modes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

async fn cancel_a_sleeping_query(env: &Env) {
    let client = env.connect("app", "acme").await;
    // Another client keeps servers busy so a transaction-mode client may switch.
    let other = env.connect("app", "acme").await;
    other.simple_query("SELECT 1").await.unwrap();

    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(NoTls).await
    });
    let started = Instant::now();
    let err = client
        .simple_query("SELECT pg_sleep(20)")
        .await
        .expect_err("the sleep must be cancelled");
    canceller.await.unwrap().expect("cancel request sent");
    assert_eq!(
        err.code(),
        Some(&SqlState::QUERY_CANCELED),
        "{}",
        describe(&err)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        started.elapsed()
    );
    // The connection is usable afterwards and still the tenant's.
    assert_eq!(items(&client).await, ACME_ITEMS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_server_in_session_mode() {
    let env = EnvBuilder::erp().start().await;
    cancel_a_sleeping_query(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_server_in_transaction_mode() {
    let env = EnvBuilder::erp()
        .settings("[proxy]\npool_mode = \"transaction\"\n[pool]\npool_size = 2\n")
        .start()
        .await;
    cancel_a_sleeping_query(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_with_the_wrong_secret_is_ignored() {
    let env = EnvBuilder::erp().start().await;
    let client = env.connect("app", "acme").await;
    // Read the client's key from a raw session, then send a cancel with a wrong secret.
    let (mut raw, replies) = Raw::login(env.addr(), &[("user", "app"), ("database", "acme")]).await;
    let key = replies
        .into_iter()
        .find(|m| m.tag == b'K')
        .expect("BackendKeyData");
    raw.send(&query_message("SELECT pg_sleep(1.5), 'finished'"))
        .await;
    let mut cancel = Raw::connect(env.addr()).await;
    let mut body = key.body.clone();
    body[7] ^= 0xff; // wrong secret
    cancel.send(&packet(80_877_102, &body)).await;
    let replies = raw.read_until_ready().await;
    assert!(
        replies.iter().all(|m| m.tag != b'E'),
        "a cancel with the wrong secret cancelled the query: {replies:?}"
    );
    assert_eq!(items(&client).await, ACME_ITEMS);
}
