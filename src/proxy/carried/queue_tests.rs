//! Unit tests of the request queue: what goes to the server and what the client is
//! answered, message by message.

use super::*;

fn txn() -> Txn {
    Txn {
        max_statements: 100,
        ..Txn::default()
    }
}

/// The server-side name the pool's table gives `sql`.
fn server_name(statements: &Statements, sql: &str) -> String {
    let mut key = sql.as_bytes().to_vec();
    key.extend_from_slice(&[0, 0, 0]);
    statements.intern(&key).name.to_string()
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.extend_from_slice(&[0, 0, 0]);
    b
}

fn bind(statement: &str) -> Vec<u8> {
    let mut b = vec![0];
    b.extend_from_slice(statement.as_bytes());
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
    b
}

fn named(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b
}

/// Sends one client message the way the relay does; returns what goes to the server.
fn send(
    txn: &mut Txn,
    cache: &mut PreparedCache,
    statements: &Statements,
    tag: u8,
    body: &[u8],
) -> Vec<Bytes> {
    let mut out = Vec::new();
    if Txn::needs_rewrite(tag, body) {
        txn.rewrite(tag, body, cache, statements, &mut out).unwrap();
    } else {
        txn.sent(tag);
        out.push(frame(tag, |b| b.put_slice(body)));
    }
    out
}

fn answers(txn: &mut Txn) -> Vec<u8> {
    let mut out = Vec::new();
    txn.take_answers(&mut out);
    out.iter().map(|b| b[0]).collect()
}

fn tags(frames: &[Bytes]) -> Vec<u8> {
    frames.iter().map(|b| b[0]).collect()
}

#[test]
fn a_statement_is_made_once_per_server_and_named_by_the_proxy() {
    let (mut txn, mut cache, statements) = (txn(), PreparedCache::new(10), Statements::default());
    let out = send(
        &mut txn,
        &mut cache,
        &statements,
        b'P',
        &parse("s1", "SELECT 1"),
    );
    assert_eq!(tags(&out), b"CP", "the name is freed first");
    let name = server_name(&statements, "SELECT 1");
    assert!(out[0][6..].starts_with(name.as_bytes()));
    assert!(out[1][5..].starts_with(name.as_bytes()));
    assert_eq!(txn.received(b'3', &[], &mut cache), Verdict::Swallow);
    assert_eq!(txn.received(b'1', &[], &mut cache), Verdict::Forward);

    // The same text under another client name: answered without the server.
    let out = send(
        &mut txn,
        &mut cache,
        &statements,
        b'P',
        &parse("other", "SELECT 1"),
    );
    assert!(out.is_empty());
    assert_eq!(answers(&mut txn), b"1");
    assert!(txn.is_idle());
}

#[test]
fn bind_on_a_server_without_the_statement_reissues_the_parse() {
    let (mut txn, statements) = (txn(), Statements::default());
    let mut first_server = PreparedCache::new(10);
    send(
        &mut txn,
        &mut first_server,
        &statements,
        b'P',
        &parse("s1", "SELECT $1"),
    );
    txn.received(b'3', &[], &mut first_server);
    txn.received(b'1', &[], &mut first_server);

    let mut second_server = PreparedCache::new(10);
    let out = send(&mut txn, &mut second_server, &statements, b'B', &bind("s1"));
    assert_eq!(tags(&out), b"CPB");
    let name = server_name(&statements, "SELECT $1");
    assert!(out[2][6..].starts_with(name.as_bytes()), "Bind is renamed");
    send(
        &mut txn,
        &mut second_server,
        &statements,
        b'E',
        b"\0\0\0\0\0",
    );
    send(&mut txn, &mut second_server, &statements, b'S', b"");
    assert_eq!(
        txn.received(b'3', &[], &mut second_server),
        Verdict::Swallow
    );
    assert_eq!(
        txn.received(b'1', &[], &mut second_server),
        Verdict::Swallow
    );
    assert_eq!(
        txn.received(b'2', &[], &mut second_server),
        Verdict::Forward
    );
    assert_eq!(
        txn.received(b'C', &[], &mut second_server),
        Verdict::Forward
    );
    assert!(!txn.is_idle());
    assert_eq!(
        txn.received(b'Z', &[], &mut second_server),
        Verdict::Forward
    );
    assert!(txn.is_idle());
}

