//! Fuzz targets (proptest, stable Rust) for the startup-packet parser, the frame
//! splitter and the readers of the server messages the proxy looks into: captured client and server streams, mutated or random, fed whole and
//! in arbitrary pieces. What must hold: no panic; nothing consumed until a whole
//! packet is there; a length is refused before anything is reserved for it; and the
//! result does not depend on how the bytes were cut.

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;

use super::frame::{frame_len, missing_bytes, split_frame, FrameError, HEADER_LEN};
use super::messages;
use super::startup::{parse_startup, StartupError, StartupPacket, MAX_STARTUP_LEN};
use crate::fuzz::{chunks, config, corpus, mutated};

const MAX: usize = 64 << 10;

/// What a parser made of a stream, in a form that can be compared.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Startup(StartupPacket),
    StartupError(StartupError),
    Frame(Vec<u8>),
    FrameError(FrameError),
}

/// Reads a client stream as the proxy does: startup packets until the StartupMessage,
/// then tagged frames. Bytes arrive in `pieces`; checks each call's contract on the way.
fn read_client(pieces: &[Vec<u8>]) -> Vec<Step> {
    let mut buf = BytesMut::new();
    let mut steps = Vec::new();
    let mut started = false;
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            if !started {
                match parse_startup(&mut buf) {
                    Ok(None) => {
                        assert_eq!(buf.len(), before, "consumed without a whole packet");
                        break;
                    }
                    Ok(Some(packet)) => {
                        let consumed = before - buf.len();
                        assert!((8..=MAX_STARTUP_LEN).contains(&consumed), "{consumed}");
                        started = matches!(packet, StartupPacket::Startup(_));
                        steps.push(Step::Startup(packet));
                    }
                    Err(e) => {
                        steps.push(Step::StartupError(e));
                        return steps;
                    }
                }
            } else {
                let missing = missing_bytes(&buf, MAX);
                match split_frame(&mut buf, MAX) {
                    Ok(None) => {
                        assert_eq!(buf.len(), before, "consumed without a whole frame");
                        if before >= HEADER_LEN {
                            assert!(missing > 0, "a whole frame was not split");
                        }
                        break;
                    }
                    Ok(Some(frame)) => {
                        assert_eq!(missing, 0);
                        let bytes = frame.as_bytes();
                        let declared = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
                        assert_eq!(declared as usize + 1, bytes.len());
                        assert!(
                            bytes.len() <= MAX && frame.body().len() + HEADER_LEN == bytes.len()
                        );
                        assert_eq!(before - buf.len(), bytes.len());
                        steps.push(Step::Frame(bytes.to_vec()));
                    }
                    Err(e) => {
                        steps.push(Step::FrameError(e));
                        return steps;
                    }
                }
            }
        }
    }
    steps
}

/// Reads a server stream: tagged frames only.
fn read_server(pieces: &[Vec<u8>]) -> Vec<Step> {
    let mut buf = BytesMut::new();
    let mut steps = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match split_frame(&mut buf, MAX) {
                Ok(None) => {
                    assert_eq!(buf.len(), before);
                    break;
                }
                Ok(Some(frame)) => {
                    // The few server messages the proxy looks into, read from any body.
                    let _ = messages::parse_error_fields(frame.body());
                    let _ = messages::error_code(frame.body());
                    let _ = messages::parse_parameter_status(frame.body());
                    steps.push(Step::Frame(frame.into_bytes().to_vec()))
                }
                Err(e) => {
                    steps.push(Step::FrameError(e));
                    return steps;
                }
            }
        }
    }
    steps
}

