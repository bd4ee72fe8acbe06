//! Statement names: a client's named statements get the pool's server-side names,
//! the messages that use them are rewritten, and a server that lacks one gets its
//! Parse first.

use super::*;

impl Txn {
    /// Gives the client's statement name `name` to `statement`, within the client's
    /// allowance of named statements.
    pub(super) fn name(
        &mut self,
        name: &[u8],
        statement: Arc<Statement>,
    ) -> Result<(), TooManyStatements> {
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
    pub(super) fn rewrite_use(
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

    pub(super) fn pass(&mut self, tag: u8, body: &[u8], out: &mut Vec<Bytes>) {
        out.push(frame(tag, |b| b.put_slice(body)));
        self.sent(tag);
    }

    pub(super) fn ensure_prepared(
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
    pub(super) fn prepare(
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
}
