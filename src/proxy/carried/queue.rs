//! Transaction-mode bookkeeping: the queue of one client's requests in flight. A
//! client's named prepared statements live on whichever server it had when it
//! prepared them; the next transaction may run elsewhere. So statements get
//! server-side names from the pool's table (`pool::statements`), a server that lacks
//! one gets the Parse re-issued, and the proxy answers Close itself.
//!
//! To answer some requests itself and swallow the answers to requests it added, the
//! proxy keeps the queue of requests in flight, in order, and matches each server
//! message against its head. What a server holds is changed on the server's answers
//! (a DEALLOCATE's CommandComplete), never on the client's requests.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::follow::Follow;
use super::retry::Retry;
use crate::backend::PreparedCache;
use crate::pool::statements::{Note, Statement, Statements};
use crate::protocol::frame::read_cstr;
use crate::protocol::messages;
use crate::protocol::messages::ErrorFields;
use crate::sql::{Classified, Effect, PathReset, SettingChange};

/// The client asked for more named statements than it may hold (count or bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyStatements(pub String);

/// Text of named statements one client may hold at once, whatever their count: with
/// statements as large as `max_message_size`, the count alone would not bound a
/// client's memory.
pub const MAX_CLIENT_STATEMENT_BYTES: usize = 64 << 20;

/// What a simple query does once it runs: a SET to follow if it succeeds, and per
/// statement what it does to prepared statements, applied at its CommandComplete.
#[derive(Debug, Default)]
struct QueryNote {
    settings: Vec<SettingChange>,
    effects: Vec<Effect>,
    completed: usize,
    /// The client's own statement name a translated DEALLOCATE drops.
    forget: Option<Box<[u8]>>,
    /// For DEALLOCATE ALL / DISCARD ALL: the client's names when the query was sent.
    /// Only those go at its CommandComplete; a statement the client named after it
    /// (pipelined behind it) was made after the server dropped the others.
    named_before: Option<Vec<Box<[u8]>>>,
}

impl QueryNote {
    fn of(read: &Classified) -> Option<Box<QueryNote>> {
        if read.settings.is_empty() && read.effects.is_none() {
            return None;
        }
        Some(Box::new(QueryNote {
            settings: read.settings.clone(),
            effects: read.effects.clone().unwrap_or_default(),
            ..QueryNote::default()
        }))
    }
}

/// A request in flight and what to do with its answer.
#[derive(Debug)]
enum Expect {
    /// `swallow`: the proxy added this Parse; its ParseComplete is not the client's.
    Parse {
        swallow: bool,
        statement: Option<Arc<Statement>>,
        undo: Undo,
    },
    Bind,
    Describe,
    /// Carries what the portal's statement does, noted when it completes.
    Execute(Option<Box<Note>>),
    /// `evicted`: the proxy closed a statement to make room; nobody is answered.
    Close {
        evicted: Option<Arc<str>>,
    },
    /// The proxy closed a name before preparing under it; nobody is answered.
    Clear,
    Sync,
    /// A simple query; a session-level SET/RESET in it follows the client if the
    /// query succeeds (`failed` notes an ErrorResponse).
    Query {
        note: Option<Box<QueryNote>>,
        failed: bool,
    },
    Function,
    /// An answer the proxy gives itself once everything before it is answered.
    Answer(Bytes, Undo),
    /// The client ended a COPY (CopyDone/CopyFail) before the server started it.
    CopyEnd,
    /// A query the proxy added that sets search_path on a shared server: every
    /// answer but ParameterStatus is swallowed; its outcome goes to the relay.
    Path {
        statement: Arc<str>,
        kind: PathSet,
        error: Option<ErrorFields>,
    },
    /// A query the proxy refuses itself: this ErrorResponse, then ReadyForQuery with
    /// the transaction status the server last reported.
    Refuse(Bytes),
}

/// Why the proxy sets search_path on a shared server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathSet {
    /// Attaching it: before the client's first message there.
    Attach,
    /// After a client's statement put the path back to the server's default.
    Restore,
    /// After a client's SET LOCAL search_path TO DEFAULT: until its transaction ends.
    RestoreLocal,
}

/// What became of a search_path the proxy set, for the relay.
#[derive(Debug, PartialEq, Eq)]
pub enum PathOutcome {
    /// In force and committed: the server's path is now this one.
    Confirmed(Arc<str>),
    /// In force inside an open transaction, or not the session's: not known after it.
    Unknown,
    /// Undone with the transaction it ran in, or transaction-local: as it was.
    Unchanged,
    /// It failed although the client's statements did not: the server cannot be used.
    Failed(Box<ErrorFields>),
}