#[test]
fn answers_keep_their_place_in_a_pipeline() {
    let (mut txn, mut cache, statements) = (txn(), PreparedCache::new(10), Statements::default());
    send(
        &mut txn,
        &mut cache,
        &statements,
        b'P',
        &parse("s1", "SELECT 1"),
    );
    txn.received(b'3', &[], &mut cache);
    txn.received(b'1', &[], &mut cache);
    // Bind (unnamed) then a Parse the server already has, then Sync.
    send(&mut txn, &mut cache, &statements, b'B', &bind(""));
    send(
        &mut txn,
        &mut cache,
        &statements,
        b'P',
        &parse("s2", "SELECT 1"),
    );
    send(&mut txn, &mut cache, &statements, b'S', b"");
    assert!(
        answers(&mut txn).is_empty(),
        "ParseComplete may not overtake BindComplete"
    );
    txn.received(b'2', &[], &mut cache);
    assert_eq!(answers(&mut txn), b"1");
    txn.received(b'Z', &[], &mut cache);
    assert!(txn.is_idle());
}

#[test]
fn an_error_skips_to_sync_and_forgets_statements_not_made() {
    let (mut txn, mut cache, statements) = (txn(), PreparedCache::new(10), Statements::default());
    send(
        &mut txn,
        &mut cache,
        &statements,
        b'P',
        &parse("bad", "SELEC 1"),
    );
    send(&mut txn, &mut cache, &statements, b'B', &bind("bad"));
    send(
        &mut txn,
        &mut cache,
        &statements,
        b'P',
        &parse("s2", "SELECT 2"),
    );
    send(&mut txn, &mut cache, &statements, b'S', b"");
    assert_eq!(txn.received(b'E', &[], &mut cache), Verdict::Forward);
    assert!(
        !cache.touch(&server_name(&statements, "SELEC 1")),
        "the failed statement is not on the server"
    );
    assert!(
        !cache.touch(&server_name(&statements, "SELECT 2")),
        "the skipped Parse made nothing either"
    );
    assert!(answers(&mut txn).is_empty());
    txn.received(b'Z', &[], &mut cache);
    assert!(txn.is_idle());
}

#[test]
fn close_is_answered_by_the_proxy() {
    let (mut txn, mut cache, statements) = (txn(), PreparedCache::new(10), Statements::default());
    send(
        &mut txn,
        &mut cache,
        &statements,
        b'P',
        &parse("s1", "SELECT 1"),
    );
    txn.received(b'3', &[], &mut cache);
    txn.received(b'1', &[], &mut cache);
    let out = send(&mut txn, &mut cache, &statements, b'C', &named(b'S', "s1"));
    assert!(out.is_empty());
    assert_eq!(answers(&mut txn), b"3");
    // The client's name is gone: a Bind passes through for the server to refuse.
    let out = send(&mut txn, &mut cache, &statements, b'B', &bind("s1"));
    assert!(out[0][5..].starts_with(b"\0s1\0"));
}

#[test]
fn a_name_given_behind_a_pipelined_discard_all_survives_it() {
    let (mut txn, mut cache, statements) = (txn(), PreparedCache::new(10), Statements::default());
    txn.follows_settings = true;
    send(
        &mut txn,
        &mut cache,
        &statements,
        b'P',
        &parse("old", "SELECT 1"),
    );
    for tag in [b'3', b'1'] {
        txn.received(tag, &[], &mut cache);
    }
    // DISCARD ALL, then (pipelined, before its answer) the same name again and a
    // new one: both are made after the drop.
    let discard = crate::sql::classify(b"DISCARD ALL", true);
    txn.forwarded(b'Q', b"DISCARD ALL\0", Some(&discard));
    send(
        &mut txn,
        &mut cache,
        &statements,
        b'P',
        &parse("old", "SELECT 2"),
    );
    send(
        &mut txn,
        &mut cache,
        &statements,
        b'P',
        &parse("new", "SELECT 3"),
    );
    txn.received(b'C', b"DISCARD ALL\0", &mut cache);
    txn.received(b'Z', b"I", &mut cache);
    for tag in [b'3', b'1', b'3', b'1'] {
        txn.received(tag, &[], &mut cache);
    }
    assert!(txn.is_idle());
    assert!(
        txn.statements.contains_key(&b"old"[..]),
        "named again after the drop"
    );
    assert!(txn.statements.contains_key(&b"new"[..]));

    // Without a name given since, the drop takes them all.
    txn.forwarded(b'Q', b"DISCARD ALL\0", Some(&discard));
    txn.received(b'C', b"DISCARD ALL\0", &mut cache);
    assert!(txn.statements.is_empty());
}

