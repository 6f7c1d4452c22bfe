//! Stats renderers: pure functions of the state, plus the one helper that writes a file
//! atomically.
//!
//! - [`text`]: USR1 without `-w` (pen.md §9.2), one diagnostics message per item, in the
//!   format the original intended (its client block printed garbage: §13.2 #7).
//! - [`status_html`] / [`write_web_stats`]: the `-w` page and the `status` reply, byte for
//!   byte as control.md §3.5 (pen.md §9.3).
//! - [`counters`]: the `stats` command, an addition: one `key value` per line with stable
//!   names, for scripts.
//! - [`prometheus`]: the same counters in the Prometheus text exposition format 0.0.4.
//!
//! Also the small formatting helpers that the control replies share ([`server_index`],
//! [`server_addr`], [`current_index`]), so every view prints a server the same way.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use crate::atomic_file::replace_file;
use crate::conn::{Conn, Phase};
use crate::servers::{Server, ServerRef, Servers};
use crate::state::{PeerIp, State};
use common::net::Endpoint;

/// A server reference as the original printed it: the index, −1 for the emergency server,
/// −2 for the abuse server and −3 for none.
pub fn server_index(s: Option<ServerRef>) -> i64 {
    match s {
        Some(ServerRef::Index(i)) => i as i64,
        Some(ServerRef::Emergency) => -1,
        Some(ServerRef::Abuse) => -2,
        None => -3,
    }
}

/// A server's address as `servers` and the stats print it: the IP without brackets
/// (`inet_ntop`), the socket path, or the original's text for an empty slot.
pub fn server_addr(s: &Server) -> String {
    match &s.endpoint {
        Some(Endpoint::Inet(a)) => a.ip().to_string(),
        Some(Endpoint::Unix(p)) => p.display().to_string(),
        None => "(unknown address family 0".to_string(),
    }
}

/// The "current" server of the stats header: the one assigned most recently, 0 before
/// any (the original's global started at 0).
pub fn current_index(servers: &Servers) -> i64 {
    match servers.current {
        None => 0,
        some => server_index(some),
    }
}

