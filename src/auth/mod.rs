//! Client-facing authentication, without I/O: SCRAM-SHA-256 server side, md5, and
//! verifiers in PostgreSQL's own format.

pub mod md5;
pub mod scram;
pub mod verifier;

pub use scram::{KeyedScramClient, ScramError, ScramKeys, ScramServer};
pub use verifier::{ScramVerifier, Verifier, VerifierError};
