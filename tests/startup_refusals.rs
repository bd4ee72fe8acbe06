//! Startups the proxy cannot serve are refused with 0A000 instead of being turned
//! into something else: a replication connection, startup options that are not
//! parameter settings. Ordinary startups with settings in `options` still work.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_and_unknown_options_are_refused_with_0a000() {
    let env = EnvBuilder::erp().start().await;
    let cases: &[(&str, &str, &str)] = &[
        (
            "replication",
            "database",
            "replication connections (replication=database) are not supported by pgtenant; connect to the PostgreSQL server directly",
        ),
        (
            "replication",
            "true",
            "replication connections (replication=true) are not supported by pgtenant; connect to the PostgreSQL server directly",
        ),
        (
            "options",
            "-c work_mem=8MB -d 5",
            "startup option \"-d\" is not supported by pgtenant; options may only set parameters (-c name=value or --name=value)",
        ),
    ];
    for (name, value, message) in cases {
        let mut raw = Raw::connect(env.addr()).await;
        raw.send(&startup_packet(
            PROTOCOL_3_0,
            &[("user", "app"), ("database", "acme"), (name, value)],
        ))
        .await;
        let err = raw.expect_fatal().await;
        assert_eq!(err.code, "0A000", "{name}={value}: {err:?}");
        assert_eq!(err.severity, "FATAL", "{name}={value}: {err:?}");
        assert_eq!(err.message, *message, "{name}={value}");
    }

    // replication=false is an ordinary session, and settings in options are carried.
    let (mut raw, _) = Raw::login(
        env.addr(),
        &[
            ("user", "app"),
            ("database", "acme"),
            ("replication", "false"),
            ("options", "-c work_mem=8MB"),
        ],
    )
    .await;
    raw.send(&query_message("SHOW work_mem")).await;
    let rows: Vec<_> = raw
        .read_until_ready()
        .await
        .into_iter()
        .filter(|m| m.tag == b'D')
        .map(|m| m.data_row())
        .collect();
    assert_eq!(rows, vec![vec![Some("8MB".to_string())]]);

    // psql, as a person would try it, sees the message.
    let out = env
        .psql(&[
            "-d",
            "user=app dbname=acme replication=database",
            "-c",
            "IDENTIFY_SYSTEM",
        ])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "FATAL:  replication connections (replication=database) are not supported by pgtenant"
        ),
        "{stderr}"
    );
}
