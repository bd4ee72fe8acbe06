//! What a query does to the session it runs in, read with the lexer as the server
//! reads it. Three answers per query:
//!
//! - `pin`: the query makes session state the proxy cannot carry to another server
//!   (LISTEN, SQL PREPARE, WITH HOLD cursors, temporary objects, session advisory
//!   locks, a changed role, `set_config(…, false)`, DO blocks, LOAD, a SET it cannot
//!   read exactly, a SET beside BEGIN/COMMIT in one query). The client keeps its server.
//! - `settings`: session-level SET/RESET/DISCARD ALL the proxy can re-apply on the
//!   client's next server (it replays the statement itself, comments stripped, so
//!   the value means exactly what the server made of it).
//! - `effects`: statements that drop prepared statements (DEALLOCATE, DISCARD ALL),
//!   one entry per statement, applied when that statement's CommandComplete arrives.
//!
//! Where a reading is in doubt (unterminated text, an unknown SET form, a string that
//! reads differently with `standard_conforming_strings` off) the answer is to pin.

use super::lexer::{Kind, Lexer, Token};
use super::set::{read_reset, read_set, SetForm};

/// Why a client keeps its server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    Listen,
    Prepare,
    HoldCursor,
    TempObject,
    AdvisoryLock,
    Role,
    SetConfig,
    Do,
    Load,
    SessionCharacteristics,
    UnreadableSet,
    SettingInBatch,
    Unreadable,
    TooLarge,
}

impl Pin {
    pub fn reason(self) -> &'static str {
        match self {
            Pin::Listen => "LISTEN",
            Pin::Prepare => "SQL-level PREPARE",
            Pin::HoldCursor => "DECLARE … WITH HOLD",
            Pin::TempObject => "temporary objects",
            Pin::AdvisoryLock => "session advisory locks",
            Pin::Role => "a changed role or session authorization",
            Pin::SetConfig => "set_config(…) that is not transaction-local",
            Pin::Do => "a DO block (it can change anything)",
            Pin::Load => "LOAD",
            Pin::SessionCharacteristics => "SET SESSION CHARACTERISTICS",
            Pin::UnreadableSet => "a SET/RESET the proxy cannot read exactly",
            Pin::SettingInBatch => "a SET among other statements of one query",
            Pin::Unreadable => "SQL text the proxy cannot read (unterminated quote or comment)",
            Pin::TooLarge => "a statement larger than relay_buffer (not inspected)",
        }
    }
}

/// A session setting a client changed, to re-apply on its next server. `Set`'s
/// second field is the SET statement to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingChange {
    Set(String, String),
    Reset(String),
    ResetAll,
}

/// What one statement does to the server's prepared statements once it completes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Effect {
    #[default]
    None,
    /// DEALLOCATE name (the name as the server reads it).
    Deallocate(Vec<u8>),
    DeallocateAll,
    /// DISCARD ALL: statements, settings, everything.
    DiscardAll,
}

/// A statement that puts search_path back to the server's default, which on a
/// connection shared by schema tenants is not the tenant's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathReset {
    /// RESET search_path, SET search_path TO DEFAULT, RESET ALL, DISCARD ALL.
    Session,
    /// SET LOCAL search_path TO DEFAULT: until the transaction ends.
    Local,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classified {
    pub pin: Option<Pin>,
    /// The query's last statement resets search_path (see `PathReset`).
    pub path_reset: Option<PathReset>,
    /// A statement resets search_path and others follow it in the same query: they
    /// would run under the server's default path.
    pub path_reset_before_more: bool,
    /// Session settings the query changes, in order (none when it pins).
    pub settings: Vec<SettingChange>,
    /// One per statement, in order; `None` when no statement has an effect.
    pub effects: Option<Vec<Effect>>,
}

impl Classified {
    /// Nothing to note: the query cannot change what the proxy tracks.
    pub fn is_plain(&self) -> bool {
        self.pin.is_none()
            && self.settings.is_empty()
            && self.effects.is_none()
            && self.path_reset.is_none()
            && !self.path_reset_before_more
    }
}

