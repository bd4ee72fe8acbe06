//! PostgreSQL's SQL lexer, as the server reads text (scan.l): whitespace, `--` and
//! nested `/* */` comments, identifiers, `"quoted"` and `U&"…"` identifiers, `'…'`,
//! `E'…'`, `U&'…'`, `B'…'`, `X'…'`, `N'…'` strings, `$tag$…$tag$` dollar quotes,
//! numbers, parameters, operators and punctuation.
//!
//! Bytes in, tokens out: no allocation, no panic on any input. Text the lexer cannot
//! close (an unterminated string or comment) ends in an `Unterminated` token, which
//! every classifier treats as "cannot tell".

/// What a token is; its text is in `Token::text`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An unquoted identifier or keyword (compare with `Token::is`).
    Word,
    /// `"…"` or `U&"…"`, quotes included.
    QuotedIdent,
    /// A string constant of any kind, prefix and quotes included.
    String,
    Number,
    /// `$1`.
    Param,
    /// One operator character (`=`, `+`, `::`'s colons are `Punct`).
    Op,
    /// `(`, `)`, `[`, `]`, `,`, `;`, `:`, `.`.
    Punct,
    /// An unterminated quote, dollar quote or comment: the rest of the text.
    Unterminated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    pub kind: Kind,
    pub text: &'a [u8],
}

impl Token<'_> {
    /// Whether this is the unquoted keyword `keyword` (ASCII, any case).
    pub fn is(&self, keyword: &str) -> bool {
        self.kind == Kind::Word && self.text.eq_ignore_ascii_case(keyword.as_bytes())
    }

    pub fn is_punct(&self, c: u8) -> bool {
        self.kind == Kind::Punct && self.text == [c]
    }
}

/// The tokens of `sql`. `standard_strings`: the session's
/// `standard_conforming_strings`; when off, a backslash escapes in plain `'…'` too.
pub struct Lexer<'a> {
    sql: &'a [u8],
    at: usize,
    standard_strings: bool,
    /// A plain `'…'` string held a backslash: it reads differently when
    /// `standard_conforming_strings` is off.
    pub saw_backslash: bool,
}

impl<'a> Lexer<'a> {
    pub fn new(sql: &'a [u8], standard_strings: bool) -> Lexer<'a> {
        Lexer {
            sql,
            at: 0,
            standard_strings,
            saw_backslash: false,
        }
    }

    fn peek(&self, ahead: usize) -> Option<u8> {
        self.sql.get(self.at + ahead).copied()
    }

    fn token(&mut self, kind: Kind, start: usize) -> Token<'a> {
        Token {
            kind,
            text: &self.sql[start..self.at],
        }
    }

