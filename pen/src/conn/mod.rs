//! A proxied connection: the client half, the backend half once there is one, and the
//! phase it is in. The relay (`relay.rs`) moves bytes between the halves; connection
//! setup and failover live in `connect.rs`; HTTP header insertion in `http.rs`.

pub mod connect;
pub mod http;
pub mod relay;
pub mod stream;

use std::time::Instant;

use mio::Token;

use crate::bufpool::Pending;
use crate::clients::Peer;
use crate::select::Failover;
use crate::servers::ServerRef;
use stream::Stream;

/// Tokens below this are fixed (listener, signals, control); connection tokens follow.
pub const FIRST_CONN_TOKEN: usize = 16;

/// Which socket of a connection an event is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

/// The token of one side of connection `key`.
pub fn token(key: usize, side: Side) -> Token {
    Token(FIRST_CONN_TOKEN + key * 2 + (side == Side::Backend) as usize)
}

/// The connection key and side of a connection token.
pub fn untoken(t: Token) -> Option<(usize, Side)> {
    let n = t.0.checked_sub(FIRST_CONN_TOKEN)?;
    Some((
        n / 2,
        if n % 2 == 0 {
            Side::Client
        } else {
            Side::Backend
        },
    ))
}

/// One socket of a connection and what is known about it.
#[derive(Debug)]
pub struct Half {
    pub stream: Stream,
    /// Bytes from the other side that this side could not take yet.
    pub pending: Option<Box<Pending>>,
    /// Readiness reported and not yet used up (mio is edge-triggered).
    pub readable: bool,
    pub writable: bool,
    /// An event reported the peer's write side closed (its FIN is queued behind any data),
    /// so a short read does not mean the socket is drained.
    pub read_closed: bool,
    /// This side sent EOF.
    pub eof: bool,
    /// We shut down writing towards this side.
    pub shut: bool,
}

impl Half {
    /// A fresh half: writable, and readable only once an event says so. Registering a
    /// socket (EPOLL_CTL_ADD) reports data that is already waiting, so nothing is missed
    /// and no read is spent on an empty socket.
    pub fn new(stream: Stream) -> Half {
        Half {
            stream,
            pending: None,
            readable: false,
            writable: true,
            read_closed: false,
            eof: false,
            shut: false,
        }
    }

    /// Bytes waiting to be written to this side.
    pub fn pending_len(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.len())
    }
}

/// A backend connect in flight: its deadline and the candidates still to try.
#[derive(Debug)]
pub struct Connecting {
    pub deadline: Instant,
    pub failover: Failover,
}

/// Where a connection is in its life.
#[derive(Debug)]
pub enum Phase {
    /// A backend connect is in flight (boxed: only connecting connections pay for it).
    Connecting(Box<Connecting>),
    /// Both halves are connected and bytes flow.
    Relaying,
    /// Closed; the slot is freed after the current batch of events.
    Closed,
}

/// One proxied connection. Kept small: an idle connection holds no buffer.
#[derive(Debug)]
pub struct Conn {
    /// Unique for the life of the process, so stale timers can recognise a reused slot.
    pub id: u64,
    pub client: Half,
    pub backend: Option<Half>,
    pub phase: Phase,
    pub peer: Peer,
    /// Index in the client table.
    pub client_slot: u32,
    /// The server this connection is counted against (pending or established).
    pub server: Option<ServerRef>,
    /// Last time bytes moved or the connection changed state (idle timeout).
    pub last_active: Instant,
    /// HTTP header insertion state, present only in HTTP mode.
    pub xff: Option<Box<http::XffState>>,
    /// Bytes from the client / to the client over this connection.
    pub up_bytes: u64,
    pub down_bytes: u64,
}

impl Conn {
    /// True while the backend connect is in flight.
    pub fn connecting(&self) -> bool {
        matches!(self.phase, Phase::Connecting(_))
    }

    /// The half for `side`, if it exists.
    pub fn half(&mut self, side: Side) -> Option<&mut Half> {
        match side {
            Side::Client => Some(&mut self.client),
            Side::Backend => self.backend.as_mut(),
        }
    }

    /// The original's connection state bitmask (control.md §3.4): 1 connecting,
    /// 2 connected, 4 EOF from server, 8 EOF from client.
    pub fn state_bits(&self) -> u32 {
        match self.phase {
            Phase::Closed => 0,
            Phase::Connecting(_) => 1,
            Phase::Relaying => {
                let b = self.backend.as_ref().is_some_and(|h| h.eof);
                2 | if b { 4 } else { 0 } | if self.client.eof { 8 } else { 0 }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Idle connections hold no buffer; the slot itself is the per-connection cost (goal:
    /// ≤ 256 bytes of RSS each). Release builds only: in debug builds mio adds a selector
    /// id to every socket.
    #[test]
    #[cfg(not(debug_assertions))]
    fn an_idle_connection_is_small() {
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 176, "Conn is {size} bytes");
    }

    #[test]
    fn tokens_round_trip() {
        for key in [0, 1, 7, 1 << 20] {
            for side in [Side::Client, Side::Backend] {
                assert_eq!(untoken(token(key, side)), Some((key, side)));
            }
        }
        assert_eq!(untoken(Token(3)), None);
    }
}
