//! The named statements of one pool as its servers know them: each distinct text (and
//! parameter types) gets a server-side name once, shared by the pool's clients.
//!
//! Names are unguessable (`pgtenant_<random>_<n>`, random per statement): a client
//! cannot tell from `pg_prepared_statements` what another pool prepared, nor make in
//! advance a statement under a name the proxy will choose. (Should one be there
//! anyway, the proxy closes a name before preparing under it.) The table keeps a
//! statement only while a client or a server record holds it (weak references,
//! swept as the table grows), so its memory follows what is in use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use bytes::{BufMut, Bytes};

use crate::protocol::frame::read_cstr;
use crate::protocol::messages;
use crate::sql::{classify, Classified, Effect, PathReset, SettingChange};

/// What a statement does when executed, noted when it completes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Note {
    pub setting: Option<SettingChange>,
    pub effect: Effect,
    /// It puts search_path back to the server's default.
    pub path_reset: Option<PathReset>,
}

impl Note {
    /// The note for one statement's SQL (a Parse holds one statement), if any.
    pub fn of_sql(sql: &[u8]) -> Option<Note> {
        Note::of(&classify(sql, true))
    }

    /// The note for a classified statement, if it does anything to note.
    pub fn of(read: &Classified) -> Option<Note> {
        let effect = read
            .effects
            .as_ref()
            .and_then(|e| e.first().cloned())
            .unwrap_or_default();
        let setting = read.settings.first();
        let path_reset = read.path_reset;
        (setting.is_some() || effect != Effect::None || path_reset.is_some()).then(|| Note {
            setting: setting.cloned(),
            effect,
            path_reset,
        })
    }
}

/// A statement as the servers know it: a proxy-chosen name and the Parse that makes it.
#[derive(Debug)]
pub struct Statement {
    pub name: Arc<str>,
    pub parse: Bytes,
    pub note: Option<Note>,
}

/// Sweep dead entries once the table has grown past this since the last sweep.
const FIRST_SWEEP: usize = 1024;

pub struct Statements {
    inner: Mutex<Table>,
}

struct Table {
    by_text: HashMap<Bytes, Weak<Statement>>,
    next: u64,
    sweep_at: usize,
}

impl Default for Statements {
    fn default() -> Self {
        Statements {
            inner: Mutex::new(Table {
                by_text: HashMap::new(),
                next: 0,
                sweep_at: FIRST_SWEEP,
            }),
        }
    }
}

impl Statements {
    /// The statement for a Parse body without its name (`query\0 nparams types…`).
    pub fn intern(&self, text_and_types: &[u8]) -> Arc<Statement> {
        let mut table = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(statement) = table.by_text.get(text_and_types).and_then(Weak::upgrade) {
            return statement;
        }
        if table.by_text.len() >= table.sweep_at {
            table.by_text.retain(|_, s| s.strong_count() > 0);
            table.sweep_at = (table.by_text.len() * 2).max(FIRST_SWEEP);
        }
        // Random per statement, so no name can be told in advance (a sequence per
        // pool would let a client predict the next one); the count keeps names of
        // one table distinct whatever the random part.
        let name: Arc<str> =
            format!("pgtenant_{:016x}_{}", rand::random::<u64>(), table.next).into();
        table.next += 1;
        let parse = messages::build(|buf| {
            messages::message(buf, b'P', |b| {
                b.put_slice(name.as_bytes());
                b.put_u8(0);
                b.put_slice(text_and_types);
            })
        });
        let sql = read_cstr(text_and_types).map_or(&[][..], |(sql, _)| sql);
        let statement = Arc::new(Statement {
            name,
            parse,
            note: Note::of_sql(sql),
        });
        // The key is the text inside the Parse (not a copy of it): a large statement's
        // text is held once.
        let key = statement
            .parse
            .slice(statement.parse.len() - text_and_types.len()..);
        table.by_text.insert(key, Arc::downgrade(&statement));
        statement
    }

    /// Drops the entries of statements nobody holds any more. Run by the pools'
    /// upkeep, so the text of a large statement does not outlive its clients until
    /// the table next grows. Returns the bytes of text dropped.
    pub fn sweep(&self) -> usize {
        let mut table = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut dropped = 0;
        table.by_text.retain(|text, s| {
            let live = s.strong_count() > 0;
            dropped += if live { 0 } else { text.len() };
            live
        });
        if dropped > 0 {
            table.by_text.shrink_to_fit();
        }
        dropped
    }

    /// Entries in the table, live or not yet swept.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|t| t.by_text.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_per_table_and_shared_by_text() {
        let (a, b) = (Statements::default(), Statements::default());
        let one = a.intern(b"select 1\0\0\0");
        assert!(Arc::ptr_eq(&one, &a.intern(b"select 1\0\0\0")));
        let other = b.intern(b"select 1\0\0\0");
        assert_ne!(one.name, other.name, "another pool names it otherwise");
        assert!(one.name.len() > "pgtenant_".len() + 16);
    }

    #[test]
    fn statements_nobody_holds_are_swept() {
        let table = Statements::default();
        for i in 0..10_000 {
            drop(table.intern(format!("select {i}\0\0\0").as_bytes()));
        }
        assert!(table.len() <= FIRST_SWEEP + 1, "{} entries", table.len());
    }

    #[test]
    fn a_statement_text_is_held_once() {
        let table = Statements::default();
        let text = format!("select '{}'\0\0\0", "x".repeat(1 << 16));
        let statement = table.intern(text.as_bytes());
        let inner = table.inner.lock().unwrap();
        let (key, _) = inner.by_text.iter().next().unwrap();
        let parse = statement.parse.as_ptr_range();
        assert!(
            parse.contains(&key.as_ptr()),
            "the key is a copy of the text"
        );
        assert_eq!(&key[..], text.as_bytes());
    }

    #[test]
    fn a_sweep_drops_what_nobody_holds() {
        let table = Statements::default();
        let kept = table.intern(b"select 1\0\0\0");
        drop(table.intern(b"select 2\0\0\0"));
        assert_eq!(table.len(), 2, "kept until swept");
        table.sweep();
        assert_eq!(table.len(), 1);
        assert!(Arc::ptr_eq(&kept, &table.intern(b"select 1\0\0\0")));
    }
}
