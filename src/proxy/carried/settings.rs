//! The settings that follow a client onto each server connection: what it asked for
//! at startup, the reported parameters the server told it, and the session-level
//! SET/RESET it ran (replayed as written; see `sql::classify`).

use crate::backend::{replayed, ServerConn, CLIENT_PARAMETERS};
use crate::sql::SettingChange;

/// Startup keys that are not settings: they pick the connection, not configure it.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// The settings a client asked for at startup, in order: plain parameters plus the
/// `-c name=value` / `--name=value` items of `options`.
pub fn client_settings(params: &[(String, String)]) -> Vec<(String, String)> {
    let mut settings: Vec<(String, String)> = Vec::new();
    for (name, value) in params {
        if name == "options" {
            for (n, v) in parse_options(value) {
                set_setting(&mut settings, &n, &v);
            }
        } else if !NOT_SETTINGS.contains(&name.as_str()) {
            set_setting(&mut settings, name, value);
        }
    }
    settings
}

/// Sets `name` in a client's settings list, keeping its place if already there.
pub fn set_setting(settings: &mut Vec<(String, String)>, name: &str, value: &str) {
    match settings.iter_mut().find(|(n, _)| n == name) {
        Some(entry) if entry.1 == value => {}
        Some(entry) => entry.1 = value.to_string(),
        None => settings.push((name.to_string(), value.to_string())),
    }
}

fn parse_options(options: &str) -> Vec<(String, String)> {
    let words = crate::protocol::startup::split_options(options);
    let mut settings = Vec::new();
    let mut words = words.iter();
    while let Some(word) = words.next() {
        let item = if word == "-c" {
            words.next().map(String::as_str)
        } else if let Some(rest) = word.strip_prefix("-c") {
            Some(rest)
        } else {
            word.strip_prefix("--")
        };
        if let Some((name, value)) = item.and_then(|i| i.split_once('=')) {
            settings.push((name.replace('-', "_"), value.to_string()));
        }
    }
    settings
}

/// Drops the client settings that equal what a fresh server session has: a server
/// connection is brought back to those anyway, and an idle client should hold as
/// little as possible.
pub fn keep_only_changes(settings: &mut Vec<(String, String)>, initial: &[(String, String)]) {
    settings.retain(|(name, value)| !initial.iter().any(|(n, v)| n == name && v == value));
    settings.shrink_to_fit();
}

/// Applies a client's SET/RESET to the settings that follow it, and notes it on the
/// server it ran on. Reported settings are followed through ParameterStatus instead.
pub fn follow_setting(
    settings: &mut Vec<(String, String)>,
    conn: &mut ServerConn,
    change: SettingChange,
) {
    let reported = |name: &str| {
        CLIENT_PARAMETERS
            .iter()
            .any(|p| p.eq_ignore_ascii_case(name))
    };
    // On a shared server search_path is the client's tenant path unless the client
    // set its own; either way the server's is no longer known to be a tenant's.
    let touches_path = match &change {
        SettingChange::Set(name, _) | SettingChange::Reset(name) => {
            conn.follows_path(&name.to_ascii_lowercase())
        }
        SettingChange::ResetAll => conn.shared,
    };
    if touches_path {
        conn.path = None;
    }
    match change {
        SettingChange::Set(name, statement) if touches_path => {
            set_setting(settings, &name, &replayed(&statement));
        }
        SettingChange::Reset(name) if touches_path => {
            settings.retain(|(n, _)| n != &name);
        }
        SettingChange::Set(name, statement) if !reported(&name) => {
            let value = replayed(&statement);
            conn.note_setting(&name, Some(&value));
            set_setting(settings, &name, &value);
        }
        SettingChange::Reset(name) if !reported(&name) => {
            let name = name.to_ascii_lowercase();
            conn.note_setting(&name, None);
            settings.retain(|(n, _)| n != &name);
        }
        SettingChange::ResetAll => {
            conn.forget_settings();
            settings.retain(|(n, _)| reported(n));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn keeps_settings_and_drops_connection_keys() {
        let settings = client_settings(&p(&[
            ("user", "app"),
            ("database", "acme"),
            ("application_name", "psql"),
            ("TimeZone", "UTC"),
        ]));
        assert_eq!(
            settings,
            p(&[("application_name", "psql"), ("TimeZone", "UTC")])
        );
    }

    #[test]
    fn reads_options() {
        let settings = client_settings(&p(&[(
            "options",
            "-c statement_timeout=5s --work-mem=8MB -capplication_name=a\\ b",
        )]));
        assert_eq!(
            settings,
            p(&[
                ("statement_timeout", "5s"),
                ("work_mem", "8MB"),
                ("application_name", "a b")
            ])
        );
    }
}
