//! Property test of the transaction-mode request queue: random extended-protocol
//! conversations go once straight to a model server and once through `Txn` to two
//! model servers taking turns (with a tiny statement cache, so statements are
//! re-prepared and evicted). The client must see the same answers in the same order.

use std::collections::HashSet;

use bytes::Bytes;
use pgtenant::backend::PreparedCache;
use pgtenant::pool::statements::Statements;
use pgtenant::proxy::carried::queue::{Txn, Verdict};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A message as both sides see it: tag and body.
#[derive(Debug, Clone)]
struct Msg {
    tag: u8,
    body: Vec<u8>,
}

fn cstr(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.push(0);
}

fn parse(name: &str, sql: &str) -> Msg {
    let mut body = Vec::new();
    cstr(&mut body, name);
    cstr(&mut body, sql);
    body.extend_from_slice(&[0, 0]);
    Msg { tag: b'P', body }
}

fn bind(statement: &str) -> Msg {
    let mut body = vec![0];
    cstr(&mut body, statement);
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    Msg { tag: b'B', body }
}

fn describe(statement: &str) -> Msg {
    let mut body = vec![b'S'];
    cstr(&mut body, statement);
    Msg { tag: b'D', body }
}

fn close(statement: &str) -> Msg {
    let mut body = vec![b'S'];
    cstr(&mut body, statement);
    Msg { tag: b'C', body }
}

fn simple(tag: u8) -> Msg {
    let body = if tag == b'E' {
        vec![0, 0, 0, 0, 0]
    } else {
        vec![]
    };
    Msg { tag, body }
}

fn cstr_at(body: &[u8]) -> (String, &[u8]) {
    let end = body.iter().position(|&b| b == 0).unwrap();
    (
        String::from_utf8(body[..end].to_vec()).unwrap(),
        &body[end + 1..],
    )
}

/// A PostgreSQL backend as far as the extended protocol goes: prepared statements,
/// the unnamed portal, and "skip to Sync" after an error. Answers are tags.
#[derive(Default)]
struct Server {
    statements: HashSet<String>,
    failed: bool,
    portal: bool,
}

impl Server {
    fn handle(&mut self, msg: &Msg) -> Vec<u8> {
        if self.failed && msg.tag != b'S' {
            return vec![];
        }
        let error = |s: &mut Server| {
            s.failed = true;
            vec![b'E']
        };
        match msg.tag {
            b'P' => {
                let (name, rest) = cstr_at(&msg.body);
                let (sql, _) = cstr_at(rest);
                if sql.contains("bad") || (!name.is_empty() && self.statements.contains(&name)) {
                    return error(self);
                }
                if !name.is_empty() {
                    self.statements.insert(name);
                }
                vec![b'1']
            }
            b'B' => {
                let (_, rest) = cstr_at(&msg.body);
                let (name, _) = cstr_at(rest);
                if !self.statements.contains(&name) {
                    return error(self);
                }
                self.portal = true;
                vec![b'2']
            }
            b'D' => {
                let (name, _) = cstr_at(&msg.body[1..]);
                if !self.statements.contains(&name) {
                    return error(self);
                }
                vec![b't', b'T']
            }
            b'E' if self.portal => vec![b'D', b'C'],
            b'E' => error(self),
            b'C' => {
                let (name, _) = cstr_at(&msg.body[1..]);
                self.statements.remove(&name);
                vec![b'3']
            }
            b'S' => {
                self.failed = false;
                self.portal = false;
                vec![b'Z']
            }
            other => panic!("model server got {}", other as char),
        }
    }
}

/// A random conversation: batches of messages, each ending in Sync. Statement names
/// the client uses are its own; it never re-Parses a name it has not closed.
fn conversation(rng: &mut StdRng) -> Vec<Vec<Msg>> {
    let texts = ["SELECT 1", "SELECT 2", "SELECT 3", "SELECT bad"];
    let mut open: Vec<String> = Vec::new();
    let mut next = 0;
    (0..rng.gen_range(1..8))
        .map(|_| {
            let mut batch = Vec::new();
            for _ in 0..rng.gen_range(0..6) {
                match rng.gen_range(0..6) {
                    0 | 1 => {
                        let name = format!("c{next}");
                        next += 1;
                        batch.push(parse(&name, texts[rng.gen_range(0..texts.len())]));
                        open.push(name);
                    }
                    2 if !open.is_empty() => {
                        let name = open[rng.gen_range(0..open.len())].clone();
                        batch.push(bind(&name));
                        batch.push(simple(b'E'));
                    }
                    3 if !open.is_empty() => {
                        batch.push(describe(&open[rng.gen_range(0..open.len())].clone()));
                    }
                    4 if !open.is_empty() => {
                        let name = open.swap_remove(rng.gen_range(0..open.len()));
                        batch.push(close(&name));
                    }
                    _ => batch.push(parse("", texts[rng.gen_range(0..3)])),
                }
            }
            batch.push(simple(b'S'));
            batch
        })
        .collect()
}

fn unframe(bytes: &Bytes) -> Msg {
    Msg {
        tag: bytes[0],
        body: bytes[5..].to_vec(),
    }
}

/// What the client sees through the proxy; each batch may land on either server.
fn through_proxy(batches: &[Vec<Msg>], rng: &mut StdRng) -> Vec<u8> {
    let statements = Statements::default();
    let mut servers: Vec<(Server, PreparedCache)> = (0..2)
        .map(|_| (Server::default(), PreparedCache::new(2)))
        .collect();
    let mut txn = Txn::following_settings(10_000);
    let mut seen = Vec::new();
    for batch in batches {
        let (server, cache) = &mut servers[rng.gen_range(0..2)];
        let mut to_server = Vec::new();
        for msg in batch {
            if Txn::needs_rewrite(msg.tag, &msg.body) {
                let mut out = Vec::new();
                txn.rewrite(msg.tag, &msg.body, cache, &statements, &mut out)
                    .unwrap();
                to_server.extend(out.iter().map(unframe));
            } else {
                txn.sent(msg.tag);
                to_server.push(msg.clone());
            }
        }
        let mut answers = Vec::new();
        txn.take_answers(&mut answers);
        seen.extend(answers.iter().map(|b| b[0]));
        for msg in &to_server {
            for tag in server.handle(msg) {
                let mut answers = Vec::new();
                txn.take_answers(&mut answers);
                seen.extend(answers.iter().map(|b| b[0]));
                if txn.received(tag, &[], cache) == Verdict::Forward {
                    seen.push(tag);
                }
            }
        }
        let mut answers = Vec::new();
        txn.take_answers(&mut answers);
        seen.extend(answers.iter().map(|b| b[0]));
        assert!(
            txn.is_idle(),
            "requests left in flight after a Sync was answered"
        );
    }
    seen
}

fn direct(batches: &[Vec<Msg>]) -> Vec<u8> {
    let mut server = Server::default();
    batches
        .iter()
        .flatten()
        .flat_map(|m| server.handle(m))
        .collect()
}

#[test]
fn clients_see_what_a_direct_server_would_answer() {
    let mut rng = StdRng::seed_from_u64(0x7e4a_2026);
    for case in 0..20_000 {
        let batches = conversation(&mut rng);
        let expected = direct(&batches);
        let got = through_proxy(&batches, &mut rng);
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&expected),
            "case {case}: {batches:?}"
        );
    }
}