/// What to take back on the client's side when the server skips a request (an
/// earlier one in the pipeline failed): a Parse that was never made, a Close that
/// never happened.
#[derive(Debug)]
enum Undo {
    Nothing,
    Forget(Box<[u8]>),
    Restore(Box<[u8]>, Arc<Statement>),
}

/// Where a COPY FROM STDIN stands. While the server is in copy-in mode it ignores
/// Sync and Flush, so those get no answer and must not be waited for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum CopyIn {
    #[default]
    None,
    /// The server sent CopyInResponse; the client is still sending data.
    ServerIn,
    /// The client sent CopyDone or CopyFail; the server will answer and end it.
    ClientDone,
}

/// What the relay does with one server message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Swallow,
    /// Swallowed: the answer that settles a search_path the proxy set.
    Path(PathOutcome),
}

/// One client's transaction-mode state.
#[derive(Default)]
pub struct Txn {
    queue: VecDeque<Expect>,
    /// Session settings the client changed (transaction mode only).
    follow: Follow,
    follows_settings: bool,
    copy: CopyIn,
    /// Client statement name → server statement.
    statements: HashMap<Box<[u8]>, Arc<Statement>>,
    /// Most named statements the client may hold (`pool.max_client_statements`).
    max_statements: usize,
    /// The server's answers disagreed with the proxy's record of its statements.
    out_of_step: bool,
    /// Transaction status of the last ReadyForQuery, for answers the proxy makes.
    last_status: u8,
    /// A client statement just sent puts search_path back to the default: restore
    /// it now (after a query), or after the next Sync (extended protocol).
    restore_now: Option<PathReset>,
    restore_at_sync: Option<PathReset>,
    /// The current segment, kept while it may need to run again (`retry.rs`).
    retry: Option<Box<Retry>>,
    /// What a retry left for the relay (boxed: rare, and every idle client holds a
    /// `Txn`).
    retried: Option<Box<Retried>>,
    /// A DEALLOCATE ALL / DISCARD ALL may be in flight (until the queue empties).
    drop_all_in_flight: bool,
    /// The server failed a request before the client's Sync was sent: it ignores
    /// everything up to that Sync, so the proxy neither answers nor prepares for it.
    skipping: bool,
}

/// What a retry leaves for the relay to send.
#[derive(Default)]
struct Retried {
    /// Messages the server gets again.
    replay: Vec<Bytes>,
    /// A held error the client gets after all, before the message just received.
    before_this: Option<Bytes>,
}

fn frame(tag: u8, body: impl FnOnce(&mut BytesMut)) -> Bytes {
    messages::build(|buf| messages::message(buf, tag, body))
}

/// A copy of a client message kept for a retry. The usual ones after a Bind, Sync and
/// an Execute of the unnamed portal for all rows, are static: keeping a prepared
/// statement's segment costs no allocation for them.
fn kept_copy(tag: u8, body: &[u8]) -> Bytes {
    match (tag, body) {
        (b'S', []) => Bytes::from_static(b"S\0\0\0\x04"),
        (b'E', [0, 0, 0, 0, 0]) => Bytes::from_static(b"E\0\0\0\x09\0\0\0\0\0"),
        _ => frame(tag, |b| b.put_slice(body)),
    }
}

/// A bodiless answer (ParseComplete, CloseComplete): static, so answering costs
/// no allocation.
fn answer(tag: u8) -> Bytes {
    match tag {
        b'1' => Bytes::from_static(b"1\0\0\0\x04"),
        b'3' => Bytes::from_static(b"3\0\0\0\x04"),
        _ => frame(tag, |_| {}),
    }
}

impl Txn {
    /// Nothing is in flight: the server may go back to the pool.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }

    /// Gives the request queue's memory back while nothing is in flight.
    pub fn release(&mut self) {
        if self.queue.is_empty() && self.queue.capacity() > 0 {
            self.queue = VecDeque::new();
        }
    }

    /// State for a transaction-mode client, whose session settings must follow it and
    /// who may hold up to `max_statements` named statements.
    pub fn following_settings(max_statements: usize) -> Txn {
        Txn {
            follows_settings: true,
            max_statements,
            ..Txn::default()
        }
    }