#[test]
fn a_full_server_cache_closes_the_least_recently_used_statement() {
    let (mut txn, mut cache, statements) = (txn(), PreparedCache::new(1), Statements::default());
    send(
        &mut txn,
        &mut cache,
        &statements,
        b'P',
        &parse("a", "SELECT 1"),
    );
    txn.received(b'3', &[], &mut cache);
    txn.received(b'1', &[], &mut cache);
    let out = send(
        &mut txn,
        &mut cache,
        &statements,
        b'P',
        &parse("b", "SELECT 2"),
    );
    assert_eq!(
        tags(&out),
        b"CCP",
        "the evicted one, then the new name freed"
    );
    assert_eq!(txn.received(b'3', &[], &mut cache), Verdict::Swallow);
    assert_eq!(txn.received(b'3', &[], &mut cache), Verdict::Swallow);
    assert_eq!(txn.received(b'1', &[], &mut cache), Verdict::Forward);
    assert!(txn.is_idle());
}

#[test]
fn syncs_sent_during_copy_in_are_not_awaited() {
    let (mut txn, mut cache, statements) = (txn(), PreparedCache::new(10), Statements::default());
    // tokio-postgres: Bind, Execute, Sync, then the data, CopyDone, Sync.
    for (tag, body) in [
        (b'B', bind("")),
        (b'E', vec![0, 0, 0, 0, 0]),
        (b'S', vec![]),
    ] {
        send(&mut txn, &mut cache, &statements, tag, &body);
    }
    txn.received(b'2', &[], &mut cache);
    txn.received(b'G', &[], &mut cache);
    for tag in [b'd', b'd', b'S', b'c', b'S'] {
        send(&mut txn, &mut cache, &statements, tag, b"");
    }
    txn.received(b'C', &[], &mut cache);
    assert!(
        !txn.is_idle(),
        "the Sync after CopyDone is still to be answered"
    );
    txn.received(b'Z', &[], &mut cache);
    assert!(txn.is_idle());
}

#[test]
fn a_whole_copy_sent_before_the_server_starts_it() {
    let (mut txn, mut cache, statements) = (txn(), PreparedCache::new(10), Statements::default());
    for tag in [b'B', b'E', b'S', b'd', b'c', b'S'] {
        let body = if tag == b'B' {
            bind("")
        } else {
            vec![0, 0, 0, 0, 0]
        };
        send(&mut txn, &mut cache, &statements, tag, &body);
    }
    for tag in [b'2', b'G', b'C'] {
        txn.received(tag, &[], &mut cache);
    }
    txn.received(b'Z', &[], &mut cache);
    assert!(txn.is_idle());
}

fn error(code: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    b.extend_from_slice(b"ERROR\0C");
    b.extend_from_slice(code.as_bytes());
    b.extend_from_slice(b"\0Mno\0\0");
    b
}

