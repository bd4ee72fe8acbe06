//! Classification as PostgreSQL would read each statement, and arbitrary input never
//! panicking.

use proptest::prelude::*;

use super::classify::{classify_lexed, may_matter};
use super::*;

fn of(sql: &str) -> Classified {
    classify(sql.as_bytes(), true)
}

fn pin(sql: &str) -> Option<Pin> {
    of(sql).pin
}

fn set(name: &str, statement: &str) -> Option<SettingChange> {
    Some(SettingChange::Set(name.into(), statement.into()))
}

#[test]
fn session_features_pin() {
    for (sql, expected) in [
        ("LISTEN jobs", Pin::Listen),
        ("select 1; listen jobs", Pin::Listen),
        ("PREPARE q AS select 1", Pin::Prepare),
        ("DECLARE c CURSOR WITH HOLD FOR select 1", Pin::HoldCursor),
        ("create temporary table t (x int)", Pin::TempObject),
        ("CREATE GLOBAL TEMP TABLE t (x int)", Pin::TempObject),
        ("create or replace temp view v as select 1", Pin::TempObject),
        ("select 1 into temp t", Pin::TempObject),
        ("create table pg_temp.t (x int)", Pin::TempObject),
        ("select pg_advisory_lock(1)", Pin::AdvisoryLock),
        ("select \"pg_try_advisory_lock\"(1)", Pin::AdvisoryLock),
        ("select set_config('a.b', 'c', false)", Pin::SetConfig),
        (
            "select pg_catalog.set_config('a.b', 'c', is_local)",
            Pin::SetConfig,
        ),
        ("select set_config('a.b', 'c')", Pin::SetConfig),
        ("DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$", Pin::Do),
        ("LOAD 'auto_explain'", Pin::Load),
        ("set work_mem = 'unterminated", Pin::Unreadable),
        ("select set_config /* open", Pin::Unreadable),
        (
            "select U&\"\\0073et_config\"('a', 'b', false)",
            Pin::Unreadable,
        ),
    ] {
        assert_eq!(pin(sql), Some(expected), "{sql}");
    }
}

#[test]
fn text_with_no_word_that_matters_is_plain_unread() {
    // Whatever its quotes mean, none of its tokens can be a keyword that matters.
    assert!(of("select 'unterminated").is_plain());
    assert!(of("select 1 /* open").is_plain());
}

#[test]
fn ordinary_statements_do_not_pin() {
    for sql in [
        "PREPARE TRANSACTION 'x'",
        "DECLARE c CURSOR FOR select 1",
        "select temp from weather",
        "insert into temp values (1)",
        "select pg_advisory_xact_lock(1)",
        "select set_config('a.b', 'c', true)",
        "select set_config('a.b', (select 'x'), true)",
        "select 'listen'; -- listen\n select 1",
        "/* prepare */ select \"listen\"",
        "insert into t values ('create temp table')",
        "select $$ set_config('a','b',false) $$",
        "BEGIN; SET LOCAL work_mem = '8MB'; select 1; COMMIT",
        "select 'set x = 1'; select 2",
        "DISCARD PLANS",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET CONSTRAINTS ALL DEFERRED",
        "SET TIME ZONE 'UTC'",
        "SET application_name = 'x'",
        "SET LOCAL ROLE reader",
    ] {
        assert_eq!(pin(sql), None, "{sql}");
    }
}

#[test]
fn role_changes_pin_in_any_spelling() {
    for sql in [
        "SET ROLE r",
        "SET SESSION ROLE r",
        "set role r",
        "SET \"role\" = 'r'",
        "SET Role TO r",
        "SET SESSION AUTHORIZATION bob",
        "SET SESSION SESSION AUTHORIZATION bob",
        "set session_authorization = 'bob'",
        "SET \"session_authorization\" TO bob",
        "RESET ROLE",
        "RESET SESSION AUTHORIZATION",
        "RESET \"role\"",
    ] {
        assert_eq!(pin(sql), Some(Pin::Role), "{sql}");
    }
}

