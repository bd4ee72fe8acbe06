//! Allocations per message on the hot path, counted (not timed) with the test
//! build's counting allocator: what the relay asks of the classifier and the request
//! queue for each client and server message of pgbench's transactions.

use super::*;
use crate::alloc::counting::allocations;
use crate::sql::classify;

fn cstr(s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    b
}

/// What the relay does with one client message (`relay/client_side.rs`).
fn client(txn: &mut Txn, cache: &mut PreparedCache, statements: &Statements, tag: u8, body: &[u8]) {
    let sql = match tag {
        b'Q' => read_cstr(body).map(|(sql, _)| sql),
        b'P' => read_cstr(body)
            .and_then(|(_, rest)| read_cstr(rest))
            .map(|(sql, _)| sql),
        _ => None,
    };
    let read = sql.map(|sql| classify(sql, true));
    assert!(read.as_ref().is_none_or(|r| r.is_plain()));
    let mut out = Vec::new();
    let handled = match (tag, read.as_ref()) {
        (b'Q', Some(read)) => txn.deallocate(read, Some((cache, b'T')), &mut out),
        _ if Txn::needs_rewrite(tag, body) => {
            txn.rewrite(tag, body, cache, statements, &mut out).unwrap();
            true
        }
        _ => false,
    };
    if !handled {
        txn.forwarded(tag, body, read.as_ref());
    }
    assert!(txn.take_restore().is_none());
    let mut answers = Vec::new();
    txn.take_answers(&mut answers);
}

/// What the relay does with one server message (`relay/server_side.rs`).
fn server(txn: &mut Txn, cache: &mut PreparedCache, tag: u8, body: &[u8]) {
    let mut answers = Vec::new();
    txn.take_answers(&mut answers);
    assert_eq!(txn.received(tag, body, cache), Verdict::Forward);
    answers.extend(txn.take_before_this());
    assert!(txn.take_replay().is_empty());
    assert!(!txn.take_out_of_step());
    if tag == b'Z' {
        assert!(txn.take_committed_settings().is_empty());
    }
}

/// Allocations per transaction over 100 transactions, after 10 to warm up.
fn per_transaction(mut one: impl FnMut()) -> f64 {
    for _ in 0..10 {
        one();
    }
    let before = allocations();
    for _ in 0..100 {
        one();
    }
    (allocations() - before) as f64 / 100.0
}

#[test]
fn a_tpcb_transaction_allocates_nothing() {
    let (mut txn, mut cache, statements) = (
        Txn::following_settings(100),
        PreparedCache::new(10),
        Statements::default(),
    );
    let statements_sent = [
        ("BEGIN;", "BEGIN"),
        ("UPDATE pgbench_accounts SET abalance = abalance + -4012 WHERE aid = 78123;", "UPDATE 1"),
        ("SELECT abalance FROM pgbench_accounts WHERE aid = 78123;", "SELECT 1"),
        ("UPDATE pgbench_tellers SET tbalance = tbalance + -4012 WHERE tid = 37;", "UPDATE 1"),
        ("UPDATE pgbench_branches SET bbalance = bbalance + -4012 WHERE bid = 4;", "UPDATE 1"),
        (
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (37, 4, 78123, -4012, CURRENT_TIMESTAMP);",
            "INSERT 0 1",
        ),
        ("END;", "COMMIT"),
    ]
    .map(|(sql, tag)| (cstr(sql), cstr(tag)));
    let n = per_transaction(|| {
        for (i, (query, done)) in statements_sent.iter().enumerate() {
            client(&mut txn, &mut cache, &statements, b'Q', query);
            if i == 2 {
                server(&mut txn, &mut cache, b'T', b"\0\x01abalance\0");
                server(&mut txn, &mut cache, b'D', b"\0\x01\0\0\0\x011");
            }
            server(&mut txn, &mut cache, b'C', done);
            let status = if i + 1 == statements_sent.len() {
                b"I"
            } else {
                b"T"
            };
            server(&mut txn, &mut cache, b'Z', status);
        }
    });
    assert_eq!(n, 0.0, "allocations per TPC-B transaction");
}

#[test]
fn an_extended_protocol_statement_allocates_nothing() {
    let (mut txn, mut cache, statements) = (
        Txn::following_settings(100),
        PreparedCache::new(10),
        Statements::default(),
    );
    let mut parse = cstr("");
    parse.extend(cstr(
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
    ));
    parse.extend([0, 0]);
    let bind = b"\0\0\0\0\0\x01\0\0\0\x0512345\0\0".to_vec();
    let n = per_transaction(|| {
        client(&mut txn, &mut cache, &statements, b'P', &parse);
        client(&mut txn, &mut cache, &statements, b'B', &bind);
        client(&mut txn, &mut cache, &statements, b'D', b"P\0");
        client(&mut txn, &mut cache, &statements, b'E', b"\0\0\0\0\0");
        client(&mut txn, &mut cache, &statements, b'S', b"");
        server(&mut txn, &mut cache, b'1', b"");
        server(&mut txn, &mut cache, b'2', b"");
        server(&mut txn, &mut cache, b'T', b"\0\x01abalance\0");
        server(&mut txn, &mut cache, b'D', b"\0\x01\0\0\0\x011");
        server(&mut txn, &mut cache, b'C', b"SELECT 1\0");
        server(&mut txn, &mut cache, b'Z', b"I");
    });
    assert_eq!(n, 0.0, "allocations per Parse/Bind/Describe/Execute/Sync");
}
