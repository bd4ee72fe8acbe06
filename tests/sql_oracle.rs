//! The SQL classifier against PostgreSQL itself: for generated SET/RESET statements
//! (names, every quoting of values, comments between any tokens, SESSION/LOCAL), what
//! the proxy concludes must be what the server does.
//!
//! - A statement the proxy follows (`Set`) is replayed on a second session: both
//!   sessions must then report the same value for the setting.
//! - A statement the proxy neither follows nor pins must leave the session's settings
//!   as they were (outside the reported parameters, which are followed by the
//!   server's own ParameterStatus).

mod common;

use common::*;
use pgtenant::backend::CLIENT_PARAMETERS;
use pgtenant::sql::{classify, SettingChange};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use tokio_postgres::Client;

/// The session-level settings of a session, reported parameters left out.
async fn session_settings(client: &Client) -> Vec<(String, String)> {
    client
        .query(
            "SELECT name, setting FROM pg_settings WHERE source = 'session' ORDER BY name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)))
        .filter(|(name, _)| {
            !CLIENT_PARAMETERS
                .iter()
                .any(|r| r.eq_ignore_ascii_case(name))
        })
        // Taken from default_transaction_* at every transaction start, whatever a
        // session-level SET left in pg_settings.
        .filter(|(name, _)| !name.starts_with("transaction_"))
        .collect()
}

async fn current(client: &Client, name: &str) -> Option<String> {
    client
        .query_one("SELECT current_setting($1, true)", &[&name])
        .await
        .ok()
        .and_then(|row| row.get::<_, Option<String>>(0))
}

/// Runs `sql` on a clean session; `Ok(false)` if the server refused it.
async fn run_clean(client: &Client, sql: &str) -> bool {
    client.batch_execute("RESET ALL").await.unwrap();
    client.batch_execute(sql).await.is_ok()
}

fn statement() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("statement_timeout"),
        Just("Statement_Timeout"),
        Just("\"statement_timeout\""),
        Just("work_mem"),
        Just("search_path"),
        Just("myapp.flag"),
        Just("\"MyApp\".\"Flag\""),
        Just("lock_timeout"),
        Just("TimeZone"),
        Just("transaction_isolation"),
    ];
    let value = prop_oneof![
        Just("'5s'"),
        Just("E'7s'"),
        Just("E'it\\'s'"),
        Just("$$9s$$"),
        Just("$t$1min$t$"),
        Just("5000"),
        Just("-1"),
        Just("'1MB'"),
        Just("'tenant_globex', 'public'"),
        Just("\"Tenant\", public"),
        Just("tenant_acme"),
        Just("'it''s'"),
        Just("on"),
        Just("DEFAULT"),
        Just("'serializable'"),
    ];
    let comment = prop_oneof![
        Just(" "),
        Just(" /* c; 'x' */ "),
        Just(" /* a /* nested */ b */ "),
        Just(" -- note; 'x'\n "),
        Just("\n"),
    ];
    let prefix = prop_oneof![
        Just("SET"),
        Just("set SESSION"),
        Just("SET LOCAL"),
        Just("reset")
    ];
    let sep = prop_oneof![Just("="), Just("TO"), Just("to")];
    (
        prefix,
        name,
        sep,
        value,
        proptest::collection::vec(comment, 4),
    )
        .prop_map(|(prefix, name, sep, value, c)| {
            if prefix == "reset" {
                format!("RESET{}{}{}", c[0], name, c[1])
            } else {
                format!("{prefix}{}{name}{}{sep}{}{value}{}", c[0], c[1], c[2], c[3])
            }
        })
}

#[test]
fn the_classifier_agrees_with_postgresql() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (env, first, second) = runtime.block_on(async {
        let env = EnvBuilder::erp().start().await;
        let first = env.direct(ERP_HOST, "erp").await;
        let second = env.direct(ERP_HOST, "erp").await;
        (env, first, second)
    });
    let mut runner = TestRunner::new(ProptestConfig::with_cases(300));
    let result = runner.run(&statement(), |sql| {
        runtime.block_on(async {
            let read = classify(sql.as_bytes(), true);
            let before = {
                first.batch_execute("RESET ALL").await.unwrap();
                session_settings(&first).await
            };
            if !run_clean(&first, &sql).await {
                return Ok(()); // refused by the server: it changed nothing
            }
            match (&read.pin, read.settings.first()) {
                (Some(_), _) => {} // kept on its server: nothing to compare
                (None, Some(SettingChange::Set(name, replay))) => {
                    prop_assert!(
                        run_clean(&second, replay).await,
                        "replay of {sql:?} failed: {replay:?}"
                    );
                    let (a, b) = (current(&first, name).await, current(&second, name).await);
                    prop_assert_eq!(a, b, "{:?} replayed as {:?}", sql, replay);
                }
                (None, Some(SettingChange::Reset(name))) => {
                    // What the proxy sends for it on another server: the name as it
                    // canonicalised it, each part quoted.
                    let quoted: Vec<String> = name.split('.').map(|p| format!("\"{p}\"")).collect();
                    let reset = format!("RESET {}", quoted.join("."));
                    prop_assert!(run_clean(&second, &reset).await, "{:?}", reset);
                    let (a, b) = (current(&first, name).await, current(&second, name).await);
                    prop_assert_eq!(a, b, "{:?} followed as {:?}", sql, reset);
                }
                (None, Some(SettingChange::ResetAll)) => {}
                (None, None) => {
                    prop_assert_eq!(
                        before,
                        session_settings(&first).await,
                        "{:?} changed the session but is neither followed nor pinned",
                        sql
                    );
                }
            }
            Ok(())
        })
    });
    drop(env);
    if let Err(e) = result {
        panic!("{e}");
    }
}