    /// Notes a client message forwarded unchanged; in transaction mode also what the
    /// query or statement does (`read`, for Query and Parse). `body`: the message
    /// without its header.
    pub fn forwarded(&mut self, tag: u8, body: &[u8], read: Option<&Classified>) {
        if let Some(retry) = self.retry.as_mut() {
            if !retry.complete && !retry.keep(tag, kept_copy(tag, body)) {
                self.retry = None;
            }
        }
        if !self.follows_settings || !matches!(tag, b'Q' | b'P' | b'B' | b'E') {
            return self.sent(tag);
        }
        let first = read_cstr(body);
        match tag {
            b'Q' => {
                self.restore_now = read.and_then(|r| r.path_reset);
                let mut note = read.and_then(QueryNote::of);
                if let Some(note) = note.as_mut() {
                    let drops_all =
                        |e: &Effect| matches!(e, Effect::DeallocateAll | Effect::DiscardAll);
                    if note.effects.iter().any(drops_all) {
                        note.named_before = Some(self.statements.keys().cloned().collect());
                        self.drop_all_in_flight = true;
                    }
                }
                self.queue.push_back(Expect::Query {
                    note,
                    failed: false,
                });
            }
            b'P' => {
                let note = read.and_then(Note::of);
                self.follow.parsed_unnamed(note);
                self.sent(tag);
            }
            b'B' => {
                if let Some((portal, _)) = first {
                    let change = self.follow.unnamed_statement();
                    self.follow.bound(portal, change);
                }
                self.sent(tag);
            }
            _ => {
                let portal = first.map_or(&[][..], |(portal, _)| portal);
                let note = self.follow.executing(portal);
                if let Some(reset) = note.as_ref().and_then(|n| n.path_reset) {
                    self.restore_at_sync = Some(reset);
                }
                self.queue.push_back(Expect::Execute(note));
            }
        }
    }

    /// Whether the message just sent calls for search_path to be restored right
    /// after it (shared servers). Asking resets it.
    pub fn take_restore(&mut self) -> Option<PathReset> {
        self.restore_now.take()
    }

    /// The proxy sends a query that sets search_path (`statement`) on the server.
    pub fn set_path(&mut self, statement: Arc<str>, kind: PathSet) {
        self.queue.push_back(Expect::Path {
            statement,
            kind,
            error: None,
        });
    }

    /// Refuses a client's query with `error` (an ErrorResponse), answered in turn.
    pub fn refuse(&mut self, error: Bytes) {
        self.queue.push_back(Expect::Refuse(error));
    }

    /// Session settings whose transaction committed since last asked, oldest first.
    pub fn take_committed_settings(&mut self) -> Vec<SettingChange> {
        self.follow.take_committed()
    }

    /// Notes a client message forwarded unchanged.
    pub fn sent(&mut self, tag: u8) {
        if tag == b'S' {
            self.skipping = false;
        }
        if tag == b'S' && self.copy != CopyIn::ServerIn {
            // After the Sync that ends a batch with a reset, the path is restored.
            if let Some(reset) = self.restore_at_sync.take() {
                self.restore_now = Some(reset);
            }
        }
        match (tag, self.copy) {
            // Ignored by a server in copy-in mode: no answer will come.
            (b'S' | b'H', CopyIn::ServerIn) => return,
            (b'c' | b'f', CopyIn::ServerIn) => {
                self.copy = CopyIn::ClientDone;
                return;
            }
            (b'c' | b'f', _) => {
                self.queue.push_back(Expect::CopyEnd);
                return;
            }
            _ => {}
        }
        let expect = match tag {
            b'E' => Expect::Execute(None),
            b'S' => Expect::Sync,
            b'Q' => Expect::Query {
                note: None,
                failed: false,
            },
            b'F' => Expect::Function,
            b'P' => Expect::Parse {
                swallow: false,
                statement: None,
                undo: Undo::Nothing,
            },
            b'B' => Expect::Bind,
            b'D' => Expect::Describe,
            b'C' => Expect::Close { evicted: None },
            // Flush, COPY data: no answer of their own.
            _ => return,
        };
        self.queue.push_back(expect);
    }

    /// Answers a message that needs no server while none is attached: a named Parse
    /// is recorded (made on a server at its first Bind or Describe), a Sync with
    /// nothing in flight gets ReadyForQuery, a Flush has nothing to flush, and
    /// `DEALLOCATE name` of the client's own statement forgets the name. `read`: what
    /// a Query does.
    pub fn answer_detached(
        &mut self,
        tag: u8,
        body: &[u8],
        read: Option<&Classified>,
        statements: &Statements,
    ) -> Result<bool, TooManyStatements> {
        Ok(match tag {
            b'P' if Txn::needs_rewrite(tag, body) => {
                let Some((name, rest)) = read_cstr(body) else {
                    return Ok(false);
                };
                self.name(name, statements.intern(rest))?;
                self.queue
                    .push_back(Expect::Answer(answer(b'1'), Undo::Forget(name.into())));
                true
            }
            b'Q' => read.is_some_and(|read| self.deallocate(read, None, &mut Vec::new())),
            b'S' if self
                .queue
                .iter()
                .all(|e| matches!(e, Expect::Answer(..) | Expect::Refuse(..))) =>
            {
                let ready = Bytes::from_static(b"Z\0\0\0\x05I");
                self.queue.push_back(Expect::Answer(ready, Undo::Nothing));
                true
            }
            b'H' => true,
            _ => false,
        })
    }