#[test]
fn the_corpus_reads_whole_without_error() {
    for stream in corpus("-client.bin") {
        let steps = read_client(std::slice::from_ref(&stream));
        assert!(steps
            .iter()
            .any(|s| matches!(s, Step::Startup(StartupPacket::Startup(_)))));
        let framed: usize = steps
            .iter()
            .map(|s| match s {
                Step::Frame(f) => f.len(),
                Step::Startup(_) => 0,
                other => panic!("{other:?}"),
            })
            .sum();
        assert!(framed > 0 && framed < stream.len());
    }
    for stream in corpus("-server.bin") {
        let steps = read_server(std::slice::from_ref(&stream));
        let framed: usize = steps
            .iter()
            .map(|s| match s {
                Step::Frame(f) => f.len(),
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(framed, stream.len());
    }
}

#[test]
fn a_length_is_refused_before_its_bytes_arrive() {
    // Regression seeds: lengths a hostile client sends, with nothing behind them.
    for (len, want) in [
        (0u32, Err(StartupError::TooShort(0))),
        (3, Err(StartupError::TooShort(3))),
        (7, Err(StartupError::TooShort(7))),
        (
            i32::MAX as u32,
            Err(StartupError::TooLong(i32::MAX as usize)),
        ),
        (u32::MAX, Err(StartupError::TooLong(u32::MAX as usize))),
    ] {
        let mut buf = BytesMut::new();
        buf.put_u32(len);
        assert_eq!(parse_startup(&mut buf), want, "startup length {len}");
    }
    for len in [0u32, 3] {
        let mut buf = BytesMut::from(&b"Q"[..]);
        buf.put_u32(len);
        assert_eq!(split_frame(&mut buf, MAX), Err(FrameError::TooShort(len)));
    }
    let mut buf = BytesMut::from(&b"Q"[..]);
    buf.put_u32(1 << 30);
    assert!(matches!(
        split_frame(&mut buf, MAX),
        Err(FrameError::TooLong { .. })
    ));
}

fn params() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec(("[a-z_.]{1,12}", "[^\u{0}]{0,24}"), 0..12)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn client_streams_read_the_same_however_they_are_cut(
        stream in mutated("-client.bin"),
        cuts in proptest::collection::vec(any::<usize>(), 0..24),
    ) {
        let whole = read_client(std::slice::from_ref(&stream));
        let pieces = read_client(&chunks(&stream, &cuts));
        prop_assert_eq!(whole, pieces);
    }

    #[test]
    fn server_streams_read_the_same_however_they_are_cut(
        stream in mutated("-server.bin"),
        cuts in proptest::collection::vec(any::<usize>(), 0..24),
    ) {
        let whole = read_server(std::slice::from_ref(&stream));
        let pieces = read_server(&chunks(&stream, &cuts));
        prop_assert_eq!(whole, pieces);
    }

    #[test]
    fn any_header_is_judged_on_its_length_alone(header in proptest::collection::vec(any::<u8>(), 5..9), max in 5usize..1_000_000) {
        let declared = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        match frame_len(&header, max) {
            Ok(Some(n)) => prop_assert!(declared >= 4 && n == declared as usize + 1 && n <= max),
            Ok(None) => prop_assert!(false, "a whole header gave no length"),
            Err(FrameError::TooShort(n)) => prop_assert!(n == declared && n < 4),
            Err(FrameError::TooLong { len, .. }) => prop_assert!(len > max),
            Err(e @ FrameError::UnknownType(_)) => prop_assert!(false, "{e}"),
        }
    }

    #[test]
    fn startup_messages_read_back_as_written(minor in 0u16..4, params in params()) {
        let mut body = Vec::new();
        for (k, v) in &params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32 + 8);
        buf.put_u32((3 << 16) | minor as u32);
        buf.put_slice(&body);
        let parsed = parse_startup(&mut buf);
        if body.len() + 8 > MAX_STARTUP_LEN {
            prop_assert!(matches!(parsed, Err(StartupError::TooLong(_))));
        } else {
            let Ok(Some(StartupPacket::Startup(msg))) = parsed else {
                return Err(TestCaseError::fail(format!("{parsed:?}")));
            };
            let plain: Vec<_> = params.iter().filter(|(k, _)| !k.starts_with("_pq_.")).cloned().collect();
            prop_assert_eq!(msg.minor, minor);
            prop_assert_eq!(msg.params, plain);
            prop_assert!(buf.is_empty());
        }
    }
}