/// Local time as every stats view and `write` print it.
pub fn local_now() -> String {
    chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

/// The text stats as separate messages (pen.md §9.2).
pub fn text(state: &State) -> Vec<String> {
    let mut out = Vec::new();
    out.push(format!(
        "Time {}, {} servers, {} current",
        local_now(),
        state.servers.list.len(),
        current_index(&state.servers)
    ));
    for (i, s) in state.servers.list.iter().enumerate() {
        out.push(format!(
            "Server {i} status:\naddress {}\n{}\nport {}\n{} connections ({} soft, {} hard)\n{} sent, {} received",
            server_addr(s), s.status, s.port(), s.conns, s.max, s.hard, s.sx, s.rx
        ));
    }
    out.push(format!(
        "Max number of clients: {}",
        state.clients.capacity()
    ));
    out.push("Active clients:".into());
    for (i, c) in state.clients.used() {
        out.push(format!(
            "Client {i} status:\naddress {}\nlast used {}\nlast server {}\nconnects  {}\nsent  {}\nreceived  {}",
            PeerIp(&c.addr),
            state.clock.wall - c.last,
            server_index(c.server),
            c.connects,
            c.csx,
            c.crx
        ));
    }
    out.push(format!(
        "Max number of connections: {}",
        state.settings.conn_max
    ));
    out.push("Active connections:".into());
    for (k, c) in live(state) {
        let row = ConnRow::of(c);
        out.push(format!(
            "Connection {k} status:\ndownfd = {}, upfd = {}\npending data {} down, {} up\nclient {}, server {}",
            row.down, row.up, row.pend_down, row.pend_up, c.client_slot, row.server
        ));
    }
    out
}

/// Connections that are not closed, by key.
fn live(state: &State) -> impl Iterator<Item = (usize, &Conn)> {
    state
        .conns
        .iter()
        .filter(|(_, c)| !matches!(c.phase, Phase::Closed))
}

/// What the stats and the `connection` command show of one connection.
pub struct ConnRow {
    pub down: i32,
    pub up: i32,
    /// Bytes waiting to go to the client / to the server.
    pub pend_down: usize,
    pub pend_up: usize,
    pub server: i64,
}

impl ConnRow {
    /// The row of connection `c`.
    pub fn of(c: &Conn) -> ConnRow {
        ConnRow {
            down: c.client.stream.raw_fd(),
            up: c.backend.as_ref().map_or(-1, |b| b.stream.raw_fd()),
            pend_down: c.client.pending_len(),
            pend_up: c.backend.as_ref().map_or(0, |b| b.pending_len()),
            server: server_index(c.server),
        }
    }
}

const HEAD_CELL: &str = "<td bgcolor=\"#80f080\">";
const TABLE: &str = "<table bgcolor=\"#c0c0c0\">\n";

/// A table header row.
fn head_row(out: &mut String, names: &[&str]) {
    out.push_str(TABLE);
    out.push_str("<tr>\n");
    for n in names {
        let _ = writeln!(out, "{HEAD_CELL}{n}</td>");
    }
    out.push_str("</tr>\n");
}

/// A table data row.
fn row(out: &mut String, cells: &[&dyn std::fmt::Display]) {
    out.push_str("<tr>\n");
    for c in cells {
        let _ = writeln!(out, "<td>{c}</td>");
    }
    out.push_str("</tr>\n");
}

/// The HTML status page (control.md §3.5, exact bytes). `now_local` is the local time,
/// `%Y-%m-%d %H:%M:%S`; client ages are taken from the state's clock.
///
/// Rows: every server slot; every client slot ever used; every live connection. The
/// "last" connection is the one allocated most recently (0 when there is none).
pub fn status_html(state: &State, now_local: &str) -> String {
    let mut out = String::with_capacity(4096);
    out.push_str(
        "<html>\n<head>\n<title>Pen status page</title>\n</head>\n\
         <body bgcolor=\"#ffffff\"><h1>Pen status page</h1>\n",
    );
    let _ = writeln!(
        out,
        "Time {now_local}, {} servers, {} current<p>",
        state.servers.list.len(),
        current_index(&state.servers)
    );
    head_row(
        &mut out,
        &[
            "server",
            "address",
            "status",
            "port",
            "connections",
            "max soft",
            "max hard",
            "sent",
            "received",
            "weight",
            "prio",
        ],
    );
    for (i, s) in state.servers.list.iter().enumerate() {
        let addr = server_addr(s);
        let port = s.port();
        row(
            &mut out,
            &[
                &i, &addr, &s.status, &port, &s.conns, &s.max, &s.hard, &s.sx, &s.rx, &s.weight,
                &s.prio,
            ],
        );
    }
    out.push_str("</table>\n");

    let _ = write!(
        out,
        "<h2>Active clients</h2>Max number of clients: {}<p>",
        state.clients.capacity()
    );
    head_row(
        &mut out,
        &[
            "client",
            "address",
            "age(secs)",
            "last server",
            "connects",
            "sent",
            "received",
        ],
    );
    for (i, c) in state.clients.used() {
        let age = state.clock.wall - c.last;
        let server = server_index(c.server);
        row(
            &mut out,
            &[
                &i,
                &PeerIp(&c.addr),
                &age,
                &server,
                &c.connects,
                &c.csx,
                &c.crx,
            ],
        );
    }
    out.push_str("</table>\n");

    let last = live(state).max_by_key(|(_, c)| c.id).map_or(0, |(k, _)| k);
    let _ = write!(
        out,
        "<h2>Active connections</h2>Number of connections: {} max, {} used, {last} last<p>",
        state.settings.conn_max,
        live(state).count()
    );
    head_row(
        &mut out,
        &[
            "connection",
            "downfd",
            "upfd",
            "pending data down",
            "pending data up",
            "client",
            "server",
        ],
    );
    for (k, c) in live(state) {
        let r = ConnRow::of(c);
        row(
            &mut out,
            &[
                &k,
                &r.down,
                &r.up,
                &r.pend_down,
                &r.pend_up,
                &c.client_slot,
                &r.server,
            ],
        );
    }
    out.push_str("</table>\n</body>\n</html>\n");
    out
}

/// Writes the status page to `path` (`-w`, USR1, `status`), replacing the file atomically
/// so a reader never sees half a page.
pub fn write_web_stats(state: &State, path: &Path) -> io::Result<()> {
    replace_file(path, status_html(state, &local_now()).as_bytes())
}

/// One server's numbers, shared by [`counters`] and [`prometheus`].
struct ServerStats {
    blacklisted: bool,
    remaining: i64,
}

impl ServerStats {
    fn of(state: &State, i: usize, s: &Server) -> ServerStats {
        let (now, bl) = (state.clock.wall, state.settings.blacklist);
        let blacklisted = state.servers.blacklisted(ServerRef::Index(i), now, bl);
        let remaining = if blacklisted {
            s.status.saturating_add(bl).saturating_sub(now).max(0)
        } else {
            0
        };
        ServerStats {
            blacklisted,
            remaining,
        }
    }
}

/// Seconds since pen started (0 if the clock went backwards).
fn uptime(state: &State) -> i64 {
    (state.clock.wall - state.launch.started).max(0)
}

/// The `stats` reply (an addition): one `key value` per line, with names that stay
/// stable. Per server `server.N.*`; the address of an empty slot is `-`.
pub fn counters(state: &State) -> String {
    let t = &state.totals;
    let mut out = String::new();
    let mut kv = |k: &str, v: &dyn std::fmt::Display| {
        let _ = writeln!(out, "{k} {v}");
    };
    kv("uptime_seconds", &uptime(state));
    kv("connections_active", &live(state).count());
    kv("connections_max", &state.settings.conn_max);
    kv("connections_accepted_total", &t.accepted);
    kv("connections_denied_total", &t.denied);
    kv("connections_refused_total", &t.refused);
    kv("connections_closed_total", &t.closed);
    kv("connects_pending", &state.pending_connects);
    kv("clients_tracked", &state.clients.used().count());
    kv("clients_max", &state.clients.capacity());
    kv("log_records_total", &state.log.records);
    kv("log_records_dropped_total", &state.log.dropped);
    kv("log_records_withheld_total", &state.log.skipped);
    for (i, s) in state.servers.list.iter().enumerate() {
        let st = ServerStats::of(state, i, s);
        let addr = match &s.endpoint {
            None => "-".to_string(),
            Some(_) => server_addr(s),
        };
        kv(&format!("server.{i}.addr"), &addr);
        kv(&format!("server.{i}.port"), &s.port());
        kv(&format!("server.{i}.conns"), &s.conns);
        kv(&format!("server.{i}.max"), &s.max);
        kv(&format!("server.{i}.hard"), &s.hard);
        kv(&format!("server.{i}.weight"), &s.weight);
        kv(&format!("server.{i}.prio"), &s.prio);
        kv(&format!("server.{i}.sent_bytes"), &s.sx);
        kv(&format!("server.{i}.received_bytes"), &s.rx);
        kv(
            &format!("server.{i}.blacklisted"),
            &u8::from(st.blacklisted),
        );
        kv(
            &format!("server.{i}.blacklist_remaining_seconds"),
            &st.remaining,
        );
    }
    out
}

/// Escapes a Prometheus label value: backslash, double quote and newline.
fn label_escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `# HELP` and `# TYPE` of one metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP pen_{name} {help}");
    let _ = writeln!(out, "# TYPE pen_{name} {kind}");
}