    /// Gives the client's statement name `name` to `statement`, within the client's
    /// allowance of named statements.
    fn name(&mut self, name: &[u8], statement: Arc<Statement>) -> Result<(), TooManyStatements> {
        if !self.statements.contains_key(name) {
            if self.statements.len() >= self.max_statements {
                return Err(TooManyStatements(format!(
                    "a client may hold {} (pool.max_client_statements)",
                    self.max_statements
                )));
            }
            // Summed when a name is given, not kept: one count fewer to keep right.
            let held: usize = self.statements.values().map(|s| s.parse.len()).sum();
            if held + statement.parse.len() > MAX_CLIENT_STATEMENT_BYTES {
                return Err(TooManyStatements(format!(
                    "a client may hold {} MiB of statement text",
                    MAX_CLIENT_STATEMENT_BYTES >> 20
                )));
            }
        }
        if self.drop_all_in_flight {
            // Named after a DEALLOCATE ALL / DISCARD ALL still in flight: made after
            // the drop, so the drop must not take it.
            for expect in self.queue.iter_mut() {
                if let Expect::Query {
                    note: Some(note), ..
                } = expect
                {
                    if let Some(before) = note.named_before.as_mut() {
                        before.retain(|n| &n[..] != name);
                    }
                }
            }
        }
        self.statements.insert(name.into(), statement);
        Ok(())
    }

    /// `DEALLOCATE name` as a simple query, where `name` is one of the client's own
    /// protocol-level statements (PHP PDO and DBD::Pg drop theirs that way). The
    /// server knows the statement by the proxy's name, so: detached, or in a block
    /// whose server lacks it, the proxy answers itself; where the server holds it, the
    /// query is sent with the server's name and both are forgotten when it completes.
    /// Left to the server (which then says it does not exist) while anything else is
    /// in flight or the transaction has failed, where the proxy cannot answer as the
    /// server would. `server`: the attached server and its transaction status.
    pub fn deallocate(
        &mut self,
        read: &Classified,
        server: Option<(&mut PreparedCache, u8)>,
        out: &mut Vec<Bytes>,
    ) -> bool {
        let Some([Effect::Deallocate(name)]) = read.effects.as_deref() else {
            return false;
        };
        if read.pin.is_some() || !self.queue.is_empty() || self.skipping {
            return false;
        }
        let Some(statement) = self.statements.get(&name[..]).cloned() else {
            return false;
        };
        let status = match server {
            None => b'I',
            Some((_, b'E')) => return false,
            Some((cache, status)) => {
                if cache.touch(&statement.name) {
                    out.push(frame(b'Q', |b| {
                        b.put_slice(b"DEALLOCATE \"");
                        b.put_slice(statement.name.as_bytes());
                        b.put_slice(b"\"\0");
                    }));
                    self.queue.push_back(Expect::Query {
                        note: Some(Box::new(QueryNote {
                            effects: vec![Effect::Deallocate(statement.name.as_bytes().to_vec())],
                            forget: Some(name[..].into()),
                            ..QueryNote::default()
                        })),
                        failed: false,
                    });
                    return true;
                }
                status
            }
        };
        self.statements.remove(&name[..]);
        let answer = messages::build(|buf| {
            messages::message(buf, b'C', |b| b.put_slice(b"DEALLOCATE\0"));
            messages::message(buf, b'Z', |b| b.put_u8(status));
        });
        self.queue.push_back(Expect::Answer(answer, Undo::Nothing));
        true
    }

    /// Whether a Parse/Bind/Describe/Close needs rewriting (it names a statement).
    pub fn needs_rewrite(tag: u8, body: &[u8]) -> bool {
        match tag {
            b'P' => body.first().is_some_and(|&b| b != 0),
            b'B' => read_cstr(body).is_some_and(|(_, rest)| rest.first().is_some_and(|&b| b != 0)),
            b'D' | b'C' => body.first() == Some(&b'S') && body.get(1).is_some_and(|&b| b != 0),
            _ => false,
        }
    }