/// Session advisory lock functions (the `_xact_` ones end with their transaction).
const ADVISORY_LOCKS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// Whether a query may matter, read as words without lexing: the usual SELECT,
/// INSERT or UPDATE costs one pass over its bytes and no allocation, and a query
/// found plain here is plain to the full reading too (a property test checks it).
///
/// A word is a run of identifier bytes starting with a letter, `_` or a byte of a
/// multibyte character, looked at wherever it stands (inside quotes and comments
/// too, so nothing the lexer would read as a word is missed). The words that matter
/// anywhere are in `word_matters`; SET matters where it can start a statement: at
/// the start of the text or after a `;`, or anywhere once the text has had a comment
/// opener (a comment may hide what precedes it). An UPDATE's SET clause is none of
/// these. `U&` (whose escapes could spell anything) always matters.
pub(super) fn may_matter(sql: &[u8]) -> bool {
    let mut i = 0;
    let mut saw_comment = false;
    while i < sql.len() {
        let c = sql[i];
        if BYTE_CLASS[c as usize] != WORD_START {
            match c {
                b'-' | b'/' if sql.get(i + 1) == Some(&if c == b'-' { b'-' } else { b'*' }) => {
                    saw_comment = true
                }
                b'&' if i > 0 && sql[i - 1].eq_ignore_ascii_case(&b'u') => return true,
                _ => {}
            }
            i += 1;
            continue;
        }
        let begin = i;
        while i < sql.len() && BYTE_CLASS[sql[i] as usize] != OTHER {
            i += 1;
        }
        let word = &sql[begin..i];
        if word_matters(word) {
            return true;
        }
        if word.eq_ignore_ascii_case(b"set") && (saw_comment || starts_statement(&sql[..begin])) {
            return true;
        }
    }
    false
}

const OTHER: u8 = 0;
/// Bytes that start an identifier, as PostgreSQL's scanner has them: letters, `_`,
/// and every byte of a multibyte character.
const WORD_START: u8 = 1;
/// Bytes that may follow inside one: digits and `$` too.
const WORD_REST: u8 = 2;

const BYTE_CLASS: [u8; 256] = {
    let mut table = [OTHER; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            WORD_START
        } else if b.is_ascii_digit() || b == b'$' {
            WORD_REST
        } else {
            OTHER
        };
        c += 1;
    }
    table
};

/// Whether a word may matter wherever it stands: RESET, DISCARD, DEALLOCATE,
/// PREPARE, LISTEN, LOAD, DO, HOLD, TEMP, TEMPORARY, set_config, pg_temp…, and the
/// session advisory lock functions (pg_advisory_lock…, pg_try_advisory_lock…).
/// Looked up by first letter: most words are rejected at their first byte.
fn word_matters(word: &[u8]) -> bool {
    let is = |w: &[u8]| word.eq_ignore_ascii_case(w);
    let starts = |w: &[u8]| word.len() >= w.len() && word[..w.len()].eq_ignore_ascii_case(w);
    match word[0].to_ascii_lowercase() {
        b'd' => is(b"do") || is(b"discard") || is(b"deallocate"),
        b'h' => is(b"hold"),
        b'l' => is(b"listen") || is(b"load"),
        b'p' => {
            is(b"prepare")
                || starts(b"pg_temp")
                || starts(b"pg_advisory")
                || starts(b"pg_try_advisory")
        }
        b'r' => is(b"reset"),
        b's' => is(b"set_config"),
        b't' => is(b"temp") || is(b"temporary"),
        _ => false,
    }
}

