//! The console's commands: parsed from the text of a query, with the columns each
//! answers with known before it runs (Describe needs them).

use super::wire::{Column, Type};

/// What the console can list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Tenants,
    Pools,
    Clients,
    Servers,
    Hosts,
    Stats,
    Config,
    Version,
    Moves,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(Show),
    /// `None`: every tenant.
    Pause(Option<String>),
    Resume(Option<String>),
    Reload,
    Kill(String),
    Shutdown,
    /// `MOVE tenant TO host [COPY] [DROP SOURCE]`.
    Move(crate::moves::MoveRequest),
    /// `ABORT MOVE tenant`.
    AbortMove(String),
    /// `SET …` from drivers that configure every connection: accepted, ignored.
    Set,
    /// Nothing but whitespace and semicolons.
    Empty,
}

/// The list an unknown command is answered with.
pub const COMMANDS: &str = "SHOW TENANTS | POOLS | CLIENTS | SERVERS | HOSTS | STATS | CONFIG | VERSION; PAUSE [tenant]; RESUME [tenant]; RELOAD; KILL tenant; SHUTDOWN; SHOW MOVES; MOVE tenant TO host [COPY] [DROP SOURCE]; ABORT MOVE tenant";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl Command {
    pub fn parse(text: &str) -> Result<Command, ParseError> {
        let text = text.trim().trim_end_matches(';').trim();
        let words: Vec<&str> = text.split_whitespace().collect();
        let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
        let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
        let tenant = |i: usize| words.get(i).map(|w| unquote(w));
        let command = match upper.as_slice() {
            [] => Command::Empty,
            ["SHOW", what] => Command::Show(match *what {
                "TENANTS" => Show::Tenants,
                "POOLS" => Show::Pools,
                "CLIENTS" => Show::Clients,
                "SERVERS" => Show::Servers,
                "HOSTS" => Show::Hosts,
                "STATS" => Show::Stats,
                "CONFIG" => Show::Config,
                "VERSION" => Show::Version,
                "MOVES" => Show::Moves,
                _ => return Err(unknown(text)),
            }),
            ["PAUSE"] => Command::Pause(None),
            ["PAUSE", _] => Command::Pause(tenant(1)),
            ["RESUME"] => Command::Resume(None),
            ["RESUME", _] => Command::Resume(tenant(1)),
            ["RELOAD"] => Command::Reload,
            ["KILL", _] => Command::Kill(tenant(1).expect("two words")),
            ["SHUTDOWN"] => Command::Shutdown,
            ["ABORT", "MOVE", _] => Command::AbortMove(tenant(2).expect("three words")),
            ["MOVE", ..] => match super::moving::parse(&words) {
                Some(request) => Command::Move(request),
                None => return Err(unknown(text)),
            },
            ["SET", ..] => Command::Set,
            _ => return Err(unknown(text)),
        };
        Ok(command)
    }

    /// The columns of the rows this command answers with; none for a command that
    /// answers with a tag only.
    pub fn columns(&self) -> &'static [Column] {
        match self {
            Command::Show(show) => show.columns(),
            _ => &[],
        }
    }

    /// The CommandComplete tag (SHOW adds its row count).
    pub fn tag(&self) -> &'static str {
        match self {
            Command::Show(_) => "SHOW",
            Command::Pause(_) => "PAUSE",
            Command::Resume(_) => "RESUME",
            Command::Reload => "RELOAD",
            Command::Kill(_) => "KILL",
            Command::Shutdown => "SHUTDOWN",
            Command::Move(_) => "MOVE",
            Command::AbortMove(_) => "ABORT",
            Command::Set => "SET",
            Command::Empty => "",
        }
    }
}

fn unquote(word: &str) -> String {
    match word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => word.to_string(),
    }
}

fn unknown(text: &str) -> ParseError {
    let shown: String = text.chars().take(60).collect();
    ParseError(format!(
        "unknown admin console command \"{shown}\"; the commands are: {COMMANDS}"
    ))
}

use Type::{Bool, Float8, Int8, Text};