    fn unterminated(&mut self, start: usize) -> Token<'a> {
        self.at = self.sql.len();
        self.token(Kind::Unterminated, start)
    }

    /// Skips whitespace and comments; `false` if a comment never ends.
    fn skip_blank(&mut self) -> bool {
        loop {
            match (self.peek(0), self.peek(1)) {
                (Some(c), _) if is_space(c) => self.at += 1,
                (Some(b'-'), Some(b'-')) => {
                    while self.peek(0).is_some_and(|c| c != b'\n' && c != b'\r') {
                        self.at += 1;
                    }
                }
                (Some(b'/'), Some(b'*')) => {
                    let opened = self.at;
                    self.at += 2;
                    let mut depth = 1usize;
                    while depth > 0 {
                        match (self.peek(0), self.peek(1)) {
                            // The unterminated token is the comment, not nothing.
                            (None, _) => {
                                self.at = opened;
                                return false;
                            }
                            (Some(b'*'), Some(b'/')) => {
                                depth -= 1;
                                self.at += 2;
                            }
                            (Some(b'/'), Some(b'*')) => {
                                depth += 1;
                                self.at += 2;
                            }
                            _ => self.at += 1,
                        }
                    }
                }
                _ => return true,
            }
        }
    }

    /// A quoted run from `self.at` (at the opening quote) to its closing quote; a
    /// doubled quote stands for one. `backslash`: a backslash escapes the next byte.
    fn quoted(&mut self, quote: u8, backslash: bool) -> bool {
        self.at += 1;
        loop {
            match self.peek(0) {
                None => return false,
                Some(b'\\') if backslash => self.at += 2,
                Some(c) if c == quote => {
                    if self.peek(1) == Some(quote) {
                        self.at += 2;
                    } else {
                        self.at += 1;
                        return true;
                    }
                }
                Some(c) => {
                    if c == b'\\' && quote == b'\'' {
                        self.saw_backslash = true;
                    }
                    self.at += 1;
                }
            }
        }
    }

    fn string(&mut self, start: usize, backslash: bool) -> Token<'a> {
        if self.quoted(b'\'', backslash) {
            self.token(Kind::String, start)
        } else {
            self.unterminated(start)
        }
    }

    /// `$tag$…$tag$` starting at `self.at`, or `None` if this `$` opens no dollar quote.
    fn dollar_quote(&mut self, start: usize) -> Option<Token<'a>> {
        let mut end = self.at + 1;
        if self.sql.get(end).is_some_and(|&c| is_ident_start(c)) {
            while self
                .sql
                .get(end)
                .is_some_and(|&c| is_ident_start(c) || c.is_ascii_digit())
            {
                end += 1;
            }
        }
        if self.sql.get(end) != Some(&b'$') {
            return None;
        }
        let tag = &self.sql[self.at..=end];
        let body = end + 1;
        match find(&self.sql[body..], tag) {
            Some(at) => {
                self.at = body + at + tag.len();
                Some(self.token(Kind::String, start))
            }
            None => Some(self.unterminated(start)),
        }
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        if !self.skip_blank() {
            return Some(self.unterminated(self.at));
        }
        let start = self.at;
        let c = self.peek(0)?;
        let next = self.peek(1);
        let quote_after = |n: usize| self.peek(n) == Some(b'\'');
        match c {
            b'\'' => Some(self.string(start, !self.standard_strings)),
            b'e' | b'E' if quote_after(1) => {
                self.at += 1;
                Some(self.string(start, true))
            }
            b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if quote_after(1) => {
                self.at += 1;
                Some(self.string(start, !self.standard_strings))
            }
            b'u' | b'U' if next == Some(b'&') && matches!(self.peek(2), Some(b'\'' | b'"')) => {
                self.at += 2;
                let quote = self.peek(0).unwrap_or(b'\'');
                let kind = if quote == b'"' {
                    Kind::QuotedIdent
                } else {
                    Kind::String
                };
                if self.quoted(quote, false) {
                    Some(self.token(kind, start))
                } else {
                    Some(self.unterminated(start))
                }
            }
            b'"' => {
                if self.quoted(b'"', false) {
                    Some(self.token(Kind::QuotedIdent, start))
                } else {
                    Some(self.unterminated(start))
                }
            }
            b'$' => {
                if next.is_some_and(|d| d.is_ascii_digit()) {
                    self.at += 1;
                    while self.peek(0).is_some_and(|d| d.is_ascii_digit()) {
                        self.at += 1;
                    }
                    return Some(self.token(Kind::Param, start));
                }
                if let Some(token) = self.dollar_quote(start) {
                    return Some(token);
                }
                self.at += 1;
                Some(self.token(Kind::Op, start))
            }
            c if is_ident_start(c) => {
                while self.peek(0).is_some_and(is_ident_cont) {
                    self.at += 1;
                }
                Some(self.token(Kind::Word, start))
            }
            c if c.is_ascii_digit() || (c == b'.' && next.is_some_and(|d| d.is_ascii_digit())) => {
                self.at += 1;
                while let Some(d) = self.peek(0) {
                    let exponent_sign = matches!(d, b'+' | b'-')
                        && matches!(self.sql[self.at - 1], b'e' | b'E')
                        && !self.sql[start..self.at].starts_with(b"0x");
                    if d.is_ascii_alphanumeric() || d == b'_' || d == b'.' || exponent_sign {
                        self.at += 1;
                    } else {
                        break;
                    }
                }
                Some(self.token(Kind::Number, start))
            }
            b'(' | b')' | b'[' | b']' | b',' | b';' | b':' | b'.' => {
                self.at += 1;
                Some(self.token(Kind::Punct, start))
            }
            _ => {
                self.at += 1;
                Some(self.token(Kind::Op, start))
            }
        }
    }
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<(Kind, String)> {
        Lexer::new(sql.as_bytes(), true)
            .map(|t| (t.kind, String::from_utf8_lossy(t.text).into_owned()))
            .collect()
    }

    #[test]
    fn an_unterminated_comment_is_the_unterminated_token() {
        // Found by the fuzz target: it was an empty token after the comment.
        assert_eq!(kinds("/*"), [(Kind::Unterminated, "/*".to_string())]);
        assert_eq!(
            kinds("SET a = 1 /* x /* y */"),
            [
                (Kind::Word, "SET".to_string()),
                (Kind::Word, "a".to_string()),
                (Kind::Op, "=".to_string()),
                (Kind::Number, "1".to_string()),
                (Kind::Unterminated, "/* x /* y */".to_string()),
            ]
        );
    }

    fn words(sql: &str) -> Vec<String> {
        kinds(sql)
            .into_iter()
            .filter(|(k, _)| *k == Kind::Word)
            .map(|(_, t)| t)
            .collect()
    }

    #[test]
    fn comments_nest_and_hide_their_contents() {
        assert_eq!(
            words("select /* a /* b */ listen */ 1 -- set\n from t"),
            ["select", "from", "t"]
        );
        assert_eq!(
            kinds("select /* open /* */").last().unwrap().0,
            Kind::Unterminated
        );
    }

    #[test]
    fn strings_of_every_kind() {
        for (sql, text) in [
            ("'it''s'", "'it''s'"),
            ("E'a\\'b'", "E'a\\'b'"),
            ("U&'d\\0061t'", "U&'d\\0061t'"),
            ("X'1F'", "X'1F'"),
            ("$$ a ' b $$", "$$ a ' b $$"),
            ("$fn$ $$ inner $$ $fn$", "$fn$ $$ inner $$ $fn$"),
        ] {
            assert_eq!(kinds(sql), vec![(Kind::String, text.to_string())], "{sql}");
        }
        assert_eq!(kinds("\"a\"\"b\"")[0].0, Kind::QuotedIdent);
        assert_eq!(kinds("U&\"a\"")[0].0, Kind::QuotedIdent);
    }

    #[test]
    fn dollar_signs_that_are_not_quotes() {
        assert_eq!(
            kinds("a$b$ $1"),
            vec![(Kind::Word, "a$b$".into()), (Kind::Param, "$1".into())]
        );
    }

    #[test]
    fn backslashes_in_plain_strings_depend_on_the_session() {
        let sql = br"select '\'', set_config('a', 'b', false) --'";
        let standard: Vec<_> = Lexer::new(sql, true).map(|t| t.kind).collect();
        assert!(!standard.contains(&Kind::Word) || standard.len() > 3);
        let mut lexer = Lexer::new(sql, true);
        lexer.by_ref().for_each(drop);
        assert!(lexer.saw_backslash);
        let old: Vec<_> = Lexer::new(sql, false)
            .filter(|t| t.kind == Kind::Word)
            .map(|t| t.text.to_vec())
            .collect();
        assert!(old.contains(&b"set_config".to_vec()));
    }

    #[test]
    fn never_panics_on_odd_input() {
        for sql in [
            &b"'"[..],
            b"E'\\",
            b"$",
            b"$a",
            b"$a$",
            b"U&",
            b"/*",
            b"--",
            b"\xff\xfe\"",
            b"1e+",
            b"0x",
            b".",
        ] {
            let _ = Lexer::new(sql, true).count();
            let _ = Lexer::new(sql, false).count();
        }
    }
}
