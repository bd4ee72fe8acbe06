//! Spotting SQL that only works when a client keeps its server: LISTEN, SQL-level
//! PREPARE, WITH HOLD cursors, temporary tables, session advisory locks, a changed
//! role, and session settings the proxy cannot follow (a SET among other statements
//! of one query). In transaction mode such a client is pinned to its server for the
//! rest of its session.
//!
//! This is a word scan, not a parser. It errs towards pinning: a false match costs a
//! pooled connection for one client's lifetime, a missed one would cost correctness.

/// A session-only feature found in a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionFeature {
    Listen,
    Prepare,
    HoldCursor,
    TempTable,
    AdvisoryLock,
    Role,
    SettingInBatch,
}

impl SessionFeature {
    pub fn name(self) -> &'static str {
        match self {
            SessionFeature::Listen => "LISTEN",
            SessionFeature::Prepare => "PREPARE",
            SessionFeature::HoldCursor => "DECLARE … WITH HOLD",
            SessionFeature::TempTable => "temporary tables",
            SessionFeature::AdvisoryLock => "session advisory locks",
            SessionFeature::Role => "SET ROLE / SET SESSION AUTHORIZATION",
            SessionFeature::SettingInBatch => "SET among other statements of one query",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    Word(&'a [u8]),
    /// `;`: the end of a statement.
    End,
}

/// The words of `sql` and its statement ends, without allocating. Comments and
/// quoted strings or identifiers are skipped so their contents do not count.
struct Tokens<'a> {
    sql: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        let sql = self.sql;
        while self.at < sql.len() {
            let c = sql[self.at];
            let next = sql.get(self.at + 1).copied();
            if c == b'-' && next == Some(b'-') {
                while self.at < sql.len() && sql[self.at] != b'\n' {
                    self.at += 1;
                }
            } else if c == b'/' && next == Some(b'*') {
                self.at += 2;
                while self.at + 1 < sql.len() && !(sql[self.at] == b'*' && sql[self.at + 1] == b'/')
                {
                    self.at += 1;
                }
                self.at += 2;
            } else if c == b'\'' || c == b'"' {
                self.at += 1;
                while self.at < sql.len() && sql[self.at] != c {
                    self.at += 1;
                }
                self.at += 1;
            } else if c == b';' {
                self.at += 1;
                return Some(Token::End);
            } else if c.is_ascii_alphanumeric() || c == b'_' {
                let start = self.at;
                while self.at < sql.len()
                    && (sql[self.at].is_ascii_alphanumeric() || sql[self.at] == b'_')
                {
                    self.at += 1;
                }
                return Some(Token::Word(&sql[start..self.at]));
            } else {
                self.at += 1;
            }
        }
        None
    }
}

fn tokens(sql: &[u8]) -> Tokens<'_> {
    Tokens { sql, at: 0 }
}

fn is(word: Option<&[u8]>, keyword: &str) -> bool {
    word.is_some_and(|w| w.eq_ignore_ascii_case(keyword.as_bytes()))
}

const ADVISORY_LOCKS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// The first session-only feature `sql` uses, if any. One pass, no allocation: it
/// runs on every query of a transaction-mode client.
pub fn session_feature(sql: &[u8]) -> Option<SessionFeature> {
    // Per statement: its first and second word, the word before this one, and how
    // many words came before.
    let mut first: Option<&[u8]> = None;
    let mut second: Option<&[u8]> = None;
    let mut previous: Option<&[u8]> = None;
    let mut count = 0;
    // Statements so far, and whether one was a session-level SET.
    let (mut statements, mut session_set) = (0, false);
    let prepare = |first: Option<&[u8]>, second: Option<&[u8]>| {
        is(first, "prepare") && !is(second, "transaction")
    };
    for token in tokens(sql).chain([Token::End]) {
        let word = match token {
            Token::End => {
                if prepare(first, second) {
                    return Some(SessionFeature::Prepare);
                }
                if first.is_some() {
                    statements += 1;
                }
                (first, second, previous) = (None, None, None);
                count = 0;
                continue;
            }
            Token::Word(word) => word,
        };
        if is(first, "set")
            && ((count == 1 && is(Some(word), "role"))
                || (count == 2 && is(second, "session") && is(Some(word), "authorization")))
        {
            return Some(SessionFeature::Role);
        }
        if count == 1 && is(first, "set") {
            session_set |= !["local", "transaction", "constraints"]
                .iter()
                .any(|k| is(Some(word), k));
        }
        if first.is_none() {
            first = Some(word);
            if is(first, "listen") {
                return Some(SessionFeature::Listen);
            }
        } else if second.is_none() {
            second = Some(word);
        }
        if is(first, "declare") && is(previous, "with") && is(Some(word), "hold") {
            return Some(SessionFeature::HoldCursor);
        }
        // CREATE [OR REPLACE] [GLOBAL|LOCAL] TEMP[ORARY] …: within the first words only,
        // so a column named temp does not count.
        if is(first, "create")
            && count < 4
            && (is(Some(word), "temp") || is(Some(word), "temporary"))
        {
            return Some(SessionFeature::TempTable);
        }
        if ADVISORY_LOCKS.iter().any(|f| is(Some(word), f)) {
            return Some(SessionFeature::AdvisoryLock);
        }
        previous = Some(word);
        count += 1;
    }
    // Alone, a SET is followed from server to server; among others it is not.
    (session_set && statements > 1).then_some(SessionFeature::SettingInBatch)
}