#[test]
fn settings_are_replayed_as_written_without_comments() {
    assert_eq!(
        of("SET statement_timeout = 5000 -- five seconds")
            .settings
            .first()
            .cloned(),
        set("statement_timeout", "SET statement_timeout = 5000")
    );
    assert_eq!(
        of("SET statement_timeout = E'7s'")
            .settings
            .first()
            .cloned(),
        set("statement_timeout", "SET statement_timeout = E'7s'")
    );
    assert_eq!(
        of("set SESSION Statement_Timeout TO /* c */ $$9s$$;")
            .settings
            .first()
            .cloned(),
        set("statement_timeout", "SET Statement_Timeout TO $$9s$$")
    );
    assert_eq!(
        of("SET search_path TO 'tenant_globex', 'public'")
            .settings
            .first()
            .cloned(),
        set(
            "search_path",
            "SET search_path TO 'tenant_globex' , 'public'"
        )
    );
    assert_eq!(
        of("SET \"MyApp\".flag = -1").settings.first().cloned(),
        set("myapp.flag", "SET \"MyApp\" . flag = - 1")
    );
    assert_eq!(
        of("SET SCHEMA 'tenant_acme'").settings.first().cloned(),
        set("search_path", "SET SCHEMA 'tenant_acme'")
    );
    assert_eq!(
        of("SET work_mem TO DEFAULT").settings.first().cloned(),
        Some(SettingChange::Reset("work_mem".into()))
    );
    assert_eq!(
        of("RESET work_mem").settings.first().cloned(),
        Some(SettingChange::Reset("work_mem".into()))
    );
    assert_eq!(of("RESET ALL").settings, vec![SettingChange::ResetAll]);
    assert_eq!(of("discard all").settings, vec![SettingChange::ResetAll]);
}

#[test]
fn settings_the_proxy_cannot_read_pin() {
    for sql in [
        "SET x éé",
        "SET statement_timeout = 'é' 'x'",
        "SET work_mem FROM CURRENT",
        "SET a = $1",
        "SET a = (1)",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET CATALOG 'x'",
        "SET a = U&'x' UESCAPE '!'",
        "RESET a b",
        "SET",
    ] {
        assert!(pin(sql).is_some(), "{sql}");
    }
    assert_eq!(
        pin("BEGIN; SET a = 1; COMMIT"),
        Some(Pin::SettingInBatch),
        "a SET that may hold without the rest of its query"
    );
    // One implicit transaction: all of it holds, or none.
    assert_eq!(pin("SET a = 1; select 1"), None);
    assert_eq!(
        of("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;").settings,
        vec![SettingChange::ResetAll],
        "asyncpg's reset"
    );
}

#[test]
fn statement_effects_follow_statement_order() {
    assert_eq!(
        of("DEALLOCATE ALL").effects,
        Some(vec![Effect::DeallocateAll])
    );
    assert_eq!(
        of("deallocate prepare \"S1\"").effects,
        Some(vec![Effect::Deallocate(b"S1".to_vec())])
    );
    assert_eq!(
        of("select 1; DEALLOCATE a1").effects,
        Some(vec![Effect::None, Effect::Deallocate(b"a1".to_vec())])
    );
    assert_eq!(of("DISCARD ALL").effects, Some(vec![Effect::DiscardAll]));
    assert_eq!(of("DISCARD PLANS").effects, None);
    assert!(of("select 1").is_plain());
    assert!(of("SELECT abalance FROM pgbench_accounts WHERE aid = $1").is_plain());
}

#[test]
fn backslashes_read_both_ways_or_pin() {
    // With standard_conforming_strings off the call is outside any string.
    assert!(pin(r"select '\'', set_config('a', 'b', false) --'").is_some());
    assert_eq!(pin(r"select 'a\b'"), None);
}

/// The full reading finds nothing to follow and nothing to pin for, unless text it
/// cannot close (which the server refuses whole, so nothing of it runs).
fn plain_but_unterminated(sql: &[u8], standard: bool) -> bool {
    let read = classify_lexed(sql, standard);
    let pin_ok = matches!(read.pin, None | Some(Pin::Unreadable));
    pin_ok
        && read.settings.is_empty()
        && read.effects.is_none()
        && read.path_reset.is_none()
        && !read.path_reset_before_more
}

#[test]
fn the_prefilter_reads_words_not_substrings() {
    for sql in [
        // pgbench's TPC-B statements: an UPDATE's SET clause starts no statement.
        "UPDATE pgbench_accounts SET abalance = abalance + 3 WHERE aid = 7;",
        "update pgbench_tellers set tbalance = tbalance + 1 where tid = 2",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP);",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "BEGIN;",
        "END;",
        "select * from t order by random() offset 10 limit 5",
        "select threshold, template, payload, pg_stat_reset() from t",
        "select setof, settings, setval('s', 1) from t",
    ] {
        assert!(!may_matter(sql.as_bytes()), "{sql}");
        assert!(classify_lexed(sql.as_bytes(), true).is_plain(), "{sql}");
    }
    for sql in [
        "SET work_mem = '1MB'",
        "  \n\tset work_mem = '1MB'",
        "update t set a = 1; set work_mem = '1MB'",
        "update t set a = 1;set work_mem = '1MB'",
        "/* x */ SET work_mem = '1MB'",
        "-- x\nSET work_mem = '1MB'",
        "reset all",
        "select set_config('a.b', 'c', false)",
        "select pg_catalog.set_config('a.b', 'c', false)",
        "select pg_advisory_lock(1)",
        "create temp table t (x int)",
        "create table pg_temp_3.t (x int)",
        "select U&\"\\0073et_config\"('a', 'b', false)",
        "DO $$ BEGIN END $$",
        "discard all",
    ] {
        assert!(may_matter(sql.as_bytes()), "{sql}");
    }
}

