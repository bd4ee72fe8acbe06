//! Fuzz targets (proptest, stable Rust) for the transaction-mode request queue.
//!
//! A client sends arbitrary pipelines of Parse/Bind/Describe/Execute/Close/Flush/
//! Sync and simple queries. The same pipelines go once straight to a small model
//! server and once through the queue, driven as the relay drives it: answered
//! detached where it can be, otherwise on one of two model servers, which the
//! client leaves whenever a transaction ends. What must hold: the client sees
//! exactly what the model server would have told it directly (every answer
//! matched to its request, in order, none of the proxy's own requests showing);
//! nothing is left in flight once everything is answered; and the queue stays
//! within a bound of what is in flight. A second target feeds arbitrary server
//! messages: no panic, and the queue never grows on server input.

use std::collections::HashMap;

use bytes::{BufMut, Bytes};
use proptest::prelude::*;

use super::*;
use crate::fuzz::config;
use crate::sql::classify;

const NAMES: [&str; 4] = ["", "s1", "s2", "s3"];
const TEXTS: [&str; 3] = ["SELECT 1", "SELECT 2", "SELEC 3"];
const QUERIES: [&str; 4] = ["SELECT 1", "BEGIN", "COMMIT", "SELEC x"];

#[derive(Debug, Clone)]
enum Op {
    Parse(usize, usize),
    Bind(usize),
    Describe(usize),
    Execute,
    Close(usize),
    Flush,
    Sync,
    Query(usize),
}

fn cstr(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.push(0);
}

impl Op {
    /// The client message: tag and body.
    fn message(&self) -> (u8, Vec<u8>) {
        let mut b = Vec::new();
        let tag = match *self {
            Op::Parse(name, text) => {
                cstr(&mut b, NAMES[name]);
                cstr(&mut b, TEXTS[text]);
                b.extend_from_slice(&[0, 0]);
                b'P'
            }
            Op::Bind(name) => {
                cstr(&mut b, "");
                cstr(&mut b, NAMES[name]);
                b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                b'B'
            }
            Op::Describe(name) => {
                b.push(b'S');
                cstr(&mut b, NAMES[name]);
                b'D'
            }
            Op::Execute => {
                cstr(&mut b, "");
                b.extend_from_slice(&[0, 0, 0, 0]);
                b'E'
            }
            Op::Close(name) => {
                b.push(b'S');
                cstr(&mut b, NAMES[name]);
                b'C'
            }
            Op::Flush => b'H',
            Op::Sync => b'S',
            Op::Query(q) => {
                cstr(&mut b, QUERIES[q]);
                b'Q'
            }
        };
        (tag, b)
    }
}

/// A pipeline: extended-protocol messages ended by a Sync, or one simple query.
fn segment() -> impl Strategy<Value = Vec<Op>> {
    let name = 0..NAMES.len();
    let message = prop_oneof![
        // A named Parse between transactions is answered by the proxy and made on
        // a server at its first Bind (documented): its syntax error comes there.
        // So only unnamed statements have bad text here.
        3 => (name.clone(), 0..TEXTS.len())
            .prop_map(|(n, t)| Op::Parse(n, if n == 0 { t } else { t % 2 })),
        3 => name.clone().prop_map(Op::Bind),
        1 => name.clone().prop_map(Op::Describe),
        3 => Just(Op::Execute),
        1 => name.prop_map(Op::Close),
        1 => Just(Op::Flush),
    ];
    prop_oneof![
        3 => proptest::collection::vec(message, 0..6).prop_map(|mut ops| {
            ops.push(Op::Sync);
            ops
        }),
        1 => (0..QUERIES.len()).prop_map(|q| vec![Op::Query(q)]),
    ]
}

/// What a client sees of one server message: its tag, and an error's SQLSTATE.
type Seen = (u8, String);

fn seen(message: &[u8]) -> Seen {
    let code = match message[0] {
        b'E' => messages::parse_error_fields(&message[5..]).code,
        b'Z' => (message[5] as char).to_string(),
        _ => String::new(),
    };
    (message[0], code)
}

/// A server that behaves as PostgreSQL does for these messages (it does not refuse
/// statements in a failed transaction block, and forgets the unnamed statement at a
/// Sync: no client of a transaction pooler may count on it past one).
#[derive(Default)]
struct ModelServer {
    statements: HashMap<Vec<u8>, Vec<u8>>,
    portal: bool,
    status: u8,
    skipping: bool,
    /// Named statements the server made, ever: its memory in the model.
    made: usize,
}