    /// Rewrites a client message that names a statement; pushes what the server must
    /// receive into `out`. `body` is the message without its header.
    pub fn rewrite(
        &mut self,
        tag: u8,
        body: &[u8],
        server: &mut PreparedCache,
        statements: &Statements,
        out: &mut Vec<Bytes>,
    ) -> Result<(), TooManyStatements> {
        if self.retry.as_ref().is_some_and(|r| !r.complete) {
            // The segment is no longer one that can simply be sent again.
            self.retry = None;
        }
        if self.skipping {
            // The server ignores it: passed as it is, answered by nobody.
            self.pass(tag, body, out);
            return Ok(());
        }
        if tag != b'P' {
            self.rewrite_use(tag, body, server, out);
            return Ok(());
        }
        let Some((name, rest)) = read_cstr(body) else {
            self.pass(tag, body, out);
            return Ok(());
        };
        let statement = statements.intern(rest);
        self.name(name, statement.clone())?;
        let undo = Undo::Forget(name.into());
        if server.touch(&statement.name) {
            self.queue.push_back(Expect::Answer(answer(b'1'), undo));
        } else {
            self.prepare(server, &statement, Some(undo), out);
        }
        Ok(())
    }

    /// The start of a Bind of one of the client's named statements too large to hold
    /// (`frame`: its first bytes, `len`: its whole length): pushes what the server gets
    /// in place of the client's header and names, with the server's statement name;
    /// the parameters then pass as they arrive. Returns how many bytes of the
    /// client's frame that replaces; `None` when the statement is not the client's
    /// (the frame then passes as it is, for the server to refuse).
    pub fn rewrite_bind_start(
        &mut self,
        frame: &[u8],
        len: usize,
        server: &mut PreparedCache,
        out: &mut Vec<Bytes>,
    ) -> Option<usize> {
        let body = frame.get(5..)?;
        let (portal, rest) = read_cstr(body)?;
        let (name, _) = read_cstr(rest)?;
        let statement = self.statements.get(name).cloned()?;
        let replaced = 5 + portal.len() + 1 + name.len() + 1;
        let head = portal.len() + 1 + statement.name.len() + 1;
        let body_len = u32::try_from(len - replaced + head + 4).ok()?;
        self.ensure_prepared(server, &statement, out);
        self.follow.bound(portal, statement.note.clone());
        let mut start = BytesMut::with_capacity(5 + head);
        start.put_u8(b'B');
        start.put_u32(body_len);
        start.put_slice(portal);
        start.put_u8(0);
        start.put_slice(statement.name.as_bytes());
        start.put_u8(0);
        out.push(start.freeze());
        self.queue.push_back(Expect::Bind);
        Some(replaced)
    }

    /// Bind, Describe or Close of a named statement.
    fn rewrite_use(
        &mut self,
        tag: u8,
        body: &[u8],
        server: &mut PreparedCache,
        out: &mut Vec<Bytes>,
    ) {
        match tag {
            b'B' => {
                let Some((portal, rest)) = read_cstr(body) else {
                    return self.pass(tag, body, out);
                };
                let Some((name, params)) = read_cstr(rest) else {
                    return self.pass(tag, body, out);
                };
                let Some(statement) = self.statements.get(name).cloned() else {
                    // Unknown to us: the server answers "does not exist" itself.
                    return self.pass(tag, body, out);
                };
                // A segment that starts by binding a statement the record says the
                // server holds is kept, in case it does not (`retry.rs`).
                let starts_segment = self.queue.is_empty() && server.touch(&statement.name);
                self.ensure_prepared(server, &statement, out);
                self.follow.bound(portal, statement.note.clone());
                let bind = frame(b'B', |b| {
                    b.put_slice(portal);
                    b.put_u8(0);
                    b.put_slice(statement.name.as_bytes());
                    b.put_u8(0);
                    b.put_slice(params);
                });
                self.retry = (starts_segment && bind.len() <= 1024)
                    .then(|| Box::new(Retry::new(statement.clone(), bind.clone())));
                out.push(bind);
                self.queue.push_back(Expect::Bind);
            }
            b'D' => {
                let name = read_cstr(&body[1..]).map(|(n, _)| n).unwrap_or_default();
                let Some(statement) = self.statements.get(name).cloned() else {
                    return self.pass(tag, body, out);
                };
                self.ensure_prepared(server, &statement, out);
                out.push(frame(b'D', |b| {
                    b.put_u8(b'S');
                    b.put_slice(statement.name.as_bytes());
                    b.put_u8(0);
                }));
                self.queue.push_back(Expect::Describe);
            }
            b'C' => {
                // The server copy stays for other clients; the client's name goes.
                let name = read_cstr(&body[1..]).map(|(n, _)| n).unwrap_or_default();
                let undo = match self.statements.remove(name) {
                    Some(statement) => Undo::Restore(name.into(), statement),
                    None => Undo::Nothing,
                };
                self.queue.push_back(Expect::Answer(answer(b'3'), undo));
            }
            _ => self.pass(tag, body, out),
        }
    }

