//! Which session-level SET/RESET a transaction-mode client made, so its settings
//! follow it to the next server. A change counts once the transaction it ran in has
//! committed: a SET in a block that is rolled back, or in a pipeline that failed, is
//! undone by the server and must not follow the client.
//!
//! Changes arrive by either protocol: a simple query, or Parse/Bind/Execute (pgjdbc
//! sends its `SET extra_float_digits = 3` that way). The state is boxed on first use:
//! most clients never change a setting.

use crate::pool::statements::Note;
use crate::sql::SettingChange;

#[derive(Default)]
pub struct Follow {
    state: Option<Box<State>>,
}

#[derive(Default)]
struct State {
    /// What the unnamed statement does, if it is a SET/RESET/DEALLOCATE/DISCARD.
    unnamed_statement: Option<Note>,
    /// Portals bound to such a statement; the unnamed portal has an empty name.
    portals: Vec<(Box<[u8]>, Note)>,
    /// Changes that ran in the current transaction, waiting for it to end.
    pending: Vec<SettingChange>,
    /// An ErrorResponse came since the last ReadyForQuery.
    failed: bool,
    /// The last command tag was ROLLBACK.
    rolled_back: bool,
    /// Changes whose transaction committed, for the relay to apply.
    committed: Vec<SettingChange>,
}

impl Follow {
    fn state(&mut self) -> &mut State {
        self.state.get_or_insert_with(Box::default)
    }

    /// A Parse of the unnamed statement went to the server.
    pub fn parsed_unnamed(&mut self, note: Option<Note>) {
        if note.is_some() || self.state.is_some() {
            self.state().unnamed_statement = note;
        }
    }

    /// What the unnamed statement does, for a Bind of it.
    pub fn unnamed_statement(&self) -> Option<Note> {
        self.state.as_deref()?.unnamed_statement.clone()
    }

    /// A Bind to `portal` of a statement that does `note` (if anything) went to the server.
    pub fn bound(&mut self, portal: &[u8], note: Option<Note>) {
        if let Some(state) = self.state.as_deref_mut() {
            state.portals.retain(|(name, _)| &name[..] != portal);
        }
        if let Some(note) = note {
            self.state().portals.push((portal.into(), note));
        }
    }

    /// What an Execute of `portal` does, to be noted when it completes.
    pub fn executing(&self, portal: &[u8]) -> Option<Box<Note>> {
        let state = self.state.as_deref()?;
        let (_, note) = state.portals.iter().find(|(name, _)| &name[..] == portal)?;
        Some(Box::new(note.clone()))
    }

    /// A SET/RESET ran without error; it holds once its transaction commits.
    pub fn ran(&mut self, change: SettingChange) {
        self.state().pending.push(change);
    }

    /// A CommandComplete went by (its tag, NUL-terminated).
    pub fn command_complete(&mut self, tag: &[u8]) {
        if let Some(state) = self.state.as_deref_mut() {
            state.rolled_back = tag.starts_with(b"ROLLBACK");
        }
    }

    pub fn error(&mut self) {
        if let Some(state) = self.state.as_deref_mut() {
            state.failed = true;
        }
    }

    /// ReadyForQuery with the server's transaction status. Back at idle, the changes
    /// of the transaction that just ended hold unless it failed or rolled back.
    pub fn ready(&mut self, status: u8) {
        let Some(state) = self.state.as_deref_mut() else {
            return;
        };
        if status == b'I' {
            let pending = std::mem::take(&mut state.pending);
            if !state.failed && !state.rolled_back {
                state.committed.extend(pending);
            }
            // Portals do not outlive their transaction.
            state.portals.clear();
        }
        state.failed = false;
        state.rolled_back = false;
    }

    /// Changes that now hold for the client's session, oldest first.
    pub fn take_committed(&mut self) -> Vec<SettingChange> {
        match self.state.as_deref_mut() {
            Some(state) => std::mem::take(&mut state.committed),
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, value: &str) -> SettingChange {
        SettingChange::Set(name.into(), value.into())
    }

    #[test]
    fn a_change_outside_a_block_holds_at_ready() {
        let mut follow = Follow::default();
        follow.ran(set("a", "1"));
        follow.command_complete(b"SET\0");
        follow.ready(b'I');
        assert_eq!(follow.take_committed(), vec![set("a", "1")]);
        assert!(follow.take_committed().is_empty());
    }

    #[test]
    fn a_change_in_a_block_waits_for_commit() {
        let mut follow = Follow::default();
        follow.ran(set("a", "1"));
        follow.ready(b'T');
        assert!(follow.take_committed().is_empty());
        follow.command_complete(b"COMMIT\0");
        follow.ready(b'I');
        assert_eq!(follow.take_committed(), vec![set("a", "1")]);
    }

    #[test]
    fn rolled_back_or_failed_changes_are_dropped() {
        let mut follow = Follow::default();
        follow.ran(set("a", "1"));
        follow.ready(b'T');
        follow.command_complete(b"ROLLBACK\0");
        follow.ready(b'I');
        assert!(follow.take_committed().is_empty());

        // A pipeline whose later statement failed: the implicit transaction is undone.
        follow.ran(set("b", "2"));
        follow.error();
        follow.ready(b'I');
        assert!(follow.take_committed().is_empty());
    }

    fn note(name: &str, value: &str) -> Note {
        Note {
            setting: Some(set(name, value)),
            ..Note::default()
        }
    }

    #[test]
    fn portals_carry_the_change_of_their_statement() {
        let mut follow = Follow::default();
        follow.parsed_unnamed(Some(note("a", "1")));
        follow.bound(b"", follow.unnamed_statement());
        assert_eq!(follow.executing(b""), Some(Box::new(note("a", "1"))));
        // A plain statement replaces it.
        follow.parsed_unnamed(None);
        follow.bound(b"", follow.unnamed_statement());
        assert_eq!(follow.executing(b""), None);
        // A named statement's change goes to a named portal.
        follow.bound(b"p1", Some(note("b", "2")));
        assert_eq!(follow.executing(b"p1"), Some(Box::new(note("b", "2"))));
        follow.ready(b'I');
        assert_eq!(follow.executing(b"p1"), None);
    }
}