/// Whether `sql` drops the server's prepared statements (DISCARD ALL / PLANS,
/// DEALLOCATE).
pub fn drops_statements(sql: &[u8]) -> bool {
    let (mut first, mut second): (Option<&[u8]>, Option<&[u8]>) = (None, None);
    for token in tokens(sql).chain([Token::End]) {
        match token {
            Token::End => {
                if is(first, "deallocate")
                    || (is(first, "discard") && (is(second, "all") || is(second, "plans")))
                {
                    return true;
                }
                (first, second) = (None, None);
            }
            Token::Word(word) if first.is_none() => first = Some(word),
            Token::Word(word) if second.is_none() => second = Some(word),
            Token::Word(_) => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_session_features() {
        assert_eq!(
            session_feature(b"LISTEN jobs"),
            Some(SessionFeature::Listen)
        );
        assert_eq!(
            session_feature(b"select 1; listen jobs"),
            Some(SessionFeature::Listen)
        );
        assert_eq!(
            session_feature(b"PREPARE q AS select 1"),
            Some(SessionFeature::Prepare)
        );
        assert_eq!(session_feature(b"PREPARE TRANSACTION 'x'"), None);
        assert_eq!(
            session_feature(b"DECLARE c CURSOR WITH HOLD FOR select 1"),
            Some(SessionFeature::HoldCursor)
        );
        assert_eq!(session_feature(b"DECLARE c CURSOR FOR select 1"), None);
        assert_eq!(
            session_feature(b"create temporary table t (x int)"),
            Some(SessionFeature::TempTable)
        );
        assert_eq!(
            session_feature(b"select pg_advisory_lock(1)"),
            Some(SessionFeature::AdvisoryLock)
        );
        assert_eq!(session_feature(b"select pg_advisory_xact_lock(1)"), None);
    }

    #[test]
    fn a_changed_role_or_a_set_among_statements_pins() {
        assert_eq!(
            session_feature(b"SET ROLE reader"),
            Some(SessionFeature::Role)
        );
        assert_eq!(
            session_feature(b"set session authorization bob"),
            Some(SessionFeature::Role)
        );
        assert_eq!(session_feature(b"SET SESSION work_mem = '8MB'"), None);
        assert_eq!(session_feature(b"SET work_mem = '8MB';"), None);
        assert_eq!(
            session_feature(b"SET work_mem = '8MB'; select 1"),
            Some(SessionFeature::SettingInBatch)
        );
        assert_eq!(
            session_feature(b"BEGIN; SET LOCAL work_mem = '8MB'; select 1; COMMIT"),
            None
        );
        assert_eq!(session_feature(b"select 'set x = 1'; select 2"), None);
    }

    #[test]
    fn ignores_words_in_literals_and_comments() {
        assert_eq!(
            session_feature(b"select 'listen'; -- listen\n select 1"),
            None
        );
        assert_eq!(session_feature(b"/* prepare */ select \"listen\""), None);
        assert_eq!(
            session_feature(b"insert into t values ('create temp table')"),
            None
        );
    }

    #[test]
    fn statement_dropping() {
        assert!(drops_statements(b"DISCARD ALL"));
        assert!(drops_statements(b"deallocate all"));
        assert!(!drops_statements(b"discard temp"));
        assert!(!drops_statements(b"select 'discard all'"));
    }
}

/// A session-level `SET`/`RESET` a client ran as a statement of its own, which the
/// proxy re-applies when the client moves to another server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingChange {
    Set(String, String),
    Reset(String),
    ResetAll,
}

/// Recognises `SET [SESSION] name {=|TO} value`, `RESET name`, `RESET ALL` and
/// `DISCARD ALL` when they are the whole query. `SET LOCAL`, `SET TRANSACTION`,
/// `SET ROLE` and the like are not settings that outlive a transaction or that the
/// proxy could replay, and are left alone.
pub fn setting_change(sql: &[u8]) -> Option<SettingChange> {
    // Cheap refusal first: this runs on every query and Parse in transaction mode.
    let start = sql.iter().find(|b| !b.is_ascii_whitespace())?;
    if !matches!(start.to_ascii_lowercase(), b's' | b'r' | b'd') {
        return None;
    }
    let text = std::str::from_utf8(sql)
        .ok()?
        .trim()
        .trim_end_matches(';')
        .trim();
    if text.contains(';') {
        return None;
    }
    let mut words = text.split_whitespace();
    let first = words.next()?.to_ascii_lowercase();
    match first.as_str() {
        "reset" => {
            let name = words.next()?;
            if words.next().is_some() {
                return None;
            }
            Some(match name.to_ascii_lowercase().as_str() {
                "all" => SettingChange::ResetAll,
                "role" | "session" => return None,
                _ => SettingChange::Reset(name.to_string()),
            })
        }
        "discard" if words.next()?.eq_ignore_ascii_case("all") => Some(SettingChange::ResetAll),
        "set" => {
            let rest = text[3..].trim_start();
            let rest = match rest.get(..8) {
                Some(w) if w.eq_ignore_ascii_case("session ") => rest[8..].trim_start(),
                _ => rest,
            };
            let end = rest.find(|c: char| c.is_whitespace() || c == '=')?;
            let name = &rest[..end];
            let lower = name.to_ascii_lowercase();
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
                || matches!(
                    lower.as_str(),
                    "local" | "transaction" | "role" | "session" | "time" | "constraints"
                )
            {
                return None;
            }
            let rest = rest[end..].trim_start();
            let value = if let Some(v) = rest.strip_prefix('=') {
                v
            } else if rest.len() > 3 && rest[..3].eq_ignore_ascii_case("to ") {
                &rest[3..]
            } else {
                return None;
            }
            .trim();
            if value.eq_ignore_ascii_case("default") {
                return Some(SettingChange::Reset(name.to_string()));
            }
            Some(SettingChange::Set(name.to_string(), unquote(value)?))
        }
        _ => None,
    }
}

/// A SET value as set_config takes it: 'quoted' text unquoted, anything else as is.
fn unquote(value: &str) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    if !value.starts_with('\'') {
        return (!value.contains('\'')).then(|| value.to_string());
    }
    let inner = value.strip_prefix('\'')?.strip_suffix('\'')?;
    (!inner.replace("''", "").contains('\'')).then(|| inner.replace("''", "'"))
}

