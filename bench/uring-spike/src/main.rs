//! A spike: the relay's socket I/O on io_uring beside the same relay on epoll
//! (tokio, as pgtenant's relay: read what is there, write it at once, one read per
//! readiness), to count system calls and CPU per transaction. One client connection
//! to one server connection, bytes passed both ways unchanged: no pooling, no
//! protocol, so what differs between the two modes is the I/O path alone.
//!
//!   cargo bench --bench uring_relay -- epoll|uring LISTEN_PORT UPSTREAM_ADDR

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

const BUF: usize = 16 * 1024;

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.is_empty() || args[0] == "--list" {
        return Ok(());
    }
    let (mode, port, upstream) = (&args[0], &args[1], args[2].clone());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}"))?;
    match mode.as_str() {
        "epoll" => epoll(listener, upstream),
        "uring" => uring(listener, upstream),
        _ => panic!("mode: epoll or uring"),
    }
}

// ---------------------------------------------------------------- epoll (tokio)

fn epoll(listener: TcpListener, upstream: String) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            tokio::spawn(async move {
                let _ = pipe(client, server).await;
            });
        }
    })
}

/// Reads once per readiness (a short read means the socket is drained, as
/// pgtenant's `read_some` assumes) and writes what came at once.
async fn pipe(a: tokio::net::TcpStream, b: tokio::net::TcpStream) -> io::Result<()> {
    use tokio::io::Interest;
    let mut buf = vec![0u8; BUF];
    loop {
        let (from, to) = tokio::select! {
            r = a.readable() => { r?; (&a, &b) }
            r = b.readable() => { r?; (&b, &a) }
        };
        let mut got = 0;
        let r = from.try_io(Interest::READABLE, || {
            let n = (&*std_ref(from)).read(&mut buf)?;
            got = n;
            if n > 0 && n < BUF {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        if got == 0 {
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                _ => return Ok(()),
            }
        }
        let mut off = 0;
        while off < got {
            to.writable().await?;
            match to.try_write(&buf[off..got]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// The std stream under a tokio one, for a plain `read` inside `try_io`.
fn std_ref(s: &tokio::net::TcpStream) -> std::mem::ManuallyDrop<TcpStream> {
    use std::os::fd::FromRawFd;
    // SAFETY: the fd stays owned by `s`; ManuallyDrop never closes it.
    std::mem::ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(s.as_raw_fd()) })
}

// ---------------------------------------------------------------- io_uring

const ACCEPT: u64 = 0;
const RECV: u64 = 1;
const SEND: u64 = 2;

struct Side {
    fd: RawFd,
    peer: RawFd,
    buf: Box<[u8]>,
    /// Bytes received and not yet sent to the peer, and how many of them went.
    len: usize,
    sent: usize,
}

fn uring(listener: TcpListener, upstream: String) -> io::Result<()> {
    use io_uring::{opcode, types, IoUring};
    let mut ring = IoUring::new(1024)?;
    let lfd = listener.as_raw_fd();
    let mut sides: HashMap<RawFd, Side> = HashMap::new();
    let mut streams: HashMap<RawFd, TcpStream> = HashMap::new();
    let ud = |fd: RawFd, op: u64| ((fd as u64) << 8) | op;
    let mut pending: Vec<io_uring::squeue::Entry> = Vec::new();
    pending.push(
        opcode::Accept::new(types::Fd(lfd), std::ptr::null_mut(), std::ptr::null_mut())
            .build()
            .user_data(ud(lfd, ACCEPT)),
    );
    let recv = |side: &mut Side| {
        opcode::Recv::new(types::Fd(side.fd), side.buf.as_mut_ptr(), BUF as u32)
            .build()
            .user_data(ud(side.fd, RECV))
    };
    let send = |side: &Side| {
        opcode::Send::new(
            types::Fd(side.peer),
            side.buf[side.sent..].as_ptr(),
            (side.len - side.sent) as u32,
        )
        .build()
        .user_data(ud(side.fd, SEND))
    };
    let mut done: Vec<(u64, i32)> = Vec::new();
    let mut graveyard: Vec<Side> = Vec::new();
    let mut graveyard_streams: Vec<TcpStream> = Vec::new();
    loop {
        {
            let mut sq = ring.submission();
            for entry in pending.drain(..) {
                // SAFETY: every buffer an entry points into is a boxed slice held in
                // `sides` until its connection's completions are all in.
                unsafe { sq.push(&entry).expect("submission queue full") };
            }
        }
        // One system call submits everything queued and waits for at least one.
        ring.submit_and_wait(1)?;
        done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for (data, result) in done.drain(..) {
            let (fd, op) = ((data >> 8) as RawFd, data & 0xff);
            match op {
                ACCEPT => {
                    pending.push(
                        opcode::Accept::new(types::Fd(lfd), std::ptr::null_mut(), std::ptr::null_mut())
                            .build()
                            .user_data(ud(lfd, ACCEPT)),
                    );
                    if result < 0 {
                        continue;
                    }
                    use std::os::fd::FromRawFd;
                    // SAFETY: a new fd from accept, owned from here on.
                    let client = unsafe { TcpStream::from_raw_fd(result) };
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        continue;
                    };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (c, s) = (client.as_raw_fd(), server.as_raw_fd());
                    for (fd, peer) in [(c, s), (s, c)] {
                        let mut side = Side { fd, peer, buf: vec![0u8; BUF].into(), len: 0, sent: 0 };
                        pending.push(recv(&mut side));
                        sides.insert(fd, side);
                    }
                    streams.insert(c, client);
                    streams.insert(s, server);
                }
                RECV => {
                    let Some(side) = sides.get_mut(&fd) else { continue };
                    if result <= 0 {
                        // Closed (or failed): close both ends.
                        // The peer's receive may still be in flight into its buffer:
                        // shut both down (it completes) and keep the buffers (a spike
                        // leaks them rather than track that completion).
                        let peer = side.peer;
                        for f in [fd, peer] {
                            if let Some(stream) = streams.remove(&f) {
                                let _ = stream.shutdown(std::net::Shutdown::Both);
                                graveyard_streams.push(stream);
                            }
                            if let Some(side) = sides.remove(&f) {
                                graveyard.push(side);
                            }
                        }
                        continue;
                    }
                    side.len = result as usize;
                    side.sent = 0;
                    pending.push(send(side));
                }
                SEND => {
                    let Some(side) = sides.get_mut(&fd) else { continue };
                    if result < 0 {
                        continue;
                    }
                    side.sent += result as usize;
                    if side.sent < side.len {
                        pending.push(send(side));
                    } else {
                        pending.push(recv(side));
                    }
                }
                _ => {}
            }
        }
    }
}