/// Whether a word after `before` can begin a statement: only whitespace between it
/// and the start of the text or a `;`.
fn starts_statement(before: &[u8]) -> bool {
    match before
        .iter()
        .rev()
        .find(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c'))
    {
        None | Some(b';') => true,
        Some(_) => false,
    }
}

/// Classifies a query (one or more statements). `standard_strings`: the session's
/// `standard_conforming_strings`.
pub fn classify(sql: &[u8], standard_strings: bool) -> Classified {
    if !may_matter(sql) {
        return Classified::default();
    }
    classify_lexed(sql, standard_strings)
}

/// The full reading, with the lexer, of a query that may matter.
pub(super) fn classify_lexed(sql: &[u8], standard_strings: bool) -> Classified {
    let mut lexer = Lexer::new(sql, standard_strings);
    let first = classify_tokens(&mut lexer);
    if !lexer.saw_backslash || !standard_strings {
        return first;
    }
    // `'\''` is one string with standard_conforming_strings off and a string plus an
    // open quote with it on. The session says on, but a SET in the same query could
    // turn it off: read it both ways and pin unless they agree.
    let other = classify_tokens(&mut Lexer::new(sql, false));
    if other == first {
        first
    } else {
        Classified {
            pin: first.pin.or(other.pin).or(Some(Pin::Unreadable)),
            ..Classified::default()
        }
    }
}

fn classify_tokens(lexer: &mut Lexer<'_>) -> Classified {
    let mut effects: Vec<Effect> = Vec::new();
    let mut settings = Vec::new();
    let mut statements = 0usize;
    let mut transaction_control = false;
    let mut pin = None;
    let mut path_reset = None;
    let mut path_reset_before_more = false;
    let mut tokens: Vec<Token<'_>> = Vec::new();
    let mut finish = |tokens: &mut Vec<Token<'_>>, pin: &mut Option<Pin>| {
        if tokens.is_empty() {
            return;
        }
        statements += 1;
        transaction_control |= TRANSACTION_CONTROL.iter().any(|k| tokens[0].is(k));
        let read = read_statement(tokens);
        path_reset_before_more |= path_reset.is_some();
        path_reset = resets_path(tokens, &read);
        if pin.is_none() {
            *pin = read.pin;
        }
        settings.extend(read.setting);
        effects.push(read.effect);
        tokens.clear();
    };
    for token in lexer.by_ref() {
        match token.kind {
            Kind::Unterminated => {
                pin.get_or_insert(Pin::Unreadable);
            }
            Kind::Punct if token.text == b";" => {
                finish(&mut tokens, &mut pin);
                continue;
            }
            _ => {}
        }
        tokens.push(token);
    }
    finish(&mut tokens, &mut pin);
    // Several statements of one query run as one implicit transaction: all or
    // nothing, so their settings hold together if the query succeeds. With BEGIN,
    // COMMIT and the like among them, some may hold without the others: pinned.
    if !settings.is_empty() && statements > 1 && transaction_control {
        pin.get_or_insert(Pin::SettingInBatch);
    }
    Classified {
        pin,
        path_reset,
        path_reset_before_more,
        settings: if pin.is_none() { settings } else { Vec::new() },
        effects: effects
            .iter()
            .any(|e| *e != Effect::None)
            .then_some(effects),
    }
}

