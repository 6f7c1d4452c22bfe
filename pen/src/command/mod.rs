//! The control language (control.md §3): one typed [`Command`] per line, produced by
//! [`parse`] and applied by [`exec`]. Command-line options, `-O`, `-F` files, `include`,
//! HUP reloads and the control socket all go through this one path, as in the original.

pub mod exec;
pub mod file;
pub mod parse;
pub mod preload;
pub mod write;

use std::net::{Ipv4Addr, Ipv6Addr};

use common::addr::{is_name, ListenSpec, Proto};

pub use parse::{parse_line, ParseError};

/// One command line of the control language.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// An empty line or a comment (first token starts with `#`): no reply.
    Nothing,
    /// `no X` with an unknown X, or a bare `no`: ignored silently, as the original.
    IgnoredNo,
    /// An integer setting, queried (`None`) or set.
    Int(IntSetting, Option<i64>),
    /// `X` / `no X` for an on/off setting.
    Flag(Flag, bool),
    /// `tcp_fastclose both|up|down|off`.
    TcpFastclose(Fastclose),
    /// `epoll`, `poll`, `select`, `kqueue`: accepted at startup, ignored later.
    EventBackend(EventBackend),
    /// `listen [SPEC]`.
    Listen(Option<String>),
    /// `log [TARGET]`; `None` queries.
    Log(Option<String>),
    /// `no log`: stops every log target, file and network alike.
    NoLog,
    /// `web_stats [FILE]`; `None` queries.
    WebStats(Option<String>),
    /// `no web_stats`.
    NoWebStats,
    /// `source ADDR`: local address for backend connects.
    Source(String),
    /// `no source` (an addition: the original could not clear it).
    NoSource,
    /// `server N [KEY VALUE]...`, applied left to right.
    Server(usize, Vec<ServerSet>),
    /// `acl N permit|deny …`.
    Acl(u8, AclRule),
    /// `no acl N`.
    NoAcl(u8),
    /// Read-only views and actions.
    Servers,
    Mode,
    Status,
    Recent(Option<i64>),
    Connection(Option<i64>),
    Socket(Option<i64>),
    Close(Option<i64>),
    Pid,
    Control,
    /// `prometheus [ADDR:]PORT` / `no prometheus`: the metrics listener (an addition),
    /// set at startup (`-O` or `-F`); `None` queries.
    Prometheus(Option<String>),
    NoPrometheus,
    /// `stats`: machine-readable counters, one `key value` per line (an addition).
    Stats,
    /// `write [FILE]`.
    Write(Option<String>),
    /// `include FILE`.
    Include(String),
    /// `exit` (needs `-X`).
    Exit,
    /// A command of a feature that is not built yet (TLS, DSR, …): refused with a reply
    /// naming it.
    Unsupported(String),
}

impl Command {
    /// The host names that applying this command would look up (IP literals and paths
    /// need none): the event loop has them looked up elsewhere first. An `include`'s
    /// names are in its file: [`preload::Preload`] finds them.
    pub fn names(&self) -> Vec<String> {
        let listen_host = |spec: &str| match ListenSpec::parse(spec, Proto::Tcp) {
            Ok(ListenSpec::Inet { host, .. }) => host,
            _ => None,
        };
        let hosts: Vec<String> = match self {
            Command::Server(_, sets) => sets
                .iter()
                .filter_map(|set| match set {
                    ServerSet::Address(a) => exec::address_host(a).map(str::to_string),
                    _ => None,
                })
                .collect(),
            Command::Source(a) => vec![exec::source_host(a).to_string()],
            Command::Log(Some(target)) => crate::logsink::network_host(target)
                .map(str::to_string)
                .into_iter()
                .collect(),
            Command::Listen(Some(spec)) | Command::Prometheus(Some(spec)) => {
                listen_host(spec).into_iter().collect()
            }
            _ => Vec::new(),
        };
        hosts.into_iter().filter(|h| is_name(h)).collect()
    }

    /// Whether applying this command reads a file, which the loop has done elsewhere.
    pub fn reads_files(&self) -> bool {
        matches!(self, Command::Include(_))
    }
}

/// Integer settings that reply with their value (control.md §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntSetting {
    Blacklist,
    Timeout,
    Tracking,
    Debug,
    ClientsMax,
    ConnMax,
    ClientAcl,
    ControlAcl,
    TarpitAcl,
    IdleTimeout,
    Idlers,
    PendingMax,
    MultiAccept,
    BusyPoll,
}

/// On/off settings (control.md §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    Hash,
    Roundrobin,
    Stubborn,
    Weight,
    Prio,
    Http,
    Ascii,
    TcpNodelay,
    Keepalive,
    Transparent,
    Peek,
    Dummy,
    AbortOnError,
}

/// Which EOF closes both sides at once (pen.md §5.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fastclose {
    #[default]
    Off,
    Up,
    Down,
    Both,
}

/// Event back-ends of the original; mio picks epoll, so these are accepted and ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventBackend {
    Epoll,
    Poll,
    Select,
    Kqueue,
}

/// One `KEY VALUE` pair of a `server N …` command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerSet {
    Address(String),
    Port(u16),
    Max(u32),
    Hard(u32),
    Weight(u32),
    Prio(i32),
    Blacklist(i64),
    Acl(u8),
}

/// Whether an ACL entry permits or denies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclAction {
    Permit,
    Deny,
}

/// What an ACL entry matches. Addresses are stored masked (control.md §6.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AclMatch {
    V4 {
        addr: Ipv4Addr,
        mask: Ipv4Addr,
    },
    V6 {
        addr: Ipv6Addr,
        len: u8,
    },
    /// GeoIP country: stored and written back, never matches (no GeoIP in this build).
    Country(String),
}

/// One ACL entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclRule {
    pub action: AclAction,
    pub matcher: AclMatch,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(line: &str) -> Vec<String> {
        parse_line(line).unwrap().names()
    }

    #[test]
    fn commands_name_the_hosts_they_would_look_up() {
        for (line, want) in [
            (
                "server 1 address web1.example port 80",
                &["web1.example"][..],
            ),
            ("server 1 address 10.0.0.1", &[]),
            ("server 1 address [::1]", &[]),
            ("server 1 address /run/web.sock", &[]),
            ("server 1 max 5", &[]),
            ("source gw.example", &["gw.example"]),
            ("source 10.0.0.9", &[]),
            ("log logs.example:514", &["logs.example"]),
            ("log [::1]:514", &[]),
            ("log /var/log/pen.log", &[]),
            ("listen lb.example:8080", &["lb.example"]),
            ("listen 0:8080", &[]),
            ("listen 8080", &[]),
            ("prometheus mon.example:9100", &["mon.example"]),
            ("timeout 5", &[]),
        ] {
            assert_eq!(names(line), want, "{line}");
        }
    }
}