    fn pass(&mut self, tag: u8, body: &[u8], out: &mut Vec<Bytes>) {
        out.push(frame(tag, |b| b.put_slice(body)));
        self.sent(tag);
    }

    fn ensure_prepared(
        &mut self,
        server: &mut PreparedCache,
        statement: &Arc<Statement>,
        out: &mut Vec<Bytes>,
    ) {
        if !server.touch(&statement.name) {
            self.prepare(server, statement, None, out);
        }
    }

    /// Sends the statement's Parse, closing the least recently used statement first
    /// when the server's cache is full. `client`: the client's own Parse (its answer
    /// is the client's, and a failure forgets the client's name); `None`: one the
    /// proxy adds, answered to nobody.
    fn prepare(
        &mut self,
        server: &mut PreparedCache,
        statement: &Arc<Statement>,
        client: Option<Undo>,
        out: &mut Vec<Bytes>,
    ) {
        for evicted in server.insert(&statement.name) {
            out.push(frame(b'C', |b| {
                b.put_u8(b'S');
                b.put_slice(evicted.as_bytes());
                b.put_u8(0);
            }));
            self.queue.push_back(Expect::Close {
                evicted: Some(evicted),
            });
        }
        // The name is freed first (Close of a name the server lacks is no error):
        // whatever the server holds under it, the Parse never fails with 42P05 and
        // the statement is the proxy's text.
        out.push(frame(b'C', |b| {
            b.put_u8(b'S');
            b.put_slice(statement.name.as_bytes());
            b.put_u8(0);
        }));
        self.queue.push_back(Expect::Clear);
        out.push(statement.parse.clone());
        self.queue.push_back(Expect::Parse {
            swallow: client.is_none(),
            statement: Some(statement.clone()),
            undo: client.unwrap_or(Undo::Nothing),
        });
    }

    /// Answers the proxy owes the client now that everything before them is answered.
    pub fn take_answers(&mut self, out: &mut Vec<Bytes>) {
        while let Some(Expect::Answer(..) | Expect::Refuse(..)) = self.queue.front() {
            match self.queue.pop_front() {
                Some(Expect::Answer(bytes, _)) => out.push(bytes),
                Some(Expect::Refuse(error)) => {
                    out.push(error);
                    let status = match self.last_status {
                        0 => b'I',
                        status => status,
                    };
                    out.push(frame(b'Z', |b| b.put_u8(status)));
                }
                _ => {}
            }
        }
    }

    /// A server message answering a search_path the proxy set (at the head of the
    /// queue): swallowed but for ParameterStatus; its outcome noted at ReadyForQuery.
    fn path_answer(&mut self, tag: u8, body: &[u8]) -> Verdict {
        let Some(Expect::Path { error, .. }) = self.queue.front_mut() else {
            return Verdict::Forward;
        };
        match tag {
            b'S' | b'A' => return Verdict::Forward,
            b'E' => {
                error.get_or_insert(messages::parse_error_fields(body));
            }
            b'Z' => {
                let status = body.first().copied().unwrap_or(b'I');
                self.last_status = status;
                let Some(Expect::Path {
                    statement,
                    kind,
                    error,
                }) = self.queue.pop_front()
                else {
                    unreachable!("matched above");
                };
                return Verdict::Path(match (error, kind) {
                    // In a transaction that had already failed, the client's reset
                    // failed as well: nothing changed.
                    (Some(e), PathSet::Restore | PathSet::RestoreLocal) if e.code == "25P02" => {
                        PathOutcome::Unchanged
                    }
                    (Some(e), _) => PathOutcome::Failed(Box::new(e)),
                    (None, PathSet::RestoreLocal) => PathOutcome::Unchanged,
                    (None, _) if status == b'I' => PathOutcome::Confirmed(statement),
                    (None, _) => PathOutcome::Unknown,
                });
            }
            _ => {}
        }
        Verdict::Swallow
    }