impl Show {
    pub fn columns(self) -> &'static [Column] {
        match self {
            Show::Moves => super::moving::COLUMNS,
            Show::Tenants => &[
                Column {
                    name: "tenant",
                    ty: Text,
                },
                Column {
                    name: "host",
                    ty: Text,
                },
                Column {
                    name: "database",
                    ty: Text,
                },
                Column {
                    name: "search_path",
                    ty: Text,
                },
                Column {
                    name: "pool_mode",
                    ty: Text,
                },
                Column {
                    name: "pool_size",
                    ty: Int8,
                },
                Column {
                    name: "clients",
                    ty: Int8,
                },
                Column {
                    name: "paused",
                    ty: Bool,
                },
            ],
            Show::Pools => &[
                Column {
                    name: "tenant",
                    ty: Text,
                },
                Column {
                    name: "user",
                    ty: Text,
                },
                Column {
                    name: "host",
                    ty: Text,
                },
                Column {
                    name: "database",
                    ty: Text,
                },
                Column {
                    name: "pool_size",
                    ty: Int8,
                },
                Column {
                    name: "servers_active",
                    ty: Int8,
                },
                Column {
                    name: "servers_idle",
                    ty: Int8,
                },
                Column {
                    name: "clients_active",
                    ty: Int8,
                },
                Column {
                    name: "clients_idle",
                    ty: Int8,
                },
                Column {
                    name: "clients_waiting",
                    ty: Int8,
                },
                Column {
                    name: "clients_parked",
                    ty: Int8,
                },
                Column {
                    name: "paused",
                    ty: Bool,
                },
            ],
            Show::Clients => &[
                Column {
                    name: "id",
                    ty: Text,
                },
                Column {
                    name: "tenant",
                    ty: Text,
                },
                Column {
                    name: "user",
                    ty: Text,
                },
                Column {
                    name: "peer",
                    ty: Text,
                },
                Column {
                    name: "pool_mode",
                    ty: Text,
                },
                Column {
                    name: "state",
                    ty: Text,
                },
                Column {
                    name: "in_transaction",
                    ty: Bool,
                },
                Column {
                    name: "server_pid",
                    ty: Int8,
                },
                Column {
                    name: "connected_s",
                    ty: Float8,
                },
                Column {
                    name: "idle_s",
                    ty: Float8,
                },
            ],
            Show::Servers => &[
                Column {
                    name: "tenant",
                    ty: Text,
                },
                Column {
                    name: "user",
                    ty: Text,
                },
                Column {
                    name: "address",
                    ty: Text,
                },
                Column {
                    name: "database",
                    ty: Text,
                },
                Column {
                    name: "state",
                    ty: Text,
                },
                Column {
                    name: "pid",
                    ty: Int8,
                },
                Column {
                    name: "client",
                    ty: Text,
                },
                Column {
                    name: "age_s",
                    ty: Float8,
                },
                Column {
                    name: "idle_s",
                    ty: Float8,
                },
            ],
            Show::Hosts => &[
                Column {
                    name: "host",
                    ty: Text,
                },
                Column {
                    name: "address",
                    ty: Text,
                },
                Column {
                    name: "max_connections",
                    ty: Int8,
                },
                Column {
                    name: "open",
                    ty: Int8,
                },
                Column {
                    name: "tenants_waiting",
                    ty: Int8,
                },
                Column {
                    name: "opens",
                    ty: Int8,
                },
            ],
            Show::Stats => &[
                Column {
                    name: "tenant",
                    ty: Text,
                },
                Column {
                    name: "transactions",
                    ty: Int8,
                },
                Column {
                    name: "queries",
                    ty: Int8,
                },
                Column {
                    name: "bytes_in",
                    ty: Int8,
                },
                Column {
                    name: "bytes_out",
                    ty: Int8,
                },
                Column {
                    name: "avg_xact_ms",
                    ty: Float8,
                },
                Column {
                    name: "p99_xact_ms",
                    ty: Float8,
                },
                Column {
                    name: "avg_wait_ms",
                    ty: Float8,
                },
                Column {
                    name: "p99_wait_ms",
                    ty: Float8,
                },
                Column {
                    name: "errors",
                    ty: Int8,
                },
            ],
            Show::Config => &[
                Column {
                    name: "key",
                    ty: Text,
                },
                Column {
                    name: "value",
                    ty: Text,
                },
            ],
            Show::Version => &[Column {
                name: "version",
                ty: Text,
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(
            Command::parse(" show pools ; "),
            Ok(Command::Show(Show::Pools))
        );
        assert_eq!(
            Command::parse("PAUSE acme"),
            Ok(Command::Pause(Some("acme".into())))
        );
        assert_eq!(Command::parse("pause"), Ok(Command::Pause(None)));
        assert_eq!(
            Command::parse("KILL \"acme\""),
            Ok(Command::Kill("acme".into()))
        );
        assert_eq!(Command::parse(";"), Ok(Command::Empty));
        let err = Command::parse("SELECT 1").unwrap_err();
        assert!(err.0.contains("SHOW TENANTS"), "{err}");
        assert!(Command::parse("KILL").is_err());
    }
}