#[test]
fn a_search_path_the_proxy_sets_is_swallowed_and_settled_at_ready() {
    let (mut txn, mut cache) = (txn(), PreparedCache::new(10));
    let path: Arc<str> = "SET search_path TO \"t\"".into();
    // Attached: confirmed once its own transaction committed.
    txn.set_path(path.clone(), PathSet::Attach);
    txn.sent(b'Q');
    assert_eq!(txn.received(b'C', b"SET\0", &mut cache), Verdict::Swallow);
    assert_eq!(txn.received(b'S', b"", &mut cache), Verdict::Forward);
    assert_eq!(
        txn.received(b'Z', b"I", &mut cache),
        Verdict::Path(PathOutcome::Confirmed(path.clone()))
    );
    assert_eq!(
        txn.received(b'C', b"SELECT 1\0", &mut cache),
        Verdict::Forward
    );
    txn.received(b'Z', b"I", &mut cache);
    assert!(txn.is_idle());

    // An error closes the server, whatever the client's statement did next.
    txn.set_path(path.clone(), PathSet::Attach);
    assert_eq!(
        txn.received(b'E', &error("57014"), &mut cache),
        Verdict::Swallow
    );
    assert!(matches!(
        txn.received(b'Z', b"I", &mut cache),
        Verdict::Path(PathOutcome::Failed(e)) if e.code == "57014"
    ));

    // Restoring after a reset in a block that had failed: the reset failed too.
    txn.set_path(path.clone(), PathSet::Restore);
    txn.received(b'E', &error("25P02"), &mut cache);
    assert_eq!(
        txn.received(b'Z', b"E", &mut cache),
        Verdict::Path(PathOutcome::Unchanged)
    );
    // Restored inside an open block: not known once the block ends.
    txn.set_path(path, PathSet::Restore);
    txn.received(b'C', b"SET\0", &mut cache);
    assert_eq!(
        txn.received(b'Z', b"T", &mut cache),
        Verdict::Path(PathOutcome::Unknown)
    );
}

#[test]
fn a_refused_query_is_answered_with_the_last_status() {
    let (mut txn, mut cache) = (txn(), PreparedCache::new(10));
    txn.sent(b'Q');
    txn.received(b'Z', b"T", &mut cache);
    txn.refuse(frame(b'E', |_| {}));
    assert_eq!(answers(&mut txn), b"EZ");
    assert!(txn.is_idle());
}

#[test]
fn between_transactions_parse_and_sync_need_no_server() {
    let (mut txn, statements) = (txn(), Statements::default());
    assert!(txn
        .answer_detached(b'P', &parse("s1", "SELECT 1"), None, &statements)
        .unwrap());
    assert!(txn.answer_detached(b'S', b"", None, &statements).unwrap());
    assert_eq!(answers(&mut txn), b"1Z");
    assert!(
        !txn.answer_detached(b'B', &bind("s1"), None, &statements)
            .unwrap(),
        "Bind needs a server"
    );
    // The statement is made at first use.
    let mut cache = PreparedCache::new(10);
    let out = send(&mut txn, &mut cache, &statements, b'B', &bind("s1"));
    assert_eq!(tags(&out), b"CPB");
}

#[test]
fn kept_copies_of_sync_and_execute_are_the_messages_themselves() {
    for (tag, body) in [
        (b'S', &[][..]),
        (b'E', &[0, 0, 0, 0, 0][..]),
        (b'E', &[b'p', 0, 0, 0, 0, 1][..]),
    ] {
        assert_eq!(kept_copy(tag, body), frame(tag, |b| b.put_slice(body)));
    }
}

#[test]
fn a_client_holds_a_bounded_amount_of_statement_text() {
    let (mut txn, mut cache, statements) = (txn(), PreparedCache::new(10), Statements::default());
    let big = "x".repeat(30 << 20);
    let mut out = Vec::new();
    for name in ["a", "b"] {
        txn.rewrite(
            b'P',
            &parse(name, &format!("SELECT '{name}{big}'")),
            &mut cache,
            &statements,
            &mut out,
        )
        .unwrap();
    }
    let third = txn.rewrite(
        b'P',
        &parse("c", &format!("SELECT 'c{big}'")),
        &mut cache,
        &statements,
        &mut out,
    );
    assert!(third.is_err(), "90 MiB of statement text for one client");
    // Naming an existing name again takes nothing more.
    txn.rewrite(
        b'P',
        &parse("a", "SELECT 1"),
        &mut cache,
        &statements,
        &mut out,
    )
    .unwrap();
}
