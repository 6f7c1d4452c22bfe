//! Stats renderers: pure functions of the state. USR1 without `-w` prints the text stats
//! (pen.md §9.2) through the diagnostics channel, one message per item, in the format the
//! original intended (its client block printed garbage: §13.2 #7).

use std::fmt::Write as _;

use crate::conn::Phase;
use crate::servers::ServerRef;
use crate::state::{PeerIp, State};
use common::net::Endpoint;

/// The text stats as separate messages.
pub fn text(state: &State) -> Vec<String> {
    let mut out = Vec::new();
    let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
    let current = match state.servers.current {
        Some(ServerRef::Index(i)) => i as i64,
        Some(ServerRef::Emergency) => -1,
        Some(ServerRef::Abuse) => -2,
        None => 0,
    };
    out.push(format!(
        "Time {now}, {} servers, {current} current",
        state.servers.list.len()
    ));
    for (i, s) in state.servers.list.iter().enumerate() {
        let addr = match &s.endpoint {
            Some(Endpoint::Inet(a)) => a.ip().to_string(),
            Some(Endpoint::Unix(p)) => p.display().to_string(),
            None => "(none)".to_string(),
        };
        out.push(format!(
            "Server {i} status:\naddress {addr}\n{}\nport {}\n{} connections ({} soft, {} hard)\n{} sent, {} received",
            s.status, s.port(), s.conns, s.max, s.hard, s.sx, s.rx
        ));
    }
    out.push(format!(
        "Max number of clients: {}",
        state.clients.capacity()
    ));
    out.push("Active clients:".into());
    for (i, c) in state.clients.used() {
        let mut m = String::new();
        let _ = write!(
            m,
            "Client {i} status:\naddress {}\nlast used {}\nlast server {}\nconnects  {}\nsent  {}\nreceived  {}",
            PeerIp(&c.addr),
            state.clock.wall - c.last,
            match c.server {
                Some(ServerRef::Index(s)) => s as i64,
                Some(ServerRef::Emergency) => -1,
                Some(ServerRef::Abuse) => -2,
                None => -3,
            },
            c.connects,
            c.csx,
            c.crx
        );
        out.push(m);
    }
    out.push(format!(
        "Max number of connections: {}",
        state.settings.conn_max
    ));
    out.push("Active connections:".into());
    for (k, c) in state
        .conns
        .iter()
        .filter(|(_, c)| !matches!(c.phase, Phase::Closed))
    {
        out.push(format!(
            "Connection {k} status:\ndownfd = {}, upfd = {}\npending data {} down, {} up\nclient {}, server {}",
            c.client.stream.raw_fd(),
            c.backend.as_ref().map_or(-1, |b| b.stream.raw_fd()),
            c.client.pending_len(),
            c.backend.as_ref().map_or(0, |b| b.pending_len()),
            c.client_slot,
            match c.server {
                Some(ServerRef::Index(s)) => s as i64,
                Some(ServerRef::Emergency) => -1,
                Some(ServerRef::Abuse) => -2,
                None => -3,
            }
        ));
    }
    out
}