fn error(code: &str, message: &str) -> Bytes {
    messages::build(|buf| {
        messages::message(buf, b'E', |b| {
            for (field, value) in [(b'S', "ERROR"), (b'C', code), (b'M', message)] {
                b.put_u8(field);
                b.put_slice(value.as_bytes());
                b.put_u8(0);
            }
            b.put_u8(0);
        })
    })
}

fn reply(tag: u8, body: &[u8]) -> Bytes {
    frame(tag, |b| b.put_slice(body))
}

impl ModelServer {
    fn new() -> ModelServer {
        ModelServer {
            status: b'I',
            ..ModelServer::default()
        }
    }

    fn fail(&mut self, code: &str, message: &str, out: &mut Vec<Bytes>) {
        out.push(error(code, message));
        self.skipping = true;
        if self.status == b'T' {
            self.status = b'E';
        }
    }

    fn missing(name: &[u8]) -> String {
        match name {
            [] => "unnamed prepared statement does not exist".to_string(),
            name => format!(
                "prepared statement \"{}\" does not exist",
                String::from_utf8_lossy(name)
            ),
        }
    }

    /// The server's answers to one message.
    fn handle(&mut self, message: &[u8]) -> Vec<Bytes> {
        let (tag, body) = (message[0], &message[5..]);
        let mut out = Vec::new();
        if self.skipping && tag != b'S' {
            return out;
        }
        match tag {
            b'P' => {
                let (name, rest) = read_cstr(body).unwrap();
                let (text, _) = read_cstr(rest).unwrap();
                if !name.is_empty() && self.statements.contains_key(name) {
                    let message = format!(
                        "prepared statement \"{}\" already exists",
                        String::from_utf8_lossy(name)
                    );
                    self.fail("42P05", &message, &mut out);
                } else if text.starts_with(b"SELEC ") {
                    self.fail("42601", "syntax error at or near \"SELEC\"", &mut out);
                } else {
                    self.made += usize::from(!name.is_empty());
                    self.statements.insert(name.to_vec(), text.to_vec());
                    out.push(reply(b'1', b""));
                }
            }
            b'B' => {
                let (_, rest) = read_cstr(body).unwrap();
                let (name, _) = read_cstr(rest).unwrap();
                if self.statements.contains_key(name) {
                    self.portal = true;
                    out.push(reply(b'2', b""));
                } else {
                    self.fail("26000", &Self::missing(name), &mut out);
                }
            }
            b'D' => {
                let (name, _) = read_cstr(&body[1..]).unwrap();
                if self.statements.contains_key(name) {
                    out.push(reply(b't', b"\0\0"));
                    out.push(reply(b'T', b"\0\0"));
                } else {
                    self.fail("26000", &Self::missing(name), &mut out);
                }
            }
            b'E' if self.portal => {
                out.push(reply(b'D', b"\0\0"));
                out.push(reply(b'C', b"SELECT 1\0"));
            }
            b'E' => self.fail("34000", "portal \"\" does not exist", &mut out),
            b'C' => {
                let (name, _) = read_cstr(&body[1..]).unwrap();
                self.statements.remove(name);
                out.push(reply(b'3', b""));
            }
            b'S' => {
                self.skipping = false;
                self.statements.remove(&b""[..]);
                if self.status == b'I' {
                    self.portal = false;
                }
                out.push(reply(b'Z', &[self.status]));
            }
            b'Q' => {
                let (sql, _) = read_cstr(body).unwrap();
                self.statements.remove(&b""[..]);
                self.portal = false;
                match sql {
                    b"BEGIN" => {
                        out.push(reply(b'C', b"BEGIN\0"));
                        self.status = b'T';
                    }
                    b"COMMIT" => {
                        let done: &[u8] = match self.status {
                            b'E' => b"ROLLBACK\0",
                            _ => b"COMMIT\0",
                        };
                        out.push(reply(b'C', done));
                        self.status = b'I';
                    }
                    b"SELECT 1" => {
                        out.push(reply(b'T', b"\0\0"));
                        out.push(reply(b'D', b"\0\0"));
                        out.push(reply(b'C', b"SELECT 1\0"));
                    }
                    _ => self.fail("42601", "syntax error at or near \"SELEC\"", &mut out),
                }
                self.skipping = false;
                out.push(reply(b'Z', &[self.status]));
            }
            _ => {}
        }
        out
    }
}