proptest! {
    /// The prefilter never passes a query the full reading would not find plain.
    #[test]
    fn what_the_prefilter_passes_is_plain(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("SET "), Just("set"), Just("RESET "), Just("UPDATE t "), Just("x"),
                Just("= "), Just("TO "), Just("'"), Just("E'"), Just("\\"), Just("$$"),
                Just("$a$"), Just("\""), Just("U&"), Just("u"), Just("&"), Just("/*"), Just("*/"),
                Just("--"), Just("\n"), Just("\t"), Just("\x0b"), Just(";"), Just("é"),
                Just("set_config("), Just(","), Just("true"), Just(")"), Just("("),
                Just("DEALLOCATE "), Just("DISCARD ALL"), Just("temp "), Just("create "),
                Just("."), Just("-"), Just("1"), Just("$1"), Just("pg_temp"), Just("_"),
                Just("pg_advisory_lock"), Just("do "), Just("listen "), Just("with hold "),
                Just("declare "), Just("into "), Just("select "), Just(" "), Just("local "),
                Just("search_path "), Just("default"), Just("role "), Just("prepare "),
            ],
            0..24,
        )
    ) {
        let sql = parts.concat();
        for standard in [true, false] {
            if !may_matter(sql.as_bytes()) {
                prop_assert!(plain_but_unterminated(sql.as_bytes(), standard), "{:?}", sql);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = classify(&bytes, true);
        let _ = classify(&bytes, false);
        if !may_matter(&bytes) {
            prop_assert!(plain_but_unterminated(&bytes, true));
            prop_assert!(plain_but_unterminated(&bytes, false));
        }
    }

    #[test]
    fn sql_like_text_never_panics(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("SET "), Just("RESET "), Just("SESSION "), Just("ROLE "), Just("x"),
                Just("= "), Just("TO "), Just("'"), Just("E'"), Just("\\"), Just("$$"),
                Just("$a$"), Just("\""), Just("U&"), Just("/*"), Just("*/"), Just("--"),
                Just("\n"), Just(";"), Just("é"), Just("set_config("), Just(","),
                Just("true"), Just(")"), Just("DEALLOCATE "), Just("DISCARD ALL"),
                Just("temp "), Just("create "), Just("."), Just("-"), Just("1"),
            ],
            0..24,
        )
    ) {
        let sql = parts.concat();
        let read = classify(sql.as_bytes(), true);
        // A SET is followed only when it is the whole query and fully read.
        for change in &read.settings {
            prop_assert!(read.pin.is_none());
            if let SettingChange::Set(_, statement) = change {
                prop_assert!(statement.starts_with("SET "));
                // Replaying it reads the same again.
                prop_assert_eq!(&classify(statement.as_bytes(), true).settings, &vec![change.clone()]);
            }
        }
    }

    #[test]
    fn comments_never_change_a_reading(comment in "[a-z ;']{0,20}") {
        let plain = of("SET statement_timeout = '5s'");
        let commented = classify(
            format!("SET /* {} */ statement_timeout = '5s' -- {}", comment.replace("*/", ""), comment).as_bytes(),
            true,
        );
        prop_assert_eq!(plain, commented);
    }
}

#[test]
fn statements_that_put_search_path_back_to_the_default() {
    use super::PathReset::{Local, Session};
    for sql in [
        "RESET search_path",
        "reset \"search_path\"",
        "SET search_path TO DEFAULT",
        "set session search_path = default",
        "SET SCHEMA DEFAULT",
        "RESET ALL",
        "DISCARD ALL",
        "SELECT 1; RESET ALL",
    ] {
        let read = of(sql);
        assert_eq!(read.path_reset, Some(Session), "{sql}");
        assert!(!read.path_reset_before_more, "{sql}");
        assert!(!read.is_plain(), "{sql}");
    }
    for sql in [
        "SET LOCAL search_path TO DEFAULT",
        "set local schema default",
    ] {
        assert_eq!(of(sql).path_reset, Some(Local), "{sql}");
        assert!(!of(sql).is_plain(), "{sql}");
    }
    for sql in [
        "SET search_path TO a",
        "SET LOCAL search_path TO a",
        "RESET work_mem",
        "DISCARD PLANS",
        "SELECT 'reset all'",
    ] {
        assert_eq!(of(sql).path_reset, None, "{sql}");
    }
    for sql in ["RESET ALL; SELECT 1", "DISCARD ALL; SELECT 1; SELECT 2"] {
        assert!(of(sql).path_reset_before_more, "{sql}");
    }
}