/// The counters in the Prometheus text exposition format 0.0.4. Names start with `pen_`,
/// counters end in `_total`, and per-server samples carry
/// `server="N",address="HOST:PORT"` labels (`[v6]:port`, a socket path, or empty for an
/// empty slot).
pub fn prometheus(state: &State) -> String {
    let t = &state.totals;
    let mut out = String::new();
    let globals: [(&str, &str, &str, String); 13] = [
        (
            "uptime_seconds",
            "gauge",
            "Seconds since pen started.",
            uptime(state).to_string(),
        ),
        (
            "connections_active",
            "gauge",
            "Open client connections.",
            live(state).count().to_string(),
        ),
        (
            "connections_max",
            "gauge",
            "Connection table size (conn_max).",
            state.settings.conn_max.to_string(),
        ),
        (
            "connections_accepted_total",
            "counter",
            "Client connections accepted.",
            t.accepted.to_string(),
        ),
        (
            "connections_denied_total",
            "counter",
            "Client connections denied by the client ACL.",
            t.denied.to_string(),
        ),
        (
            "connections_refused_total",
            "counter",
            "Client connections refused for lack of a server.",
            t.refused.to_string(),
        ),
        (
            "connections_closed_total",
            "counter",
            "Client connections closed.",
            t.closed.to_string(),
        ),
        (
            "connects_pending",
            "gauge",
            "Backend connects in flight.",
            state.pending_connects.to_string(),
        ),
        (
            "clients_tracked",
            "gauge",
            "Client table slots in use.",
            state.clients.used().count().to_string(),
        ),
        (
            "clients_max",
            "gauge",
            "Client table size (clients_max).",
            state.clients.capacity().to_string(),
        ),
        (
            "log_records_total",
            "counter",
            "Request log records written or sent.",
            state.log.records.to_string(),
        ),
        (
            "log_records_dropped_total",
            "counter",
            "Request log records dropped.",
            state.log.dropped.to_string(),
        ),
        (
            "log_records_withheld_total",
            "counter",
            "Records for a non-IPv4 server withheld from an IPv4 log target.",
            state.log.skipped.to_string(),
        ),
    ];
    for (name, kind, help, value) in &globals {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "pen_{name} {value}");
    }

    let labels: Vec<String> = state
        .servers
        .list
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let addr = s.endpoint.as_ref().map_or(String::new(), |e| e.to_string());
            format!("server=\"{i}\",address=\"{}\"", label_escape(&addr))
        })
        .collect();
    let stats: Vec<ServerStats> = state
        .servers
        .list
        .iter()
        .enumerate()
        .map(|(i, s)| ServerStats::of(state, i, s))
        .collect();
    type Field = fn(&Server, &ServerStats) -> String;
    let per_server: [(&str, &str, &str, Field); 9] = [
        (
            "server_connections",
            "gauge",
            "Connections to the server, pending or established.",
            |s, _| s.conns.to_string(),
        ),
        (
            "server_max_connections",
            "gauge",
            "Soft connection limit, 0 = none.",
            |s, _| s.max.to_string(),
        ),
        (
            "server_hard_connections",
            "gauge",
            "Hard connection limit, 0 = none.",
            |s, _| s.hard.to_string(),
        ),
        ("server_weight", "gauge", "Server weight.", |s, _| {
            s.weight.to_string()
        }),
        ("server_prio", "gauge", "Server priority.", |s, _| {
            s.prio.to_string()
        }),
        (
            "server_sent_bytes_total",
            "counter",
            "Bytes sent to the server.",
            |s, _| s.sx.to_string(),
        ),
        (
            "server_received_bytes_total",
            "counter",
            "Bytes received from the server.",
            |s, _| s.rx.to_string(),
        ),
        (
            "server_blacklisted",
            "gauge",
            "1 while the server is blacklisted.",
            |_, st| u8::from(st.blacklisted).to_string(),
        ),
        (
            "server_blacklist_remaining_seconds",
            "gauge",
            "Seconds the blacklisting still lasts.",
            |_, st| st.remaining.to_string(),
        ),
    ];
    if state.servers.list.is_empty() {
        return out;
    }
    for (name, kind, help, field) in per_server {
        family(&mut out, name, kind, help);
        for ((s, st), l) in state.servers.list.iter().zip(&stats).zip(&labels) {
            let _ = writeln!(out, "pen_{name}{{{l}}} {}", field(s, st));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::time::Instant;

    use crate::clients::Peer;
    use crate::conn::stream::Stream;
    use crate::conn::Half;
    use crate::servers::Server;

    const WALL: i64 = 1_800_000_000;

    fn inet(s: &str) -> Option<Endpoint> {
        Some(Endpoint::Inet(s.parse().unwrap()))
    }

    /// A connected pair of non-blocking TCP streams (client side, accepted side).
    fn tcp_pair() -> (Stream, Stream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (
            Stream::Tcp(mio::net::TcpStream::from_std(a)),
            Stream::Tcp(mio::net::TcpStream::from_std(b)),
        )
    }

    /// A relaying connection of `client_slot` to `server`.
    fn conn(id: u64, client_slot: usize, server: Option<ServerRef>) -> Conn {
        let (down, up) = tcp_pair();
        Conn {
            id,
            client: Half::new(down),
            backend: Some(Half::new(up)),
            phase: Phase::Relaying,
            peer: Peer::Ip("127.0.0.1:5000".parse().unwrap()),
            client_slot: client_slot as u32,
            server,
            last_active: Instant::now(),
            xff: None,
            up_bytes: 0,
            down_bytes: 0,
        }
    }

    /// The instance of the captured page (control.md §3.5): two servers, one client that
    /// connected 6 times and last a second ago, one connection.
    fn captured_state() -> State {
        let mut st = State::new();
        st.clock.wall = WALL;
        st.servers.list.push(Server::new(inet("127.0.0.1:41081")));
        let mut s1 = Server::new(inet("127.0.0.1:41082"));
        (s1.conns, s1.max, s1.hard, s1.sx, s1.rx, s1.weight, s1.prio) = (1, 10, 20, 480, 645, 3, 4);
        st.servers.list.push(s1);
        st.servers.current = Some(ServerRef::Index(1));
        let peer = Peer::Ip("127.0.0.1:40000".parse::<SocketAddr>().unwrap());
        for _ in 0..6 {
            st.clients.lookup(&peer, WALL - 1, 0);
        }
        let c = st.clients.get_mut(0);
        (c.server, c.csx, c.crx) = (Some(ServerRef::Index(1)), 645, 480);
        st.conns.insert(conn(7, 0, Some(ServerRef::Index(1))));
        st
    }

    /// control.md §3.5 verbatim, with the server 0 row the capture left out put back, and
    /// placeholders for the time and the descriptor numbers.
    const CAPTURED: &str = r##"<html>
<head>
<title>Pen status page</title>
</head>
<body bgcolor="#ffffff"><h1>Pen status page</h1>
Time TIME, 2 servers, 1 current<p>
<table bgcolor="#c0c0c0">
<tr>
<td bgcolor="#80f080">server</td>
<td bgcolor="#80f080">address</td>
<td bgcolor="#80f080">status</td>
<td bgcolor="#80f080">port</td>
<td bgcolor="#80f080">connections</td>
<td bgcolor="#80f080">max soft</td>
<td bgcolor="#80f080">max hard</td>
<td bgcolor="#80f080">sent</td>
<td bgcolor="#80f080">received</td>
<td bgcolor="#80f080">weight</td>
<td bgcolor="#80f080">prio</td>
</tr>
ROW0<tr>
<td>1</td>
<td>127.0.0.1</td>
<td>0</td>
<td>41082</td>
<td>1</td>
<td>10</td>
<td>20</td>
<td>480</td>
<td>645</td>
<td>3</td>
<td>4</td>
</tr>
</table>
<h2>Active clients</h2>Max number of clients: 2048<p><table bgcolor="#c0c0c0">
<tr>
<td bgcolor="#80f080">client</td>
<td bgcolor="#80f080">address</td>
<td bgcolor="#80f080">age(secs)</td>
<td bgcolor="#80f080">last server</td>
<td bgcolor="#80f080">connects</td>
<td bgcolor="#80f080">sent</td>
<td bgcolor="#80f080">received</td>
</tr>
<tr>
<td>0</td>
<td>127.0.0.1</td>
<td>1</td>
<td>1</td>
<td>6</td>
<td>645</td>
<td>480</td>
</tr>
</table>
<h2>Active connections</h2>Number of connections: 500 max, 1 used, 0 last<p><table bgcolor="#c0c0c0">
<tr>
<td bgcolor="#80f080">connection</td>
<td bgcolor="#80f080">downfd</td>
<td bgcolor="#80f080">upfd</td>
<td bgcolor="#80f080">pending data down</td>
<td bgcolor="#80f080">pending data up</td>
<td bgcolor="#80f080">client</td>
<td bgcolor="#80f080">server</td>
</tr>
<tr>
<td>0</td>
<td>DOWNFD</td>
<td>UPFD</td>
<td>0</td>
<td>0</td>
<td>0</td>
<td>1</td>
</tr>
</table>
</body>
</html>
"##;

    const ROW0: &str = "<tr>\n<td>0</td>\n<td>127.0.0.1</td>\n<td>0</td>\n<td>41081</td>\n\
        <td>0</td>\n<td>0</td>\n<td>0</td>\n<td>0</td>\n<td>0</td>\n<td>0</td>\n<td>0</td>\n</tr>\n";

    #[test]
    fn status_page_matches_capture() {
        let st = captured_state();
        let c = &st.conns[0];
        let want = CAPTURED
            .replace("TIME", "2026-11-21 04:38:49")
            .replace("ROW0", ROW0)
            .replace("DOWNFD", &c.client.stream.raw_fd().to_string())
            .replace(
                "UPFD",
                &c.backend.as_ref().unwrap().stream.raw_fd().to_string(),
            );
        assert_eq!(status_html(&st, "2026-11-21 04:38:49"), want);
    }

    #[test]
    fn status_page_edge_rows() {
        let mut st = State::new();
        st.clock.wall = WALL;
        // No servers, clients or connections: headers only, "0 current".
        let page = status_html(&st, "T");
        assert!(page.contains("Time T, 0 servers, 0 current<p>\n"));
        assert!(page.contains("Number of connections: 500 max, 0 used, 0 last<p>"));
        assert_eq!(page.matches("<tr>").count(), 3);

        // Gap, Unix and IPv6 slots; emergency current; a connecting connection with no
        // backend yet; a closed one that must not show; "last" = newest allocation.
        st.servers.list.push(Server::new(None));
        st.servers
            .list
            .push(Server::new(Some(Endpoint::Unix(PathBuf::from("/run/s")))));
        st.servers.list.push(Server::new(inet("[::1]:80")));
        st.servers.current = Some(ServerRef::Emergency);
        let mut a = conn(5, 0, None);
        a.backend = None;
        let mut closed = conn(9, 0, None);
        closed.phase = Phase::Closed;
        st.conns.insert(conn(3, 0, Some(ServerRef::Abuse)));
        st.conns.insert(a);
        st.conns.insert(closed);
        let page = status_html(&st, "T");
        assert!(page.contains("Time T, 3 servers, -1 current<p>"));
        assert!(page
            .contains("<td>0</td>\n<td>(unknown address family 0</td>\n<td>0</td>\n<td>0</td>\n"));
        assert!(page.contains("<td>1</td>\n<td>/run/s</td>\n<td>0</td>\n<td>1</td>\n"));
        assert!(page.contains("<td>2</td>\n<td>::1</td>\n<td>0</td>\n<td>80</td>\n"));
        assert!(page.contains("Number of connections: 500 max, 2 used, 1 last<p>"));
        let fd = st.conns[1].client.stream.raw_fd();
        assert!(page.contains(&format!(
            "<tr>\n<td>1</td>\n<td>{fd}</td>\n<td>-1</td>\n<td>0</td>\n<td>0</td>\n<td>0</td>\n<td>-3</td>\n</tr>\n"
        )));
        assert!(page.contains("<td>-2</td>\n</tr>\n"));
    }

    #[test]
    fn web_stats_file_is_replaced() {
        let dir = std::env::temp_dir().join(format!("pen-stats-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("web.html");
        fs::write(&path, "old and much longer than the new page ".repeat(200)).unwrap();
        let st = captured_state();
        write_web_stats(&st, &path).unwrap();
        let page = fs::read_to_string(&path).unwrap();
        assert!(page.starts_with("<html>\n"));
        assert!(page.ends_with("</html>\n"));
        // No temporary file left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        // A missing directory is an error, and leaves nothing.
        assert!(write_web_stats(&st, &dir.join("nope/web.html")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn text_stats_use_the_shared_formats() {
        let st = captured_state();
        let msgs = text(&st);
        assert!(msgs[0].ends_with(", 2 servers, 1 current"));
        assert_eq!(
            msgs[2],
            "Server 1 status:\naddress 127.0.0.1\n0\nport 41082\n1 connections (10 soft, 20 hard)\n480 sent, 645 received"
        );
        assert_eq!(
            msgs[5],
            "Client 0 status:\naddress 127.0.0.1\nlast used 1\nlast server 1\nconnects  6\nsent  645\nreceived  480"
        );
        assert!(msgs[8].ends_with("pending data 0 down, 0 up\nclient 0, server 1"));
    }

    fn counters_state() -> State {
        let mut st = captured_state();
        st.launch.started = WALL - 100;
        st.totals.accepted = 11;
        st.totals.denied = 2;
        st.totals.refused = 3;
        st.totals.closed = 10;
        st.pending_connects = 1;
        st.log.records = 40;
        st.log.dropped = 4;
        // Server 0 failed 5 seconds ago: blacklisted for 25 more of the default 30.
        st.servers.fail(ServerRef::Index(0), WALL - 5);
        st
    }

    #[test]
    fn counters_reply() {
        let want = "\
uptime_seconds 100
connections_active 1
connections_max 500
connections_accepted_total 11
connections_denied_total 2
connections_refused_total 3
connections_closed_total 10
connects_pending 1
clients_tracked 1
clients_max 2048
log_records_total 40
log_records_dropped_total 4
log_records_withheld_total 0
server.0.addr 127.0.0.1
server.0.port 41081
server.0.conns 0
server.0.max 0
server.0.hard 0
server.0.weight 0
server.0.prio 0
server.0.sent_bytes 0
server.0.received_bytes 0
server.0.blacklisted 1
server.0.blacklist_remaining_seconds 25
server.1.addr 127.0.0.1
server.1.port 41082
server.1.conns 1
server.1.max 10
server.1.hard 20
server.1.weight 3
server.1.prio 4
server.1.sent_bytes 480
server.1.received_bytes 645
server.1.blacklisted 0
server.1.blacklist_remaining_seconds 0
";
        assert_eq!(counters(&counters_state()), want);
        // Every line is exactly `key value`.
        let mut st = counters_state();
        st.servers.list.push(Server::new(None));
        for l in counters(&st).lines() {
            assert_eq!(l.split(' ').count(), 2, "{l}");
        }
        assert!(counters(&st).contains("server.2.addr -\nserver.2.port 0\n"));
    }

    #[test]
    fn prometheus_exposition() {
        let mut st = counters_state();
        st.servers.list.push(Server::new(inet("[::1]:443")));
        st.servers
            .list
            .push(Server::new(Some(Endpoint::Unix(PathBuf::from("/a\"b\\c")))));
        let text = prometheus(&st);
        assert!(text.contains(
            "# HELP pen_connections_accepted_total Client connections accepted.\n\
             # TYPE pen_connections_accepted_total counter\n\
             pen_connections_accepted_total 11\n"
        ));
        assert!(text.contains("# TYPE pen_uptime_seconds gauge\npen_uptime_seconds 100\n"));
        assert!(text.contains(
            "pen_server_sent_bytes_total{server=\"1\",address=\"127.0.0.1:41082\"} 480\n"
        ));
        assert!(
            text.contains("pen_server_blacklisted{server=\"0\",address=\"127.0.0.1:41081\"} 1\n")
        );
        assert!(text.contains("pen_server_connections{server=\"2\",address=\"[::1]:443\"} 0\n"));
        assert!(text.contains("{server=\"3\",address=\"/a\\\"b\\\\c\"}"));
        check_exposition(&text);
        check_exposition(&prometheus(&State::new()));
    }

    /// A small validator for format 0.0.4: every sample follows its family's HELP and TYPE,
    /// each family appears once, counters end in `_total`, names are valid, values parse.
    fn check_exposition(text: &str) {
        let mut seen = std::collections::HashSet::new();
        let mut current: Option<(String, String)> = None;
        let valid = |n: &str| {
            n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        };
        let lines: Vec<&str> = text.lines().collect();
        assert!(text.ends_with('\n'));
        let mut i = 0;
        while i < lines.len() {
            let l = lines[i];
            if let Some(rest) = l.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                let ty = lines[i + 1]
                    .strip_prefix(&format!("# TYPE {name} "))
                    .unwrap();
                assert!(["counter", "gauge"].contains(&ty), "{ty}");
                assert!(valid(name) && name.starts_with("pen_"), "{name}");
                assert_eq!(ty == "counter", name.ends_with("_total"), "{name}");
                assert!(seen.insert(name.to_string()), "duplicate {name}");
                current = Some((name.to_string(), ty.to_string()));
                i += 2;
                continue;
            }
            let (name, _) = current.as_ref().expect("sample before HELP");
            let (series, value) = l.rsplit_once(' ').unwrap();
            let metric = series.split('{').next().unwrap();
            assert_eq!(metric, name, "{l}");
            assert!(value.parse::<f64>().is_ok(), "{l}");
            if let Some(labels) = series.strip_prefix(metric).filter(|s| !s.is_empty()) {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{l}");
            }
            i += 1;
        }
    }
}