#[cfg(test)]
mod setting_tests {
    use super::*;

    fn set(n: &str, v: &str) -> Option<SettingChange> {
        Some(SettingChange::Set(n.into(), v.into()))
    }

    #[test]
    fn recognises_session_settings() {
        assert_eq!(
            setting_change(b"SET extra_float_digits = 3"),
            set("extra_float_digits", "3")
        );
        assert_eq!(
            setting_change(b"set statement_timeout to '5s';"),
            set("statement_timeout", "5s")
        );
        assert_eq!(
            setting_change(b"SET SESSION work_mem='8MB'"),
            set("work_mem", "8MB")
        );
        assert_eq!(
            setting_change(b"SET application_name = 'it''s'"),
            set("application_name", "it's")
        );
        assert_eq!(
            setting_change(b"SET search_path TO a, b"),
            set("search_path", "a, b")
        );
        assert_eq!(
            setting_change(b"SET work_mem TO DEFAULT"),
            Some(SettingChange::Reset("work_mem".into()))
        );
        assert_eq!(
            setting_change(b"RESET work_mem"),
            Some(SettingChange::Reset("work_mem".into()))
        );
        assert_eq!(setting_change(b"RESET ALL"), Some(SettingChange::ResetAll));
        assert_eq!(
            setting_change(b"discard all"),
            Some(SettingChange::ResetAll)
        );
    }

    #[test]
    fn leaves_other_statements_alone() {
        for sql in [
            &b"SET LOCAL work_mem = '1MB'"[..],
            b"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            b"SET ROLE admin",
            b"SET TIME ZONE 'UTC'",
            b"SET a = 1; SET b = 2",
            b"SELECT 1",
            b"SET x = 'unterminated",
            b"RESET ROLE",
        ] {
            assert_eq!(
                setting_change(sql),
                None,
                "{}",
                String::from_utf8_lossy(sql)
            );
        }
    }
}
