//! The listening socket (TCP or Unix) and accepting from it.

use std::io;

use mio::event::Source;
use mio::net::{TcpListener, UnixListener};
use mio::{Interest, Registry, Token};

use common::addr::{ListenSpec, Proto};
use common::net::{self, Endpoint};

use crate::clients::Peer;
use crate::conn::stream::Stream;

/// A bound, listening, non-blocking socket.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Parses, resolves and binds `spec` (pen.md §2.3), with error text naming the spec.
    pub fn bind(spec: &str, backlog: i32, nodelay: bool) -> Result<Listener, String> {
        let parsed = ListenSpec::parse(spec, Proto::Tcp).map_err(|e| e.to_string())?;
        let ep = parsed.endpoint().map_err(|e| e.to_string())?;
        let sock = net::stream_listener(&ep, backlog, nodelay).map_err(|e| e.to_string())?;
        Ok(match ep {
            Endpoint::Inet(_) => Listener::Tcp(TcpListener::from_std(sock.into())),
            Endpoint::Unix(_) => Listener::Unix(UnixListener::from_std(sock.into())),
        })
    }

    /// Accepts one connection.
    pub fn accept(&self) -> io::Result<(Stream, Peer)> {
        match self {
            Listener::Tcp(l) => l.accept().map(|(s, a)| (Stream::Tcp(s), Peer::Ip(a))),
            Listener::Unix(l) => l.accept().map(|(s, _)| (Stream::Unix(s), Peer::Unix)),
        }
    }

    /// The bound port (0 for Unix), the default backend port.
    pub fn port(&self) -> u16 {
        match self {
            Listener::Tcp(l) => l.local_addr().map_or(0, |a| a.port()),
            Listener::Unix(_) => 0,
        }
    }
}

impl Source for Listener {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.register(r, t, i),
            Listener::Unix(l) => l.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.reregister(r, t, i),
            Listener::Unix(l) => l.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.deregister(r),
            Listener::Unix(l) => l.deregister(r),
        }
    }
}