/// `ops` without a Parse of a name the client already holds. PostgreSQL refuses it
/// (42P05); the proxy gives the name the new text. Refusing it would mean answering
/// an error itself and skipping what the server goes on to run; that difference is
/// documented, not modelled.
fn without_reparse(ops: Vec<Op>) -> Vec<Op> {
    let mut server = ModelServer::new();
    let mut kept = Vec::new();
    for op in ops {
        if let Op::Parse(name, _) = op {
            if name != 0
                && !server.skipping
                && server.statements.contains_key(NAMES[name].as_bytes())
            {
                continue;
            }
        }
        let (tag, body) = op.message();
        server.handle(&frame(tag, |b| b.put_slice(&body)));
        kept.push(op);
    }
    kept
}

/// What the client sees talking to the model server directly.
fn direct(ops: &[Op]) -> Vec<Seen> {
    let mut server = ModelServer::new();
    let mut seen_by_client = Vec::new();
    for op in ops {
        let (tag, body) = op.message();
        for answer in server.handle(&frame(tag, |b| b.put_slice(&body))) {
            seen_by_client.push(seen(&answer));
        }
    }
    seen_by_client
}

/// A server connection of the pool: the model server and the proxy's record of it.
struct Conn {
    server: ModelServer,
    cache: PreparedCache,
}

/// The relay, reduced to what it does with the queue.
struct Relay {
    txn: Txn,
    statements: Statements,
    conns: Vec<Conn>,
    attached: Option<usize>,
    /// Which server the next attach takes (the pool's choice, driven by the case).
    picks: Vec<usize>,
    to_client: Vec<Seen>,
    most_in_flight: usize,
}

impl Relay {
    fn new(picks: Vec<usize>, cache: usize) -> Relay {
        let conn = || Conn {
            server: ModelServer::new(),
            cache: PreparedCache::new(cache),
        };
        Relay {
            txn: Txn::following_settings(100),
            statements: Statements::default(),
            conns: vec![conn(), conn()],
            attached: None,
            picks,
            to_client: Vec::new(),
            most_in_flight: 0,
        }
    }

    fn answers(&mut self) {
        let mut out = Vec::new();
        self.txn.take_answers(&mut out);
        self.to_client.extend(out.iter().map(|m| seen(m)));
    }

    fn client_sends(&mut self, tag: u8, body: &[u8]) {
        let read = matches!(tag, b'Q').then(|| classify(read_cstr(body).unwrap().0, true));
        if self.attached.is_none() {
            let detached = self
                .txn
                .answer_detached(tag, body, read.as_ref(), &self.statements)
                .expect("within the statement allowance");
            if detached {
                return self.answers();
            }
            let pick = self.picks.pop().unwrap_or(0) % self.conns.len();
            self.attached = Some(pick);
        }
        let at = self.attached.expect("attached above");
        let conn = &mut self.conns[at];
        let mut out = Vec::new();
        let handled = match (tag, read.as_ref()) {
            (b'Q', Some(read)) => {
                self.txn
                    .deallocate(read, Some((&mut conn.cache, conn.server.status)), &mut out)
            }
            _ if Txn::needs_rewrite(tag, body) => {
                self.txn
                    .rewrite(tag, body, &mut conn.cache, &self.statements, &mut out)
                    .expect("within the statement allowance");
                true
            }
            _ => false,
        };
        if !handled {
            self.txn.forwarded(tag, body, read.as_ref());
            out.push(frame(tag, |b| b.put_slice(body)));
        }
        self.most_in_flight = self.most_in_flight.max(self.txn.queue.len());
        self.answers();
        self.server_gets(out);
    }

