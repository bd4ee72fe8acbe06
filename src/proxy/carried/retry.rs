//! Running a Sync segment again, unseen, when the server turns out to lack a
//! statement the proxy's record says it holds (26000). Only a function the client
//! calls can drop one behind the proxy's back (`DEALLOCATE` by SQL); every other way
//! is followed. The segment must have begun with the Bind of that statement, outside
//! a transaction block (the server's ReadyForQuery after the error says 'I', so the
//! error undid everything of it), and nothing of it may have been answered yet; its
//! messages are small ones kept as sent. Then the error and its ReadyForQuery are
//! swallowed, the statement is prepared again and the segment sent again: once.

use std::sync::Arc;

use bytes::Bytes;

use crate::pool::statements::Statement;

/// Messages after the Bind worth keeping: Execute, Describe of a portal, Flush, Sync.
const KEPT: &[u8] = b"EDHS";
/// Beyond this the segment is not kept (a large one is not worth holding twice).
const MAX_BYTES: usize = 4096;

pub(super) struct Retry {
    pub(super) statement: Arc<Statement>,
    /// The segment's messages as the server got them, the Bind first.
    pub(super) messages: Vec<(u8, Bytes)>,
    bytes: usize,
    /// The Sync that ends the segment went out.
    pub(super) complete: bool,
    /// The server's 26000, held until its ReadyForQuery says whether to retry.
    pub(super) held_error: Option<Bytes>,
}

impl Retry {
    pub(super) fn new(statement: Arc<Statement>, bind: Bytes) -> Retry {
        Retry {
            statement,
            bytes: bind.len(),
            messages: vec![(b'B', bind)],
            complete: false,
            held_error: None,
        }
    }

    /// Keeps one more message of the segment; `false` when the segment cannot be
    /// kept (too large, or a message that is not replayed).
    pub(super) fn keep(&mut self, tag: u8, frame: Bytes) -> bool {
        if self.complete || !KEPT.contains(&tag) || self.bytes + frame.len() > MAX_BYTES {
            return false;
        }
        self.bytes += frame.len();
        self.messages.push((tag, frame));
        self.complete = tag == b'S';
        true
    }

    /// Whether `error` (an ErrorResponse body) is the server saying it lacks this
    /// retry's statement.
    pub(super) fn is_missing_statement(&self, code: &str, message: &str) -> bool {
        code == "26000" && message.contains(&format!("\"{}\"", self.statement.name))
    }
}
