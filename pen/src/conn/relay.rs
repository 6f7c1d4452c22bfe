//! The relay: moves bytes between the two halves of an established connection.
//!
//! Reads go into the loop's one buffer and are written straight through to the other side;
//! only what that side could not take is kept (pen.md §5.2), and the source is not read
//! again until it drains. mio is edge-triggered, so each half remembers readiness it has
//! not used up. Half-close is passed on (`shutdown(SHUT_WR)`) and the connection closes
//! when both sides have sent EOF and nothing is left to write: unlike the original, a
//! hang-up never discards data still queued (§13.2 #1, #32).

use std::fmt::Display;
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;

use common::net::Endpoint;

use super::http::{self, XffState};
use super::{Conn, Half};
use crate::bufpool::BufPool;
use crate::command::Fastclose;
use crate::logsink::LogSink;

/// Reads per direction per wake-up before yielding to other connections.
const BUDGET: usize = 16;

/// Bytes per direction per wake-up before yielding to other connections: four whole
/// reads, so that one bulk transfer does not hold up the rest of the loop for long.
const BUDGET_BYTES: usize = 4 << 20;

/// What the loop should do with the connection after a pump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Wait for the next readiness event.
    Wait,
    /// The read budget ran out with data still readable: pump again soon.
    Again,
    /// Close both sides.
    Close,
}

/// Everything the relay borrows from the loop for one pump.
pub struct Relay<'a> {
    /// The loop's read buffer.
    pub buf: &'a mut [u8],
    /// Scratch output for HTTP rewriting.
    pub scratch: &'a mut Vec<u8>,
    pub pool: &'a mut BufPool,
    pub fastclose: Fastclose,
    /// Request log and the server to name in its records.
    pub log: Option<(&'a mut LogSink, &'a Endpoint)>,
    /// The client's address as it appears in headers and log records.
    pub client: &'a dyn Display,
    /// Wall-clock seconds, for file log lines.
    pub now: i64,
    /// Debug level 3 payload dumps: `None` off, else whether in ASCII (`-a`) or hex.
    pub dump: Option<bool>,
    /// Bytes moved during this pump: from the client, from the server.
    pub up: u64,
    pub down: u64,
}

/// Whether a direction stopped for lack of readiness or for lack of budget.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    Idle,
    Budget,
}

impl Relay<'_> {
    /// Moves data both ways as far as readiness allows.
    pub fn pump(&mut self, conn: &mut Conn) -> Outcome {
        let Conn {
            client,
            backend,
            xff,
            ..
        } = conn;
        let Some(backend) = backend.as_mut() else {
            return Outcome::Close;
        };
        let before = (client.eof, backend.eof);
        let up = match self.forward(client, backend, xff.as_deref_mut()) {
            Ok(flow) => flow,
            Err(_) => return Outcome::Close,
        };
        let down = match self.forward_down(backend, client) {
            Ok(flow) => flow,
            Err(_) => return Outcome::Close,
        };
        let drained = client.pending.is_none() && backend.pending.is_none();
        if drained && client.eof && backend.eof {
            return Outcome::Close;
        }
        // tcp_fastclose acts only at the moment of the EOF, and only with nothing
        // buffered (pen.md §5.3).
        if drained {
            let fc = self.fastclose;
            let client_closed = !before.0 && client.eof;
            let server_closed = !before.1 && backend.eof;
            if client_closed && matches!(fc, Fastclose::Down | Fastclose::Both) {
                return Outcome::Close;
            }
            if server_closed && matches!(fc, Fastclose::Up | Fastclose::Both) {
                return Outcome::Close;
            }
        }
        if up == Flow::Budget || down == Flow::Budget {
            Outcome::Again
        } else {
            Outcome::Wait
        }
    }

    /// Client → server, with HTTP rewriting and request logging.
    fn forward(
        &mut self,
        src: &mut Half,
        dst: &mut Half,
        mut xff: Option<&mut XffState>,
    ) -> io::Result<Flow> {
        if !prepare(src, dst, self.pool)? {
            return Ok(Flow::Idle);
        }
        let mut moved = 0;
        for _ in 0..BUDGET {
            let n = match read_chunk(src, self.buf)? {
                Got::Data(n) => n,
                Got::Eof => return finish_eof(dst),
                Got::Blocked => return Ok(Flow::Idle),
            };
            moved += n;
            let chunk = &self.buf[..n];
            let mut out: &[u8] = chunk;
            match xff.as_deref_mut() {
                Some(state) => {
                    let log = &mut self.log;
                    let now = self.now;
                    let client = self.client;
                    let mut logged = false;
                    let rewritten =
                        http::rewrite(state, chunk, client, false, self.scratch, |line| {
                            if let Some((sink, server)) = log {
                                sink.record(client, server, line, now);
                                logged = true;
                            }
                        });
                    if rewritten {
                        out = self.scratch;
                    }
                    // A stream that is not HTTP keeps the original's rule: a record a read.
                    if state.gave_up() && !logged {
                        if let Some((sink, server)) = &mut self.log {
                            sink.record(self.client, server, chunk, self.now);
                        }
                    }
                }
                None => {
                    if let Some((sink, server)) = &mut self.log {
                        sink.record(self.client, server, chunk, self.now);
                    }
                }
            }
            if let Some(ascii) = self.dump {
                dump(chunk, ascii);
            }
            self.up += out.len() as u64;
            if !write_through(dst, out, self.pool)? {
                return Ok(Flow::Idle);
            }
            if !src.readable {
                return Ok(Flow::Idle);
            }
            if moved >= BUDGET_BYTES {
                break;
            }
        }
        Ok(Flow::Budget)
    }

    /// Server → client: plain write-through.
    fn forward_down(&mut self, src: &mut Half, dst: &mut Half) -> io::Result<Flow> {
        if !prepare(src, dst, self.pool)? {
            return Ok(Flow::Idle);
        }
        let mut moved = 0;
        for _ in 0..BUDGET {
            let n = match read_chunk(src, self.buf)? {
                Got::Data(n) => n,
                Got::Eof => return finish_eof(dst),
                Got::Blocked => return Ok(Flow::Idle),
            };
            moved += n;
            if let Some(ascii) = self.dump {
                dump(&self.buf[..n], ascii);
            }
            self.down += n as u64;
            if !write_through(dst, &self.buf[..n], self.pool)? {
                return Ok(Flow::Idle);
            }
            if !src.readable {
                return Ok(Flow::Idle);
            }
            if moved >= BUDGET_BYTES {
                break;
            }
        }
        Ok(Flow::Budget)
    }
}