    /// The attached server answers `messages`; its answers go through the queue.
    fn server_gets(&mut self, mut messages: Vec<Bytes>) {
        while !messages.is_empty() {
            let Some(at) = self.attached else {
                panic!("messages for a server after the client let it go: {messages:?}");
            };
            let mut replies = Vec::new();
            for message in messages.drain(..) {
                replies.extend(self.conns[at].server.handle(&message));
            }
            for reply in replies {
                let conn = &mut self.conns[at];
                let mut answers = Vec::new();
                self.txn.take_answers(&mut answers);
                let verdict = self.txn.received(reply[0], &reply[5..], &mut conn.cache);
                answers.extend(self.txn.take_before_this());
                messages.extend(self.txn.take_replay());
                self.txn.take_out_of_step();
                self.to_client.extend(answers.iter().map(|m| seen(m)));
                match verdict {
                    Verdict::Forward => self.to_client.push(seen(&reply)),
                    Verdict::Swallow => {}
                    Verdict::Path(_) => panic!("no search_path was set"),
                }
                if reply[0] == b'Z' && self.txn.is_idle() && conn.server.status == b'I' {
                    self.attached = None;
                    self.txn.release();
                }
            }
        }
        self.answers();
    }
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(segment(), 1..10).prop_map(|s| without_reparse(s.concat()))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_client_sees_what_the_server_would_have_said(
        ops in ops(),
        picks in proptest::collection::vec(0usize..2, 0..16),
        cache in 1usize..4,
    ) {
        let want = direct(&ops);
        let mut relay = Relay::new(picks, cache);
        let mut sent = 0;
        for op in &ops {
            let (tag, body) = op.message();
            relay.client_sends(tag, &body);
            sent += 1;
        }
        prop_assert_eq!(&relay.to_client, &want, "through the proxy vs directly, for {:?}", ops);
        // Everything answered: nothing in flight, and in a transaction only while
        // the server says so.
        prop_assert!(relay.txn.is_idle(), "left in flight: {:?}", relay.txn.queue);
        prop_assert!(relay.txn.statements.len() <= NAMES.len());
        // Per client message at most: a Close of an evicted statement, a Close of
        // the name, and the Parse, besides its own request.
        prop_assert!(relay.most_in_flight <= 4 * sent, "{} in flight", relay.most_in_flight);
        for conn in &relay.conns {
            prop_assert!(conn.cache.len() <= cache);
        }
    }

    #[test]
    fn arbitrary_server_messages_never_grow_the_queue(
        ops in ops(),
        replies in proptest::collection::vec(
            (
                proptest::sample::select(b"123ntTDCIsEGZSAKNHdcVW".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..24),
            ),
            0..64,
        ),
    ) {
        let statements = Statements::default();
        let mut cache = PreparedCache::new(2);
        let mut txn = Txn::following_settings(100);
        for op in &ops {
            let (tag, body) = op.message();
            let mut out = Vec::new();
            if Txn::needs_rewrite(tag, &body) {
                txn.rewrite(tag, &body, &mut cache, &statements, &mut out).unwrap();
            } else {
                let read = (tag == b'Q').then(|| classify(read_cstr(&body).unwrap().0, true));
                txn.forwarded(tag, &body, read.as_ref());
            }
        }
        for (tag, body) in replies {
            let before = txn.queue.len();
            let mut out = Vec::new();
            txn.take_answers(&mut out);
            let _ = txn.received(tag, &body, &mut cache);
            let _ = txn.take_before_this();
            let replay = txn.take_replay();
            // A retried segment is sent again: its requests are back in flight.
            prop_assert!(txn.queue.len() <= before + replay.len(), "{} -> {}", before, txn.queue.len());
            prop_assert!(cache.len() <= 2);
        }
    }
}

/// Found by the target above: a client that waits for an error (Flush) and then sends
/// more before its Sync got CloseComplete/ParseComplete from the proxy for messages
/// the server was ignoring, and lost a statement name the server still had.
#[test]
fn after_an_error_the_proxy_answers_nothing_until_the_sync() {
    use Op::*;
    let ops = [
        Parse(1, 0),
        Sync,
        Bind(0),
        Flush,
        Close(1),
        Parse(2, 0),
        Bind(1),
        Sync,
        Bind(1),
        Execute,
        Bind(2),
        Sync,
    ];
    let mut relay = Relay::new(vec![], 2);
    for op in &ops {
        let (tag, body) = op.message();
        relay.client_sends(tag, &body);
    }
    let tags: Vec<u8> = relay.to_client.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"1ZEZ2DCEZ", "{:?}", relay.to_client);
    assert_eq!(relay.to_client, direct(&ops));
    assert!(relay.txn.is_idle());
}
