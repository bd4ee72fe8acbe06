//! What the property-based fuzz targets share (tests only): how many cases to run,
//! the seed corpus of captured traffic, and byte-level mutations of it.
//!
//! `PGTENANT_FUZZ_CASES` sets the number of cases per target (default 2,000, which
//! keeps every target together well under a minute in a debug build). The corpus in
//! `tests/fuzz-corpus/` holds real client and server byte streams recorded between
//! psql/pgbench and PostgreSQL 15.

use proptest::prelude::*;
use proptest::test_runner::Config;

/// Proptest settings for a fuzz target: the case count from `PGTENANT_FUZZ_CASES`.
pub fn config() -> Config {
    let cases = std::env::var("PGTENANT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    Config {
        cases,
        // Failures are reported as a regression test instead of a file in the tree.
        failure_persistence: None,
        ..Config::default()
    }
}

/// The recorded streams whose names end with `suffix` (`-client.bin`, `-server.bin`).
pub fn corpus(suffix: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no {suffix} files in {}", dir.display());
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// One change to a byte string.
#[derive(Debug, Clone)]
pub enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    /// Overwrites four bytes with a big-endian length: the fields parsers trust most.
    Length(usize, u32),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let length = prop_oneof![
        Just(0u32),
        Just(3),
        Just(4),
        Just(7),
        Just(8),
        Just(10_000),
        Just(10_001),
        Just(i32::MAX as u32),
        Just(u32::MAX),
        any::<u32>(),
    ];
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Flip(at, b)),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(at, b)| Mutation::Insert(at, b)),
        (any::<usize>(), 1usize..64).prop_map(|(at, n)| Mutation::Remove(at, n)),
        (any::<usize>(), length).prop_map(|(at, n)| Mutation::Length(at, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

/// Applies `mutations` to `bytes` (positions taken modulo its length).
pub fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len().max(1);
        match m {
            Mutation::Flip(at, b) => {
                if let Some(x) = bytes.get_mut(at % len) {
                    *x ^= b;
                }
            }
            Mutation::Insert(at, b) => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::Remove(at, n) => {
                let at = at % len;
                let end = (at + n).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            Mutation::Length(at, n) => {
                let at = at % len;
                for (i, b) in n.to_be_bytes().into_iter().enumerate() {
                    if let Some(x) = bytes.get_mut(at + i) {
                        *x = b;
                    }
                }
            }
            Mutation::Truncate(at) => bytes.truncate(at % len),
        }
    }
    bytes
}

/// A corpus stream (ending in `suffix`) with up to eight mutations, or random bytes.
pub fn mutated(suffix: &str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus(suffix);
    let n = seeds.len();
    prop_oneof![
        4 => (0..n, proptest::collection::vec(mutation(), 0..8))
            .prop_map(move |(i, m)| mutate(seeds[i].clone(), &m)),
        1 => proptest::collection::vec(any::<u8>(), 0..512),
    ]
}

/// Cuts `bytes` into pieces at `cuts` (positions modulo its length), as a socket might
/// deliver them.
pub fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for cut in at.into_iter().chain([bytes.len()]) {
        out.push(bytes[start..cut].to_vec());
        start = cut;
    }
    out
}