    /// Matches one server message (`body` without its header) against the queue; says
    /// whether the client gets it.
    pub fn received(&mut self, tag: u8, body: &[u8], server: &mut PreparedCache) -> Verdict {
        if let Some(Expect::Path { .. }) = self.queue.front() {
            return self.path_answer(tag, body);
        }
        if tag == b'Z' {
            self.last_status = body.first().copied().unwrap_or(b'I');
        }
        let verdict = match (tag, self.queue.front()) {
            (b'1', Some(Expect::Parse { swallow, .. })) => swallowed(*swallow),
            (b'3', Some(Expect::Close { evicted })) => swallowed(evicted.is_some()),
            (b'3', Some(Expect::Clear)) => Verdict::Swallow,
            _ => Verdict::Forward,
        };
        match tag {
            b'1' => self.pop_if(|e| matches!(e, Expect::Parse { .. })),
            b'2' => self.pop_if(|e| matches!(e, Expect::Bind)),
            b'3' => self.pop_if(|e| matches!(e, Expect::Close { .. } | Expect::Clear)),
            b'T' | b'n' => self.pop_if(|e| matches!(e, Expect::Describe)),
            b'C' | b'I' | b's' => {
                self.copy = CopyIn::None;
                if tag == b'C' {
                    self.follow.command_complete(body);
                }
                match self.queue.front_mut() {
                    Some(Expect::Execute(note)) => {
                        let note = note.take();
                        self.queue.pop_front();
                        if let (Some(note), b'C') = (note, tag) {
                            if let Some(change) = note.setting {
                                self.follow.ran(change);
                            }
                            self.apply(&note.effect, server);
                        }
                    }
                    Some(Expect::Query {
                        note: Some(note), ..
                    }) if tag == b'C' => {
                        let effect = note.effects.get(note.completed).cloned();
                        note.completed += 1;
                        let forget = note.forget.take();
                        if let Some(name) = forget {
                            self.statements.remove(&name);
                        }
                        let named_before = note.named_before.take();
                        match (effect, named_before) {
                            (Some(Effect::DeallocateAll | Effect::DiscardAll), Some(before)) => {
                                server.clear();
                                self.forget_names(before);
                            }
                            (Some(effect), _) => self.apply(&effect, server),
                            (None, _) => {}
                        }
                    }
                    _ => {}
                }
            }
            b'E' => {
                self.copy = CopyIn::None;
                if self.hold_for_retry(body) {
                    self.skip_to_sync(server);
                    return Verdict::Swallow;
                }
                self.retry = None;
                self.follow.error();
                if out_of_step(body) {
                    self.out_of_step = true;
                }
                if let Some(Expect::Query { failed, .. }) = self.queue.front_mut() {
                    *failed = true;
                }
                self.skip_to_sync(server);
                // Nothing left to skip to: the client's Sync is still to come.
                self.skipping = self.queue.is_empty();
            }
            b'G' => self.copy_in_started(),
            b'Z' => {
                if let Some(verdict) = self.retry_at_ready(body, server) {
                    return verdict;
                }
                self.retry = None;
                while let Some(expect) = self.queue.pop_front() {
                    match expect {
                        Expect::Query {
                            note: Some(note),
                            failed: false,
                        } => {
                            for change in note.settings {
                                self.follow.ran(change);
                            }
                            break;
                        }
                        Expect::Sync | Expect::Query { .. } | Expect::Function => break,
                        _ => {}
                    }
                }
                self.follow.ready(body.first().copied().unwrap_or(b'I'));
                if self.queue.is_empty() {
                    self.drop_all_in_flight = false;
                }
            }
            _ => {}
        }
        verdict
    }

    /// An ErrorResponse that may be a statement missing at the start of a kept
    /// segment: held (not forwarded) until the ReadyForQuery says whether to retry.
    fn hold_for_retry(&mut self, body: &[u8]) -> bool {
        let Some(retry) = self.retry.as_mut() else {
            return false;
        };
        let fields = messages::parse_error_fields(body);
        let first_unanswered = matches!(self.queue.front(), Some(Expect::Bind));
        if !retry.complete
            || !first_unanswered
            || retry.held_error.is_some()
            || !retry.is_missing_statement(&fields.code, &fields.message)
        {
            return false;
        }
        retry.held_error = Some(frame(b'E', |b| b.put_slice(body)));
        true
    }

    /// The ReadyForQuery after a held error. Outside a block ('I') the error undid the
    /// whole segment: the statement is prepared again and the segment sent again, and
    /// neither answer reaches the client. Otherwise the client gets the error after all.
    fn retry_at_ready(&mut self, body: &[u8], server: &mut PreparedCache) -> Option<Verdict> {
        let error = self.retry.as_mut()?.held_error.take()?;
        let retry = self.retry.take()?;
        server.remove(&retry.statement.name);
        // The Sync that ended the skipped segment.
        self.pop_if(|e| matches!(e, Expect::Sync));
        if body.first() != Some(&b'I') {
            self.out_of_step = true;
            self.follow.error();
            self.follow.ready(body.first().copied().unwrap_or(b'E'));
            self.retried.get_or_insert_with(Box::default).before_this = Some(error);
            return Some(Verdict::Forward);
        }
        let mut out = Vec::new();
        self.prepare(server, &retry.statement, None, &mut out);
        for (tag, message) in retry.messages {
            if tag == b'B' {
                self.queue.push_back(Expect::Bind);
            } else {
                self.sent(tag);
            }
            out.push(message);
        }
        self.retried.get_or_insert_with(Box::default).replay = out;
        Some(Verdict::Swallow)
    }

