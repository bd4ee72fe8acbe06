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
//!
//! Here: the queue and the client's requests; `rename`: statement names and the
//! messages that use them; `answers`: the server's messages matched against the queue.

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
}

mod answers;
mod rename;

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "queue_fuzz.rs"]
mod fuzz;

#[cfg(test)]
#[path = "hotpath_tests.rs"]
mod hotpath_tests;
