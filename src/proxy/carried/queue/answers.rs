//! The server's side: each answer matched against the head of the queue, the
//! proxy's own requests' answers swallowed, and what the server now holds updated.

use super::*;

impl Txn {
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
    pub(super) fn path_answer(&mut self, tag: u8, body: &[u8]) -> Verdict {
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
    pub(super) fn hold_for_retry(&mut self, body: &[u8]) -> bool {
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
    pub(super) fn retry_at_ready(
        &mut self,
        body: &[u8],
        server: &mut PreparedCache,
    ) -> Option<Verdict> {
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
    pub(super) fn forget_names(&mut self, named: Vec<Box<[u8]>>) {
        for name in named {
            self.statements.remove(&name);
        }
    }

    /// A statement that completed dropped prepared statements on the server: the
    /// server's record and the client's names follow.
    pub(super) fn apply(&mut self, effect: &Effect, server: &mut PreparedCache) {
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
    pub(super) fn copy_in_started(&mut self) {
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

    pub(super) fn pop_if(&mut self, matches: impl Fn(&Expect) -> bool) {
        if self.queue.front().is_some_and(matches) {
            self.queue.pop_front();
        }
    }

    /// After an error in the extended protocol the server skips everything up to the
    /// next Sync: those requests get no answer, and their statements were not made.
    pub(super) fn skip_to_sync(&mut self, server: &mut PreparedCache) {
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