/// One debug line per read, `<n>: <bytes>` (pen.md §8.2, level 3), in hex or, with `-a`,
/// as ASCII with unprintable bytes shown as `.`.
fn dump(data: &[u8], ascii: bool) {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(data.len() * 3);
    for &b in data {
        if ascii {
            text.push(if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            });
        } else {
            let _ = write!(text, "{b:02x} ");
        }
    }
    common::diag!("{}: {}", data.len(), text.trim_end());
}

/// Flushes what `dst` still owes and passes on an EOF already seen. Returns whether `src`
/// may be read now.
fn prepare(src: &mut Half, dst: &mut Half, pool: &mut BufPool) -> io::Result<bool> {
    if !flush(dst, pool)? {
        return Ok(false);
    }
    if src.eof {
        shut_unless_done(dst)?;
        return Ok(false);
    }
    Ok(src.readable)
}

/// The result of one read.
enum Got {
    Data(usize),
    Eof,
    Blocked,
}

/// Reads one chunk. A short read means the socket was drained: with edge-triggered epoll
/// any later data raises a new event, so the readiness is cleared without the extra
/// `read` that would only return EAGAIN (tokio does the same). Not so once the peer's FIN
/// was reported: its edge is spent, so keep reading until the EOF itself.
fn read_chunk(src: &mut Half, buf: &mut [u8]) -> io::Result<Got> {
    loop {
        match src.stream.read(buf) {
            Ok(0) => {
                src.eof = true;
                src.readable = false;
                return Ok(Got::Eof);
            }
            Ok(n) => {
                if n < buf.len() && !src.read_closed {
                    src.readable = false;
                }
                return Ok(Got::Data(n));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                src.readable = false;
                return Ok(Got::Blocked);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// After `src` sent EOF: shut down writing to `dst` once it has nothing pending.
fn finish_eof(dst: &mut Half) -> io::Result<Flow> {
    if dst.pending.is_none() {
        shut_unless_done(dst)?;
    }
    Ok(Flow::Idle)
}

/// Passes an EOF on, except when `dst` has sent its own EOF too: then, with nothing left to
/// write, the connection closes at once and the close sends the FIN (a syscall saved on
/// every connection).
fn shut_unless_done(dst: &mut Half) -> io::Result<()> {
    if dst.eof && dst.pending.is_none() {
        return Ok(());
    }
    shut(dst)
}

/// `shutdown(SHUT_WR)` once; ENOTCONN (the peer is already gone) is not an error.
fn shut(dst: &mut Half) -> io::Result<()> {
    if dst.shut {
        return Ok(());
    }
    dst.shut = true;
    match dst.stream.shutdown(Shutdown::Write) {
        Err(e) if e.kind() != ErrorKind::NotConnected => Err(e),
        _ => Ok(()),
    }
}

/// Writes `data` to `dst`; keeps what it could not take. Returns whether `dst` took it all.
fn write_through(dst: &mut Half, data: &[u8], pool: &mut BufPool) -> io::Result<bool> {
    let mut off = 0;
    while off < data.len() {
        match dst.stream.write(&data[off..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => off += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    if off < data.len() {
        dst.pending = Some(pool.take(&data[off..]));
        dst.writable = false;
        return Ok(false);
    }
    Ok(true)
}

/// Writes out what `dst` still owes. Returns whether it is now empty.
fn flush(dst: &mut Half, pool: &mut BufPool) -> io::Result<bool> {
    let Some(p) = dst.pending.as_mut() else {
        return Ok(true);
    };
    if !dst.writable {
        return Ok(false);
    }
    while !p.is_empty() {
        match dst.stream.write(p.bytes()) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => p.consume(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                dst.writable = false;
                return Ok(false);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    if let Some(p) = dst.pending.take() {
        pool.give(p);
    }
    Ok(true)
}