    /// A message the client must get before the server message just received.
    pub fn take_before_this(&mut self) -> Option<Bytes> {
        self.retried.as_mut()?.before_this.take()
    }

    /// Messages the server must get again (a segment retried), in order.
    pub fn take_replay(&mut self) -> Vec<Bytes> {
        // Called right after `take_before_this`, for the same server message.
        self.retried.take().map(|r| r.replay).unwrap_or_default()
    }

    /// Forgets the client's names in `named` (those given before the drop).
    fn forget_names(&mut self, named: Vec<Box<[u8]>>) {
        for name in named {
            self.statements.remove(&name);
        }
    }

    /// A statement that completed dropped prepared statements on the server: the
    /// server's record and the client's names follow.
    fn apply(&mut self, effect: &Effect, server: &mut PreparedCache) {
        match effect {
            Effect::None => {}
            Effect::Deallocate(name) => {
                if let Ok(name) = std::str::from_utf8(name) {
                    server.remove(name);
                }
            }
            Effect::DeallocateAll | Effect::DiscardAll => {
                server.clear();
                self.statements.clear();
            }
        }
    }

    /// Whether the server answered as if the proxy's record of its statements were
    /// wrong (a function the client called can DEALLOCATE or PREPARE by SQL). Such a
    /// server is closed instead of being reused. Asking resets it.
    pub fn take_out_of_step(&mut self) -> bool {
        std::mem::take(&mut self.out_of_step)
    }

    /// The server entered copy-in mode for the request at the head of the queue.
    /// Syncs the client sent before ending the COPY were ignored by the server.
    fn copy_in_started(&mut self) {
        self.copy = CopyIn::ServerIn;
        let mut i = 1;
        while i < self.queue.len() {
            match self.queue[i] {
                Expect::Sync => {
                    self.queue.remove(i);
                }
                Expect::CopyEnd => {
                    self.queue.remove(i);
                    self.copy = CopyIn::ClientDone;
                    break;
                }
                _ => i += 1,
            }
        }
    }

    fn pop_if(&mut self, matches: impl Fn(&Expect) -> bool) {
        if self.queue.front().is_some_and(matches) {
            self.queue.pop_front();
        }
    }

    /// After an error in the extended protocol the server skips everything up to the
    /// next Sync: those requests get no answer, and their statements were not made.
    fn skip_to_sync(&mut self, server: &mut PreparedCache) {
        let mut skipped = Vec::new();
        while let Some(front) = self.queue.front() {
            if matches!(
                front,
                Expect::Sync | Expect::Query { .. } | Expect::Function | Expect::Path { .. }
            ) {
                break;
            }
            skipped.extend(self.queue.pop_front());
        }
        // Undone newest first, so the cache and the client's names end as they were
        // before the skipped requests (a statement evicted and re-made in the same
        // pipeline comes out right).
        for expect in skipped.into_iter().rev() {
            let undo = match expect {
                Expect::Parse {
                    statement: Some(statement),
                    undo,
                    ..
                } => {
                    server.remove(&statement.name);
                    undo
                }
                Expect::Close {
                    evicted: Some(name),
                } => {
                    server.restore(&name);
                    Undo::Nothing
                }
                Expect::Answer(_, undo) => undo,
                _ => Undo::Nothing,
            };
            match undo {
                Undo::Nothing => {}
                Undo::Forget(name) => {
                    self.statements.remove(&name);
                }
                Undo::Restore(name, statement) => {
                    self.statements.insert(name, statement);
                }
            }
        }
    }
}

/// An ErrorResponse saying a proxy-named statement is missing (26000) or already
/// there (42P05).
fn out_of_step(body: &[u8]) -> bool {
    let fields = messages::parse_error_fields(body);
    matches!(fields.code.as_str(), "26000" | "42P05") && fields.message.contains("\"pgtenant_")
}

fn swallowed(swallow: bool) -> Verdict {
    if swallow {
        Verdict::Swallow
    } else {
        Verdict::Forward
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "queue_fuzz.rs"]
mod fuzz;

#[cfg(test)]
#[path = "hotpath_tests.rs"]
mod hotpath_tests;
