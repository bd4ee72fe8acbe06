//! Which of a client's startup parameters follow it onto server connections.

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

/// Splits a libpq `options` value the way the server does: whitespace separates
/// words, a backslash escapes the next character.
fn split_words(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

fn parse_options(options: &str) -> Vec<(String, String)> {
    let words = split_words(options);
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