/// Whether one statement puts search_path back to the server's default.
fn resets_path(tokens: &[Token<'_>], read: &Read) -> Option<PathReset> {
    match &read.setting {
        Some(SettingChange::ResetAll) => return Some(PathReset::Session),
        Some(SettingChange::Reset(name)) if name == "search_path" => {
            return Some(PathReset::Session)
        }
        _ => {}
    }
    // SET LOCAL search_path TO DEFAULT / SET LOCAL SCHEMA DEFAULT (not followed:
    // transaction-local).
    let word = |i: usize, k: &str| tokens.get(i).is_some_and(|t| t.is(k));
    if !(word(0, "set") && word(1, "local") && tokens.last().is_some_and(|t| t.is("default"))) {
        return None;
    }
    let named = match tokens.get(2).and_then(identifier) {
        Some(name) => name.eq_ignore_ascii_case(b"search_path"),
        None => false,
    };
    let local = match tokens.len() {
        4 => word(2, "schema"),
        5 => named && (word(3, "to") || tokens[3].text == b"="),
        _ => false,
    };
    local.then_some(PathReset::Local)
}

/// Statements that end or start a transaction inside a query of several.
const TRANSACTION_CONTROL: &[&str] = &[
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "savepoint",
    "release",
    "prepare",
];

#[derive(Default)]
struct Read {
    pin: Option<Pin>,
    setting: Option<SettingChange>,
    effect: Effect,
}

fn pinned(pin: Pin) -> Read {
    Read {
        pin: Some(pin),
        ..Read::default()
    }
}

/// One statement's tokens (no `;`).
fn read_statement(tokens: &[Token<'_>]) -> Read {
    if let Some(pin) = scan_calls_and_temp(tokens) {
        return pinned(pin);
    }
    let first = tokens[0];
    let second = tokens.get(1);
    let form = match first {
        t if t.is("set") => Some(read_set(&tokens[1..])),
        t if t.is("reset") => Some(read_reset(&tokens[1..])),
        _ => None,
    };
    if let Some(form) = form {
        return match form {
            SetForm::Nothing => Read::default(),
            SetForm::Pin(pin) => pinned(pin),
            SetForm::Change(change) => Read {
                setting: Some(change),
                ..Read::default()
            },
        };
    }
    if first.is("discard") {
        return match (second, tokens.len()) {
            (Some(t), 2) if t.is("all") => Read {
                setting: Some(SettingChange::ResetAll),
                effect: Effect::DiscardAll,
                ..Read::default()
            },
            // PLANS, SEQUENCES, TEMP: nothing the proxy tracks (temporary objects
            // pinned their client when they were made).
            _ => Read::default(),
        };
    }
    if first.is("deallocate") {
        let rest = match second {
            Some(t) if t.is("prepare") => &tokens[2..],
            _ => &tokens[1..],
        };
        let effect = match rest {
            [t] if t.is("all") => Effect::DeallocateAll,
            [t] => identifier(t).map_or(Effect::None, Effect::Deallocate),
            _ => Effect::None,
        };
        return Read {
            effect,
            ..Read::default()
        };
    }
    if first.is("prepare") && !second.is_some_and(|t| t.is("transaction")) {
        return pinned(Pin::Prepare);
    }
    if first.is("listen") {
        return pinned(Pin::Listen);
    }
    if first.is("do") {
        return pinned(Pin::Do);
    }
    if first.is("load") {
        return pinned(Pin::Load);
    }
    if first.is("declare")
        && tokens
            .windows(2)
            .any(|w| w[0].is("with") && w[1].is("hold"))
    {
        return pinned(Pin::HoldCursor);
    }
    Read::default()
}

/// Calls that change the session from inside any statement, and temporary objects.
fn scan_calls_and_temp(tokens: &[Token<'_>]) -> Option<Pin> {
    let into_makes_tables = !tokens[0].is("insert") && !tokens[0].is("merge");
    for (i, token) in tokens.iter().enumerate() {
        // Unquoted words are compared without folding them into a copy.
        let quoted;
        let (name, fold): (&[u8], bool) = match token.kind {
            Kind::Word => (token.text, true),
            Kind::QuotedIdent => match identifier(token) {
                Some(name) => {
                    quoted = name;
                    (&quoted, false)
                }
                // U&"…": its escapes could name any function.
                None => return Some(Pin::Unreadable),
            },
            _ => continue,
        };
        let is = |k: &[u8]| match fold {
            true => name.eq_ignore_ascii_case(k),
            false => name == k,
        };
        let prefix = |k: &[u8]| match fold {
            true => name.len() >= k.len() && name[..k.len()].eq_ignore_ascii_case(k),
            false => name.starts_with(k),
        };
        if is(b"set_config") && tokens.get(i + 1).is_some_and(|t| t.is_punct(b'(')) {
            if !third_argument_is_true(&tokens[i + 2..]) {
                return Some(Pin::SetConfig);
            }
        } else if ADVISORY_LOCKS.iter().any(|f| is(f.as_bytes())) {
            return Some(Pin::AdvisoryLock);
        } else if is(b"pg_temp") || prefix(b"pg_temp_") {
            return Some(Pin::TempObject);
        } else if token.kind == Kind::Word && (is(b"temp") || is(b"temporary")) {
            let before = i.checked_sub(1).map(|b| tokens[b]);
            let makes = before.is_some_and(|b| {
                ["create", "replace", "global", "local"]
                    .iter()
                    .any(|k| b.is(k))
                    || (b.is("into") && into_makes_tables)
            });
            if makes {
                return Some(Pin::TempObject);
            }
        }
    }
    None
}

/// Whether a call's argument list (after its `(`) has a third argument that is the
/// literal `true`: `set_config(name, value, true)` ends with its transaction.
fn third_argument_is_true(args: &[Token<'_>]) -> bool {
    let mut depth = 0usize;
    let mut argument = 0;
    let mut third: Vec<Token<'_>> = Vec::new();
    for token in args {
        if token.is_punct(b'(') || token.is_punct(b'[') {
            depth += 1;
        } else if token.is_punct(b')') || token.is_punct(b']') {
            if depth == 0 {
                break;
            }
            depth -= 1;
        } else if depth == 0 && token.is_punct(b',') {
            argument += 1;
            continue;
        }
        if argument == 2 {
            third.push(*token);
        }
    }
    matches!(third.as_slice(), [t] if t.is("true"))
}

/// An identifier's name as the server reads it: unquoted words fold to lower case,
/// `"quoted"` ones keep theirs. `U&"…"` is not read (`None`).
pub fn identifier(token: &Token<'_>) -> Option<Vec<u8>> {
    match token.kind {
        Kind::Word => Some(token.text.to_ascii_lowercase()),
        Kind::QuotedIdent if token.text.first() == Some(&b'"') => {
            let inner = token.text.get(1..token.text.len() - 1)?;
            let mut name = Vec::with_capacity(inner.len());
            let mut i = 0;
            while i < inner.len() {
                name.push(inner[i]);
                i += if inner[i] == b'"' { 2 } else { 1 };
            }
            Some(name)
        }
        _ => None,
    }
}
