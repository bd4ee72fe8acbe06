//! The grammar of SET and RESET (gram.y's VariableSetStmt and VariableResetStmt),
//! enough to tell a session-level change the proxy can replay from one it must pin.

use super::classify::{identifier, Pin, SettingChange};
use super::lexer::{Kind, Token};

/// Reported parameters: the server tells the client their new value
/// (ParameterStatus), and the proxy follows them from that, not from the SQL.
const REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "intervalstyle",
    "timezone",
    "standard_conforming_strings",
];

/// Settings that only ever last for the current transaction.
const TRANSACTION_SCOPED: &[&str] = &[
    "transaction_isolation",
    "transaction_read_only",
    "transaction_deferrable",
];

pub enum SetForm {
    /// Nothing for the proxy to carry: transaction-local, or a reported parameter.
    Nothing,
    Pin(Pin),
    Change(SettingChange),
}

/// `SET …` (tokens after SET).
pub fn read_set(tokens: &[Token<'_>]) -> SetForm {
    let Some(first) = tokens.first() else {
        return SetForm::Pin(Pin::UnreadableSet);
    };
    if first.is("local") {
        return SetForm::Nothing;
    }
    let body = if first.is("session") {
        &tokens[1..]
    } else {
        tokens
    };
    let word = |i: usize, k: &str| body.get(i).is_some_and(|t| t.is(k));
    if word(0, "transaction") || word(0, "constraints") {
        return SetForm::Nothing;
    }
    if word(0, "role")
        || word(0, "authorization")
        || (word(0, "session") && word(1, "authorization"))
    {
        return SetForm::Pin(Pin::Role);
    }
    if word(0, "characteristics") || (word(0, "session") && word(1, "characteristics")) {
        return SetForm::Pin(Pin::SessionCharacteristics);
    }
    if (word(0, "time") && word(1, "zone")) || word(0, "names") {
        return SetForm::Nothing;
    }
    let (name, rest) = if word(0, "schema") {
        ("search_path".to_string(), &body[1..])
    } else if word(0, "xml") && word(1, "option") {
        ("xmloption".to_string(), &body[2..])
    } else {
        let Some((name, after)) = setting_name(body) else {
            return SetForm::Pin(Pin::UnreadableSet);
        };
        match after.first() {
            Some(t) if t.is("to") || (t.kind == Kind::Op && t.text == b"=") => (name, &after[1..]),
            _ => return SetForm::Pin(Pin::UnreadableSet),
        }
    };
    if let Some(form) = special(&name) {
        return form;
    }
    if matches!(rest, [t] if t.is("default")) {
        return SetForm::Change(SettingChange::Reset(name));
    }
    if !is_value_list(rest) {
        return SetForm::Pin(Pin::UnreadableSet);
    }
    // Replayed as written, less comments and SESSION: the server reads it again as it
    // did the first time.
    let mut statement = String::from("SET");
    for token in body {
        statement.push(' ');
        statement.push_str(&String::from_utf8_lossy(token.text));
    }
    SetForm::Change(SettingChange::Set(name, statement))
}

/// `RESET …` (tokens after RESET).
pub fn read_reset(tokens: &[Token<'_>]) -> SetForm {
    let word = |i: usize, k: &str| tokens.get(i).is_some_and(|t| t.is(k));
    match tokens.len() {
        1 if word(0, "all") => return SetForm::Change(SettingChange::ResetAll),
        1 if word(0, "role") => return SetForm::Pin(Pin::Role),
        2 if word(0, "session") && word(1, "authorization") => return SetForm::Pin(Pin::Role),
        2 if word(0, "time") && word(1, "zone") => return SetForm::Nothing,
        3 if word(0, "transaction") => return SetForm::Nothing,
        _ => {}
    }
    match setting_name(tokens) {
        Some((name, [])) => special(&name).unwrap_or(SetForm::Change(SettingChange::Reset(name))),
        _ => SetForm::Pin(Pin::UnreadableSet),
    }
}

/// Names the proxy does not replay: role changes pin, reported and transaction-scoped
/// settings need nothing.
fn special(name: &str) -> Option<SetForm> {
    if name == "role" || name == "session_authorization" {
        return Some(SetForm::Pin(Pin::Role));
    }
    if REPORTED.contains(&name) || TRANSACTION_SCOPED.contains(&name) {
        return Some(SetForm::Nothing);
    }
    None
}

/// A setting name (`name` or `a.b`), lower-cased as the server compares them, and
/// the tokens after it.
fn setting_name<'t, 'a>(tokens: &'t [Token<'a>]) -> Option<(String, &'t [Token<'a>])> {
    let mut name = Vec::new();
    let mut i = 0;
    loop {
        let part = identifier(tokens.get(i)?)?;
        if part.is_empty() {
            return None;
        }
        name.extend(part.to_ascii_lowercase());
        i += 1;
        if tokens.get(i).is_some_and(|t| t.is_punct(b'.')) {
            name.push(b'.');
            i += 1;
        } else {
            break;
        }
    }
    let name = String::from_utf8(name).ok()?;
    Some((name, &tokens[i..]))
}

/// `value [, value …]`, each a string, word, or (signed) number.
fn is_value_list(tokens: &[Token<'_>]) -> bool {
    let mut expect_value = true;
    let mut i = 0;
    while i < tokens.len() {
        let token = tokens[i];
        if expect_value {
            match token.kind {
                Kind::String | Kind::Number => {}
                Kind::Word => {
                    // Adjacent strings continue each other across lines, and UESCAPE
                    // changes how a U& string reads: neither is read here.
                    if token.is("uescape") {
                        return false;
                    }
                }
                Kind::QuotedIdent if token.text.first() == Some(&b'"') => {}
                Kind::Op if token.text == b"-" || token.text == b"+" => {
                    if tokens.get(i + 1).is_none_or(|t| t.kind != Kind::Number) {
                        return false;
                    }
                    i += 1;
                }
                _ => return false,
            }
            expect_value = false;
        } else if token.is_punct(b',') {
            expect_value = true;
        } else {
            return false;
        }
        i += 1;
    }
    !expect_value
}
