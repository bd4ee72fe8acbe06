//! Fuzz targets (proptest, stable Rust) for the SQL lexer and the SET/RESET reader:
//! SQL pieces that stress quoting, comments and the SET grammar, mutated. What must
//! hold: no panic; the lexer's tokens are non-empty, in order, never overlapping, and
//! an unterminated one is last; a SET the proxy follows replays to the same reading.

use proptest::prelude::*;

use super::lexer::{Kind, Lexer};
use super::{classify, SettingChange};
use crate::fuzz::{config, mutate, Mutation};

fn piece() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(vec![
        "SET ",
        "RESET ",
        "SESSION ",
        "LOCAL ",
        "ROLE ",
        "search_path ",
        "TIME ZONE ",
        "SCHEMA ",
        "ALL",
        "= ",
        "TO ",
        "DEFAULT",
        "'",
        "''",
        "E'",
        "U&'",
        "B'",
        "X'",
        "N'",
        "\\",
        "\\'",
        "$$",
        "$a$",
        "$1",
        "\"",
        "U&\"",
        "/*",
        "*/",
        "--",
        "\n",
        "\r",
        ";",
        "é",
        "set_config(",
        ",",
        "true",
        ")",
        "(",
        "DEALLOCATE ",
        "PREPARE ",
        "DISCARD ALL",
        "BEGIN",
        "COMMIT",
        "temp ",
        "x",
        ".",
        "::",
        "-",
        "1.5e3",
        "0x1F",
        "\u{0}",
        "\u{ff}",
        " ",
    ])
}

fn sql() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(piece(), 0..32),
        proptest::collection::vec(
            (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Flip(at, b)),
            0..3,
        ),
    )
        .prop_map(|(pieces, flips)| mutate(pieces.concat().into_bytes(), &flips))
}

/// Lexes `sql` and checks the tokens' layout.
fn check_tokens(sql: &[u8], standard_strings: bool) -> Result<(), TestCaseError> {
    let base = sql.as_ptr() as usize;
    let mut end = 0;
    let mut unterminated = false;
    let mut count = 0;
    for token in Lexer::new(sql, standard_strings) {
        prop_assert!(!unterminated, "a token after an unterminated one");
        prop_assert!(!token.text.is_empty(), "an empty token");
        let start = token.text.as_ptr() as usize - base;
        prop_assert!(start >= end, "tokens overlap or go back");
        end = start + token.text.len();
        prop_assert!(end <= sql.len());
        unterminated = token.kind == Kind::Unterminated;
        count += 1;
        prop_assert!(count <= sql.len(), "more tokens than bytes");
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn tokens_are_in_order_and_never_overlap(sql in sql()) {
        check_tokens(&sql, true)?;
        check_tokens(&sql, false)?;
    }

    #[test]
    fn random_bytes_lex_and_classify(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        check_tokens(&bytes, true)?;
        let _ = classify(&bytes, true);
        let _ = classify(&bytes, false);
    }

    #[test]
    fn a_followed_set_replays_to_the_same_reading(sql in sql(), standard in any::<bool>()) {
        let read = classify(&sql, standard);
        if read.pin.is_some() {
            // Pinned: the proxy follows nothing of it.
            prop_assert!(read.settings.is_empty());
        }
        for change in &read.settings {
            if let SettingChange::Set(_, statement) = change {
                prop_assert!(statement.starts_with("SET "), "{statement}");
                let again = classify(statement.as_bytes(), true);
                prop_assert_eq!(&again.settings, &vec![change.clone()]);
                prop_assert!(again.pin.is_none());
            }
        }
    }
}
