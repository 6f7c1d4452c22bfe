//! Runtime control end to end (control.md; pen.md §9): the real pen with a control socket
//! (`-C`) driven by the real penctl over IPv4, IPv6 and a Unix socket; every command of
//! the control language, live `server N …` and `listen` changes, `-F` files and HUP, the
//! `write` round trip, the Prometheus listener, the captured reply formats, bad input and
//! `control_acl`.
//!
//! Tests run as root in CI, and pen will not open a control socket as root without `-u`
//! (control.md §1.1), so pen is started with `-u nobody` when we are root; every directory
//! it writes in is therefore world-writable (mode 0777).
//!
//! pen is ready when `penctl pid` answers with its pid: the control socket is bound after
//! the listener, so this also proves the listener is there, and unlike a probe connection
//! to the listener it is not a client (it would show up in `recent` and take a slot).

use std::collections::HashMap;
use std::fs::{self, Permissions};
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{self, hello_from, which_from, NameServer, Proc, DEADLINE};

// ---- harness ----

/// Where pen's control socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ctl {
    /// `127.0.0.1:P`.
    V4,
    /// `::1:P` (the original's last-colon split).
    V6,
    /// `DIR/ctl.sock`.
    Unix,
}

/// A running pen with a control socket.
struct Pen {
    proc: Proc,
    /// The listen address, `127.0.0.1:P`; the listen spec is its text.
    addr: SocketAddr,
    /// The `-C` spec, which is also penctl's target.
    ctl: String,
    /// The port that replaced `{port2}` in the options (0 if none did).
    port2: u16,
    dir: PathBuf,
}

/// A test directory pen (running as nobody) may write in.
fn test_dir(test: &str) -> PathBuf {
    let d = util::temp_dir(test);
    fs::set_permissions(&d, Permissions::from_mode(0o777)).unwrap();
    d
}

fn as_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

/// Whether ::1 can be bound here (IPv6 parts are skipped otherwise).
fn ipv6() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

fn free_port6() -> u16 {
    TcpListener::bind("[::1]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Pen {
    /// Starts `pen -f [-u nobody] -C CTL OPTS 127.0.0.1:P SERVERS` and waits until it
    /// answers on the control socket. In `opts`, `{dir}` is the test directory and
    /// `{port2}` a second free port. Retries with other ports if one was taken meanwhile.
    fn start(dir: &Path, ctl: Ctl, opts: &[&str], servers: &[String]) -> Pen {
        let dir_s = dir.display().to_string();
        for _ in 0..5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], util::free_port()));
            let port2 = util::free_port();
            let spec = match ctl {
                Ctl::V4 => format!("127.0.0.1:{}", util::free_port()),
                Ctl::V6 => format!("::1:{}", free_port6()),
                Ctl::Unix => format!("{dir_s}/ctl.sock"),
            };
            let mut args: Vec<String> = vec!["-f".into()];
            if as_root() {
                args.extend(["-u".into(), "nobody".into()]);
            }
            args.extend(["-C".into(), spec.clone()]);
            args.extend(opts.iter().map(|o| {
                o.replace("{dir}", &dir_s)
                    .replace("{port2}", &port2.to_string())
            }));
            args.push(addr.to_string());
            args.extend(servers.iter().cloned());
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut proc = Proc::start("pen", &argv);
            let pid = proc.pid().to_string();
            let end = Instant::now() + DEADLINE;
            loop {
                let (rc, out, _) = util::run("penctl", &[&spec, "pid"]);
                if rc == 0 && out.trim_end() == pid {
                    return Pen {
                        proc,
                        addr,
                        ctl: spec,
                        port2,
                        dir: dir.to_path_buf(),
                    };
                }
                if proc.child.try_wait().unwrap().is_some() {
                    let code = proc.wait_exit(DEADLINE);
                    let out = proc.output();
                    if out.contains("in use") {
                        break; // port race: try other ports
                    }
                    panic!(
                        "{:?} exited with {code:?} before answering:\n{out}",
                        proc.argv
                    );
                }
                assert!(
                    Instant::now() < end,
                    "{:?} does not answer on {spec}:\n{}",
                    proc.argv,
                    proc.output()
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not find free ports for pen");
    }

    /// Runs `penctl CTL WORDS…` (`line` split on spaces) and returns its stdout; penctl
    /// must succeed with nothing on stderr.
    fn cmd(&self, line: &str) -> String {
        penctl(&self.ctl, line)
    }

    /// A path in the test directory.
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A raw connection to the control socket.
    fn connect_ctl(&self) -> CtlStream {
        if self.ctl.contains('/') {
            let s = UnixStream::connect(&self.ctl).unwrap();
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            s.set_write_timeout(Some(DEADLINE)).unwrap();
            CtlStream::Unix(s)
        } else {
            let (host, port) = self.ctl.rsplit_once(':').unwrap();
            let ip: std::net::IpAddr = host.parse().unwrap();
            let s = TcpStream::connect((ip, port.parse::<u16>().unwrap())).unwrap();
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            s.set_write_timeout(Some(DEADLINE)).unwrap();
            CtlStream::Tcp(s)
        }
    }

    /// Sends `bytes` on a fresh control connection and returns everything read until EOF.
    fn raw(&self, bytes: &[u8]) -> Vec<u8> {
        let mut s = self.connect_ctl();
        s.write_all(bytes).unwrap();
        read_until_eof(&mut s).0
    }

    /// The `stats` reply as a map; every line must be exactly `key value`.
    fn stats(&self) -> HashMap<String, String> {
        let text = self.cmd("stats");
        text.lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                assert_eq!(f.len(), 2, "stats line {l:?} is not `key value`");
                (f[0].to_string(), f[1].to_string())
            })
            .collect()
    }
}

/// `penctl TARGET WORDS…`; asserts exit 0 and an empty stderr.
fn penctl(target: &str, line: &str) -> String {
    let mut args = vec![target];
    args.extend(line.split(' ').filter(|w| !w.is_empty()));
    let (rc, out, err) = util::run("penctl", &args);
    assert!(
        rc == 0 && err.is_empty(),
        "penctl {args:?}: exit {rc}, stderr {err:?}, stdout {out:?}"
    );
    out
}

/// A control connection over TCP or a Unix socket.
enum CtlStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl CtlStream {
    fn try_clone(&self) -> CtlStream {
        match self {
            CtlStream::Tcp(s) => CtlStream::Tcp(s.try_clone().unwrap()),
            CtlStream::Unix(s) => CtlStream::Unix(s.try_clone().unwrap()),
        }
    }

    fn set_read_timeout(&self, t: Duration) {
        match self {
            CtlStream::Tcp(s) => s.set_read_timeout(Some(t)).unwrap(),
            CtlStream::Unix(s) => s.set_read_timeout(Some(t)).unwrap(),
        }
    }
}

impl Read for CtlStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            CtlStream::Tcp(s) => s.read(buf),
            CtlStream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for CtlStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            CtlStream::Tcp(s) => s.write(buf),
            CtlStream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads until EOF or an error; returns the bytes and the error, if any. A reset after
/// the reply still leaves the reply in the bytes (Linux queues data before the RST).
fn read_until_eof(r: &mut impl Read) -> (Vec<u8>, Option<io::Error>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (got, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (got, Some(e)),
        }
    }
}

/// Writes `msg` on a connection through pen and reads the backend's echo of it.
fn echo(s: &mut TcpStream, msg: &str) {
    s.write_all(msg.as_bytes()).unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(String::from_utf8_lossy(&got), msg);
}

/// The backend names that `n` connections from `from` land on, each closed at once.
fn lands(pen: SocketAddr, from: &str, n: usize) -> Vec<String> {
    (0..n).map(|_| which_from(from, pen)).collect()
}

/// A `servers` line (control.md §3.3 format).
fn server_line(i: usize, addr: &str, port: u16, rest: &str) -> String {
    format!("{i} addr {addr} port {port} {rest}\n")
}

/// Writes `text` to `path` atomically (a reader never sees half of it), world-readable.
fn put_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap();
    fs::set_permissions(&tmp, Permissions::from_mode(0o644)).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// Checks the layout of a status page (control.md §3.5) with the given number of server,
/// client and connection rows.
fn check_status(html: &str, servers: usize, clients: usize, conns: usize) {
    let head = "<html>\n<head>\n<title>Pen status page</title>\n</head>\n\
                <body bgcolor=\"#ffffff\"><h1>Pen status page</h1>\nTime ";
    assert!(html.starts_with(head), "status page head:\n{html}");
    let time_line = html[head.len()..].lines().next().unwrap();
    // `YYYY-MM-DD HH:MM:SS, N servers, K current<p>`
    let (time, rest) = time_line.split_at(19);
    assert!(is_local_time(time), "status time {time:?}");
    assert!(
        rest.starts_with(&format!(", {servers} servers, ")) && rest.ends_with(" current<p>"),
        "status header {time_line:?}"
    );
    assert!(
        html.ends_with("</table>\n</body>\n</html>\n"),
        "status tail:\n{html}"
    );
    assert!(html.contains("<h2>Active clients</h2>Max number of clients: "));
    assert!(html.contains("<h2>Active connections</h2>Number of connections: "));
    // Each table: a head row, then one row per item.
    assert_eq!(html.matches("<table bgcolor=\"#c0c0c0\">").count(), 3);
    assert_eq!(
        html.matches("<tr>\n").count(),
        3 + servers + clients + conns
    );
    assert_eq!(
        html.matches("<td bgcolor=\"#80f080\">").count(),
        11 + 7 + 7,
        "head cells"
    );
    let cells = html.matches("<td>").count();
    assert_eq!(cells, 11 * servers + 7 * clients + 7 * conns, "data cells");
}

/// `YYYY-MM-DD HH:MM:SS`.
fn is_local_time(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 19
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b' ',
            13 | 16 => c == b':',
            _ => c.is_ascii_digit(),
        })
}

/// The numbers in `connection N`'s five-line reply: (state, downfd, upfd, client, server,
/// pend), after checking the exact layout.
fn connection_block(reply: &str, n: usize) -> [i64; 6] {
    let lines: Vec<&str> = reply.lines().collect();
    assert!(
        reply.ends_with('\n') && lines.len() == 5,
        "connection reply {reply:?}"
    );
    assert_eq!(lines[0], format!("Connection {n}:"));
    let nums = |line: &str, pattern: &[&str]| -> Vec<i64> {
        let mut rest = line;
        let mut out = Vec::new();
        for (i, p) in pattern.iter().enumerate() {
            rest = rest
                .strip_prefix(p)
                .unwrap_or_else(|| panic!("{line:?}: expected {p:?}"));
            let end = rest
                .find(|c: char| c != '-' && !c.is_ascii_digit())
                .unwrap_or(rest.len());
            out.push(
                rest[..end]
                    .parse()
                    .unwrap_or_else(|_| panic!("number in {line:?}")),
            );
            rest = &rest[end..];
            if i + 1 == pattern.len() {
                assert!(rest.is_empty(), "trailing text in {line:?}");
            }
        }
        out
    };
    let st = nums(lines[1], &["state = "]);
    let fds = nums(lines[2], &["downfd = ", ", upfd = "]);
    let cs = nums(lines[3], &["client = ", ", server = "]);
    let pend = nums(lines[4], &["pend = "]);
    [st[0], fds[0], fds[1], cs[0], cs[1], pend[0]]
}

// ---- every command over each transport ----

/// Every command of the control language through penctl, with exact replies. pen was
/// started with `-b 20 -w DIR/web.html -l DIR/pen.log` and servers A, B `:10:20:3:4`.
fn tour(pen: &Pen, a: &NameServer, b: &NameServer) {
    let pid = pen.proc.pid();
    let (pa, pb) = (a.addr.port(), b.addr.port());
    assert_eq!(pen.cmd("pid"), format!("{pid}\n"));
    assert_eq!(pen.cmd("control"), format!("{}\n", pen.ctl));
    assert_eq!(pen.cmd("listen"), format!("{}\n", pen.addr));
    assert_eq!(
        pen.cmd("mode"),
        "no hash no roundrobin no stubborn no weight no prio\n"
    );
    let idle0 = "conn 0 max 0 hard 0 weight 0 prio 0 sx 0 rx 0";
    assert_eq!(
        pen.cmd("servers"),
        server_line(0, "127.0.0.1", pa, idle0)
            + &server_line(
                1,
                "127.0.0.1",
                pb,
                "conn 0 max 10 hard 20 weight 3 prio 4 sx 0 rx 0"
            )
    );

    // Settings that reply with their value (control.md §3.1).
    for (line, reply) in [
        ("blacklist", "20\n"),
        ("blacklist 7", "7\n"),
        ("blacklist", "7\n"),
        ("timeout", "3\n"),
        ("timeout 5", "5\n"),
        ("timeout", "5\n"),
        ("tracking", "0\n"),
        ("tracking 60", "60\n"),
        ("debug", "0\n"),
        ("debug 2", "2\n"),
        ("debug 0", "0\n"),
        ("clients_max", "2048\n"),
        ("clients_max 10", "2048\n"),
        ("conn_max", "500\n"),
        ("conn_max 600", "600\n"),
        ("conn_max 10", "600\n"),
        ("client_acl", "0\n"),
        ("control_acl", "0\n"),
        ("idlers", "Idlers: 0/0\n"),
        ("tarpit_acl", "tarpit_acl = -1"),
        ("idle_timeout", "Idle timeout: 0 seconds\n"),
    ] {
        assert_eq!(pen.cmd(line), reply, "penctl {line}");
    }
    assert_eq!(pen.cmd("log"), format!("{}\n", pen.path("pen.log")));
    assert_eq!(pen.cmd("web_stats"), format!("{}\n", pen.path("web.html")));

    // A connection held open: the first client goes to server 1 (pen.md §4.4).
    let (name, mut held) = hello_from("127.0.0.1", pen.addr);
    assert_eq!(name, "B");
    echo(&mut held, "ping\n");
    let [state, down, up, client, server, pend] = connection_block(&pen.cmd("connection 0"), 0);
    assert_eq!((state, client, server, pend), (2, 0, 1, 0));
    // downfd and upfd are pen's descriptors for the client and the backend.
    let (local, remote) = util::tcp_fd_addrs(pid, down as i32).expect("downfd is a TCP socket");
    assert_eq!((local, remote), (pen.addr, held.local_addr().unwrap()));
    let (_, remote) = util::tcp_fd_addrs(pid, up as i32).expect("upfd is a TCP socket");
    assert_eq!(remote, b.addr);
    for fd in [down, up] {
        assert_eq!(
            pen.cmd(&format!("socket {fd}")),
            format!("Socket {fd} belongs to connection 0\n")
        );
    }
    assert_eq!(
        pen.cmd("socket 99999"),
        "Socket 99999 belongs to connection -1\n"
    );
    assert_eq!(pen.cmd("connection 600"), "Connection 600 out of range\n");
    // "B\n" and the echo to the client, "ping\n" from it.
    assert_eq!(pen.cmd("recent"), "127.0.0.1 connects 1 sx 7 rx 5\n");
    assert_eq!(pen.cmd("recent 300"), "127.0.0.1 connects 1 sx 7 rx 5\n");
    assert_eq!(
        pen.cmd("servers"),
        server_line(0, "127.0.0.1", pa, idle0)
            + &server_line(
                1,
                "127.0.0.1",
                pb,
                "conn 1 max 10 hard 20 weight 3 prio 4 sx 5 rx 7"
            )
    );
    let st = pen.stats();
    for (k, v) in [
        ("connections_active", "1"),
        ("connections_accepted_total", "1"),
        ("clients_tracked", "1"),
        ("server.0.sent_bytes", "0"),
        ("server.0.received_bytes", "0"),
        ("server.1.sent_bytes", "5"),
        ("server.1.received_bytes", "7"),
        ("server.1.conns", "1"),
    ] {
        assert_eq!(st.get(k).map(String::as_str), Some(v), "stats {k}");
    }

    // status: the page, also written to the -w file.
    let html = pen.cmd("status");
    check_status(&html, 2, 1, 1);
    assert!(html.contains("Max number of clients: 2048<p>"), "{html}");
    assert!(
        html.contains("Number of connections: 600 max, 1 used, 0 last<p>"),
        "{html}"
    );
    assert!(html.contains(&format!(
        "<tr>\n<td>0</td>\n<td>{down}</td>\n<td>{up}</td>\n"
    )));
    assert_eq!(fs::read_to_string(pen.path("web.html")).unwrap(), html);

    // clients_max grows and keeps the clients.
    assert_eq!(pen.cmd("clients_max 4000"), "4000\n");
    assert_eq!(pen.cmd("recent"), "127.0.0.1 connects 1 sx 7 rx 5\n");

    // close: the client sees EOF; only live slots can be closed.
    assert_eq!(pen.cmd("close 0"), "Forcibly closing connection 0\n");
    let mut buf = [0u8; 16];
    assert_eq!(held.read(&mut buf).unwrap(), 0, "EOF after close");
    assert_eq!(connection_block(&pen.cmd("connection 0"), 0)[0], 0);
    assert_eq!(pen.cmd("close 0"), "connection 0 is not in use\n");
    assert_eq!(pen.cmd("close 700"), "Connection 700 out of range\n");
    assert_eq!(pen.stats()["connections_closed_total"], "1");

    // server N KEY VALUE…
    assert_eq!(pen.cmd("server 0 max 3 hard 4 weight 5 prio 6 acl 2"), "");
    let line0 = pen.cmd("servers").lines().next().unwrap().to_string();
    assert_eq!(
        line0,
        format!("0 addr 127.0.0.1 port {pa} conn 0 max 3 hard 4 weight 5 prio 6 sx 0 rx 0")
    );
    assert_eq!(pen.cmd("server 1 blacklist 5"), "");
    assert_eq!(pen.stats()["server.1.blacklisted"], "1");
    assert_eq!(pen.cmd("server 1 blacklist 0"), "");
    assert_eq!(pen.stats()["server.1.blacklisted"], "0");

    // log and web_stats set new targets.
    assert_eq!(
        pen.cmd(&format!("log {}", pen.path("other.log"))),
        format!("{}\n", pen.path("other.log"))
    );
    assert_eq!(pen.cmd("log"), format!("{}\n", pen.path("other.log")));
    assert_eq!(
        pen.cmd(&format!("web_stats {}", pen.path("other.html"))),
        format!("{}\n", pen.path("other.html"))
    );
    check_status(&pen.cmd("status"), 2, 1, 0);
    assert!(Path::new(&pen.path("other.html")).exists());

    // include FILE: comments and blank lines skipped, no reply to the client.
    put_file(
        &pen.dir.join("inc.cfg"),
        "# included\n\n   \ntracking 42\nserver 1 max 11\n",
    );
    assert_eq!(pen.cmd(&format!("include {}", pen.path("inc.cfg"))), "");
    assert_eq!(pen.cmd("tracking"), "42\n");
    assert!(pen.cmd("servers").contains(" max 11 hard 20 "));

    // write FILE.
    assert_eq!(pen.cmd(&format!("write {}", pen.path("saved.cfg"))), "");
    let saved = fs::read_to_string(pen.path("saved.cfg")).unwrap();
    for l in [
        "blacklist 7\n",
        "tracking 42\n",
        "timeout 5\n",
        "conn_max 600\n",
    ] {
        assert!(
            saved.contains(l),
            "{l:?} missing from written config:\n{saved}"
        );
    }

    // exit without -X, and an unknown command: pen keeps running.
    assert_eq!(
        pen.cmd("exit"),
        "Exit is not enabled; restart with -X flag\n"
    );
    assert_eq!(
        pen.cmd("frobnicate a b"),
        "do_cmd: ignoring command starting with 'frobnicate'\n"
    );
    assert_eq!(pen.cmd("pid"), format!("{pid}\n"));
    assert_eq!(which_from("127.0.0.1", pen.addr), "B");
}

fn tour_pen(test: &str, ctl: Ctl) -> (Pen, NameServer, NameServer) {
    let (a, b) = (NameServer::start("A"), NameServer::start("B"));
    let dir = test_dir(test);
    let pen = Pen::start(
        &dir,
        ctl,
        &["-b", "20", "-w", "{dir}/web.html", "-l", "{dir}/pen.log"],
        &[a.spec(), format!("{}:10:20:3:4", b.spec())],
    );
    (pen, a, b)
}

#[test]
fn every_command_over_tcp() {
    let (pen, a, b) = tour_pen("tour-v4", Ctl::V4);
    tour(&pen, &a, &b);
    assert!(Path::new(&pen.path("pen.log")).exists(), "-l file opened");
}

#[test]
fn every_command_over_ipv6() {
    if !ipv6() {
        eprintln!("skipped: ::1 cannot be bound here");
        return;
    }
    let (pen, a, b) = tour_pen("tour-v6", Ctl::V6);
    assert!(pen.ctl.starts_with("::1:"));
    tour(&pen, &a, &b);
    // The bracketed form of the target works too (an addition to the original's penctl).
    let port = pen.ctl.rsplit_once(':').unwrap().1;
    let pid = pen.proc.pid();
    assert_eq!(penctl(&format!("[::1]:{port}"), "pid"), format!("{pid}\n"));
    assert_eq!(
        penctl(&format!("[::1]:{port}"), "control"),
        format!("::1:{port}\n")
    );
}

#[test]
fn every_command_over_a_unix_socket() {
    let (pen, a, b) = tour_pen("tour-unix", Ctl::Unix);
    // Owner-only, unlike the original's umask-dependent mode (control.md §1.1).
    let meta = fs::metadata(&pen.ctl).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    tour(&pen, &a, &b);
}

// ---- live changes ----

/// A command that names a host has it looked up by pen's lookup thread, then applies as
/// if pen had looked it up itself; the session gets its reply then. (That the loop keeps
/// serving during a slow lookup is shown in lookup.rs with a slow stand-in name server:
/// these tests resolve no name but localhost.)
#[test]
fn a_named_server_address_is_looked_up_and_applied() {
    let (a, b) = (NameServer::start("A"), NameServer::start("B"));
    let dir = test_dir("named-address");
    let pen = Pen::start(&dir, Ctl::V4, &["-r"], &[a.spec(), b.spec()]);
    assert!(!util::threads(pen.proc.pid()).contains(&"pen-lookup".to_string()));
    assert_eq!(pen.cmd("server 0 address localhost"), "");
    // The lookup thread starts with the first command that needs it.
    assert!(util::threads(pen.proc.pid()).contains(&"pen-lookup".to_string()));
    let servers = pen.cmd("servers");
    let ip = servers
        .lines()
        .find_map(|l| l.strip_prefix("0 addr "))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_default()
        .to_string();
    assert!(
        ip == "127.0.0.1" || ip == "::1",
        "localhost became {ip:?}: {servers}"
    );
    let c = if ip == "::1" {
        NameServer::start_on("[::1]:0", "C")
    } else {
        NameServer::start("C")
    };
    assert_eq!(pen.cmd(&format!("server 0 port {}", c.addr.port())), "");
    let mut landed = lands(pen.addr, "127.0.0.2", 2);
    landed.sort();
    assert_eq!(landed, ["B", "C"]);
    // The same name again, with the port in the same command, from an included file.
    let inc = dir.join("names.cfg");
    let text = format!("server 1 address localhost port {}\n", c.addr.port());
    fs::write(&inc, text).unwrap();
    assert_eq!(pen.cmd(&format!("include {}", inc.display())), "");
    assert_eq!(lands(pen.addr, "127.0.0.2", 2), ["C", "C"]);
}

/// `include` reads its file off the loop: one that is slow to read (here a FIFO with no
/// writer yet) holds up neither traffic nor other control commands.
#[test]
fn an_include_that_is_slow_to_read_holds_up_nothing_else() {
    let a = NameServer::start("A");
    let dir = test_dir("include-fifo");
    let pen = Pen::start(&dir, Ctl::V4, &[], &[a.spec()]);
    let fifo = dir.join("slow.cfg");
    util::mkfifo(&fifo);

    let (ctl, line) = (pen.ctl.clone(), format!("include {}", fifo.display()));
    let include = thread::spawn(move || penctl(&ctl, &line));
    // The command reached pen, which handed it to its worker thread...
    util::wait_until("the pen-lookup thread", || {
        util::threads(pen.proc.pid()).contains(&"pen-lookup".to_string())
    });
    // ... and serves on while the file has no writer.
    assert_eq!(which_from("127.0.0.2", pen.addr), "A");
    assert_eq!(pen.cmd("timeout"), "3\n");

    fs::write(&fifo, "timeout 7\n").unwrap();
    assert_eq!(include.join().unwrap(), "");
    assert_eq!(pen.cmd("timeout"), "7\n");
}

#[test]
fn server_commands_change_live_servers() {
    let (a, b, c) = (
        NameServer::start("A"),
        NameServer::start("B"),
        NameServer::start("C"),
    );
    let dir = test_dir("server-cmds");
    let pen = Pen::start(&dir, Ctl::V4, &["-r"], &[a.spec(), b.spec()]);
    let at = pen.addr;
    // Round robin starts after the cursor (pen.md §4.4).
    assert_eq!(lands(at, "127.0.0.2", 4), ["B", "A", "B", "A"]);

    // blacklist T skips the server; 0 clears it.
    assert_eq!(pen.cmd("server 0 blacklist 5"), "");
    let st = pen.stats();
    assert_eq!(st["server.0.blacklisted"], "1");
    let left: i64 = st["server.0.blacklist_remaining_seconds"].parse().unwrap();
    assert!((4..=5).contains(&left), "remaining {left}");
    assert_eq!(lands(at, "127.0.0.2", 4), ["B", "B", "B", "B"]);
    assert_eq!(pen.cmd("server 0 blacklist 0"), "");
    assert_eq!(lands(at, "127.0.0.2", 4), ["A", "B", "A", "B"]);

    // port: traffic goes to the new backend at once.
    assert_eq!(pen.cmd(&format!("server 1 port {}", c.addr.port())), "");
    assert_eq!(lands(at, "127.0.0.2", 2), ["A", "C"]);
    let mut second = "C";

    // address (and the family) then port.
    let d = ipv6().then(|| NameServer::start_on("[::1]:0", "D"));
    if let Some(d) = &d {
        let cmd = format!("server 1 address ::1 port {}", d.addr.port());
        assert_eq!(pen.cmd(&cmd), "");
        assert!(pen
            .cmd("servers")
            .contains(&format!("\n1 addr ::1 port {} ", d.addr.port())));
        assert_eq!(lands(at, "127.0.0.2", 2), ["A", "D"]);
        second = "D";
    }

    // acl: server 0 refuses clients its ACL denies; they fail over.
    assert_eq!(pen.cmd("acl 1 deny 127.0.0.2"), "");
    assert_eq!(pen.cmd("server 0 acl 1"), "");
    assert_eq!(lands(at, "127.0.0.2", 4), [second; 4]);
    assert!(lands(at, "127.0.0.3", 2).contains(&"A".to_string()));
    assert_eq!(pen.cmd("server 0 acl 0"), "");

    // max/hard: while server 0 holds its one connection, it is skipped.
    assert_eq!(pen.cmd("server 0 max 1 hard 1"), "");
    let mut held = Vec::new();
    while !held.iter().any(|(n, _): &(String, TcpStream)| n == "A") {
        assert!(held.len() < 3, "never landed on A");
        held.push(hello_from("127.0.0.3", at));
    }
    assert_eq!(lands(at, "127.0.0.2", 4), [second; 4]);
    drop(held);
    util::wait_until("server 0 to have no connection", || {
        pen.stats()["server.0.conns"] == "0"
    });
    assert!(lands(at, "127.0.0.2", 2).contains(&"A".to_string()));
    // No limits below: a connection closed by the client may still count for a moment.
    assert_eq!(pen.cmd("server 0 max 0 hard 0"), "");

    // weight: only servers with a weight are used in weight mode.
    assert_eq!(pen.cmd("weight"), "");
    assert_eq!(
        pen.cmd("mode"),
        "no hash roundrobin no stubborn weight no prio\n"
    );
    assert_eq!(pen.cmd("server 0 weight 1"), "");
    assert_eq!(lands(at, "127.0.0.2", 3), ["A"; 3]);
    assert_eq!(pen.cmd("server 0 weight 0 weight 0"), "");
    assert_eq!(pen.cmd("server 1 weight 2"), "");
    assert_eq!(lands(at, "127.0.0.2", 3), [second; 3]);
    assert_eq!(pen.cmd("no weight"), "");

    // prio: the lowest wins.
    assert_eq!(pen.cmd("prio"), "");
    assert_eq!(pen.cmd("server 0 prio 1"), "");
    assert_eq!(pen.cmd("server 1 prio 5"), "");
    assert_eq!(lands(at, "127.0.0.2", 3), ["A"; 3]);
    assert_eq!(pen.cmd("server 0 prio 9"), "");
    assert_eq!(lands(at, "127.0.0.2", 3), [second; 3]);
    assert_eq!(
        pen.cmd("mode"),
        "no hash roundrobin no stubborn no weight prio\n"
    );

    // The table shows every value; rx counts the backend's greeting, "A\n", per connection.
    let rx = 2 * a.accepted.load(std::sync::atomic::Ordering::SeqCst);
    let want = format!(
        "0 addr 127.0.0.1 port {} conn 0 max 0 hard 0 weight 0 prio 9 sx 0 rx {rx}",
        a.addr.port()
    );
    util::wait_until("servers to settle", || {
        pen.cmd("servers").lines().next() == Some(want.as_str())
    });
}

#[test]
fn listen_rebinds_the_live_listener() {
    let a = NameServer::start("A");
    let dir = test_dir("listen");
    let pen = Pen::start(&dir, Ctl::V4, &[], &[a.spec()]);
    let old = pen.addr;
    let (name, mut held) = hello_from("127.0.0.1", old);
    assert_eq!(name, "A");
    echo(&mut held, "before\n");

    // listen ADDR:PORT: the new port serves, the old one is closed, the held connection
    // goes on.
    let new = rebind(&pen, |p| format!("127.0.0.1:{p}"), util::free_port);
    assert_eq!(pen.cmd("listen"), format!("{new}\n"));
    let new: SocketAddr = new.parse().unwrap();
    assert_eq!(which_from("127.0.0.1", new), "A");
    let refused = TcpStream::connect(old).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    echo(&mut held, "after\n");

    // A port that is taken: an error line, and the current listener stays.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = busy.local_addr().unwrap().to_string();
    let reply = pen.cmd(&format!("listen {spec}"));
    assert!(
        reply.ends_with('\n') && reply.lines().count() == 1 && reply.contains("in use"),
        "{reply:?}"
    );
    assert_eq!(pen.cmd("listen"), format!("{new}\n"));
    assert_eq!(which_from("127.0.0.1", new), "A");

    // listen ::1:PORT (last-colon split, control.md §1.1).
    if ipv6() {
        let v6 = rebind(&pen, |p| format!("::1:{p}"), free_port6);
        let port: u16 = v6.rsplit_once(':').unwrap().1.parse().unwrap();
        let at = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
        let s = TcpStream::connect(at).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        assert_eq!(line, "A\n");
        assert_eq!(
            TcpStream::connect(new).unwrap_err().kind(),
            ErrorKind::ConnectionRefused
        );
    }
    echo(&mut held, "still\n");
    assert_eq!(pen.stats()["connections_active"], "1");
}

/// `listen SPEC` on a free port (retrying if it was taken meanwhile); returns the spec.
fn rebind(pen: &Pen, spec: impl Fn(u16) -> String, port: impl Fn() -> u16) -> String {
    for _ in 0..5 {
        let s = spec(port());
        let reply = pen.cmd(&format!("listen {s}"));
        if reply == format!("{s}\n") {
            return s;
        }
        assert!(reply.contains("in use"), "listen {s}: {reply:?}");
    }
    panic!("no free port to listen on");
}

// ---- configuration files ----

#[test]
fn config_file_then_hup_without_dropping_connections() {
    let (a, b, c) = (
        NameServer::start("A"),
        NameServer::start("B"),
        NameServer::start("C"),
    );
    let dir = test_dir("config-hup");
    let cfg = dir.join("pen.cfg");
    put_file(&dir.join("more.cfg"), "timeout 4\n");
    let pc = c.addr.port();
    let first = format!(
        "# pen.cfg: a comment\n\
         \n\
         blacklist 9\n   \n\
         # server 0 is overwritten by the command line at startup (control.md §5.2)\n\
         server 0 max 5 hard 6\n\
         server 2 address 127.0.0.1 port {pc} max 2\n\
         acl 3 deny 10.0.0.1\n\
         include {}\n\
         tracking 11\n",
        dir.join("more.cfg").display()
    );
    put_file(&cfg, &first);
    let pen = Pen::start(
        &dir,
        Ctl::V4,
        &["-b", "4", "-F", "{dir}/pen.cfg"],
        &[a.spec(), b.spec()],
    );
    // The file is read after the command line: its value wins over -b.
    assert_eq!(pen.cmd("blacklist"), "9\n");
    assert_eq!(pen.cmd("tracking"), "11\n");
    assert_eq!(pen.cmd("timeout"), "4\n", "from the included file");
    let (pa, pb) = (a.addr.port(), b.addr.port());
    let idle = "conn 0 max 0 hard 0 weight 0 prio 0 sx 0 rx 0";
    assert_eq!(
        pen.cmd("servers"),
        server_line(0, "127.0.0.1", pa, idle)
            + &server_line(1, "127.0.0.1", pb, idle)
            + &server_line(
                2,
                "127.0.0.1",
                pc,
                "conn 0 max 2 hard 0 weight 0 prio 0 sx 0 rx 0"
            )
    );

    // A connection held across the reload.
    let (name, mut held) = hello_from("127.0.0.1", pen.addr);
    assert_eq!(name, "B");
    echo(&mut held, "before\n");

    put_file(
        &cfg,
        &first
            .replace("blacklist 9", "blacklist 12")
            .replace("tracking 11", "# tracking removed: it keeps its value\n"),
    );
    pen.proc.signal(libc::SIGHUP);
    util::wait_until("HUP to apply blacklist 12", || {
        pen.cmd("blacklist") == "12\n"
    });
    assert_eq!(pen.cmd("tracking"), "11\n");
    // Now the file's server 0 settings apply, and the held connection is still counted.
    assert_eq!(
        pen.cmd("servers"),
        server_line(
            0,
            "127.0.0.1",
            pa,
            "conn 0 max 5 hard 6 weight 0 prio 0 sx 0 rx 0"
        ) + &server_line(
            1,
            "127.0.0.1",
            pb,
            "conn 1 max 0 hard 0 weight 0 prio 0 sx 7 rx 9"
        ) + &server_line(
            2,
            "127.0.0.1",
            pc,
            "conn 0 max 2 hard 0 weight 0 prio 0 sx 0 rx 0"
        )
    );
    echo(&mut held, "after\n");
    let st = pen.stats();
    assert_eq!(
        (
            st["connections_active"].as_str(),
            st["connections_closed_total"].as_str()
        ),
        ("1", "0")
    );

    // A second HUP does not append the file's ACL again (control.md §5.3).
    pen.proc.signal(libc::SIGHUP);
    assert_eq!(pen.cmd(&format!("write {}", pen.path("w.cfg"))), "");
    let written = fs::read_to_string(pen.path("w.cfg")).unwrap();
    assert_eq!(
        written
            .lines()
            .filter(|l| l.starts_with("acl 3 "))
            .collect::<Vec<_>>(),
        ["acl 3 deny 10.0.0.1 255.255.255.255"]
    );
    echo(&mut held, "still\n");
}

#[test]
fn write_then_start_from_the_written_file() {
    let (a, b, c) = (
        NameServer::start("A"),
        NameServer::start("B"),
        NameServer::start("C"),
    );
    let dir = test_dir("write-round-trip");
    let pc = c.addr.port();
    let slot2 = format!("server 2 address 127.0.0.1 port {pc} acl 1 max 3");
    let first = Pen::start(
        &dir,
        Ctl::V4,
        &[
            "-r",
            "-h",
            "-W",
            "-b",
            "17",
            "-T",
            "30",
            "-t",
            "6",
            "-c",
            "3000",
            "-x",
            "700",
            "-O",
            "acl 1 deny 127.0.0.9",
            "-O",
            "acl 2 permit ::1/128",
            "-O",
            &slot2,
            "-O",
            "tcp_fastclose both",
            "-O",
            "prio",
            "-O",
            "idle_timeout 40",
        ],
        &[
            format!("{}:1:2:3:4", a.spec()),
            format!("{}:5:6:7:8", b.spec()),
        ],
    );
    // Live changes are saved too, an empty slot included.
    assert_eq!(first.cmd("server 1 weight 9"), "");
    assert_eq!(first.cmd("server 4 max 1"), "");
    assert_eq!(first.cmd("stubborn"), "");
    let saved = first.path("saved.cfg");
    assert_eq!(first.cmd(&format!("write {saved}")), "");
    let text = fs::read_to_string(&saved).unwrap();
    assert!(
        text.contains("\nserver 4 acl 0 max 1 hard 0 weight 0 prio 0\n"),
        "{text}"
    );
    fs::set_permissions(&saved, Permissions::from_mode(0o644)).unwrap();

    // Only the listen port (a different one) on the second pen's command line.
    let second = Pen::start(&dir, Ctl::V4, &["-F", &saved], &[]);
    assert_ne!(second.addr, first.addr);
    for q in [
        "servers",
        "mode",
        "blacklist",
        "tracking",
        "timeout",
        "clients_max",
        "conn_max",
        "idle_timeout",
        "client_acl",
        "control_acl",
    ] {
        assert_eq!(second.cmd(q), first.cmd(q), "penctl {q}");
    }
    assert_eq!(second.cmd("mode"), "hash roundrobin stubborn weight prio\n");
    assert!(second.cmd("servers").contains(&format!(
        "\n2 addr 127.0.0.1 port {pc} conn 0 max 3 hard 0 weight 0 prio 0 sx 0 rx 0\n"
    )));
    assert!(second.cmd("servers").ends_with(
        "\n4 addr (unknown address family 0 port 0 conn 0 max 1 hard 0 weight 0 prio 0 sx 0 rx 0\n"
    ));

    // `write` with no file overwrites the -F file; apart from the header and the restart
    // comment (other listen and control ports) it is the same config.
    assert_eq!(second.cmd("write"), "");
    let again = fs::read_to_string(&saved).unwrap();
    let body = |t: &str| t.lines().skip(2).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(body(&again), body(&text));
    let comment = again.lines().nth(1).unwrap();
    assert!(
        comment.ends_with(&format!(" -F '{saved}' -C {} {}", second.ctl, second.addr)),
        "{comment}"
    );
}

/// control.md §5.4's captured `write` output, with `{…}` for what differs per run.
const WRITE_CAPTURE: &str = "\
# Generated by pen {time}
# pen -f -X -p '{dir}/pen.pid'{user} -F '{dir}/written.cfg' -C {ctl} {listen}
no acl 0
no acl 1
acl 1 permit 127.0.0.1 255.255.255.255
acl 1 deny 10.0.0.0 255.0.0.0
no acl 2
acl 2 permit ::1/128
acl 2 deny fd00::/8
no acl 3
acl 3 permit country SE
no acl 4
no acl 5
no acl 6
no acl 7
no acl 8
no acl 9
no ascii
blacklist 20
client_acl 0
control_acl 0
debug 0
no hash
no http
log {dir}/pen.log
no roundrobin
server 0 acl 0 address 127.0.0.1 port {pa} max 0 hard 0
server 1 acl 1 address 127.0.0.1 port {pb} max 10 hard 20
no stubborn
tcp_fastclose up
no tcp_nodelay
timeout 3
tracking 0
web_stats {dir}/web.html
no weight
no prio
";

#[test]
fn write_emits_the_original_lines_in_the_original_order() {
    let (a, b) = (NameServer::start("A"), NameServer::start("B"));
    let dir = test_dir("write-format");
    put_file(
        &dir.join("pen.cfg"),
        &format!(
            "acl 1 permit 127.0.0.1 255.255.255.255\n\
             acl 1 deny 10.0.0.0 255.0.0.0\n\
             acl 2 permit ::1/128\n\
             acl 2 deny fd00::/8\n\
             acl 3 permit country SE\n\
             blacklist 20\n\
             log {0}/pen.log\n\
             server 1 acl 1\n\
             tcp_fastclose up\n\
             web_stats {0}/web.html\n",
            dir.display()
        ),
    );
    let pen = Pen::start(
        &dir,
        Ctl::V4,
        &["-X", "-p", "{dir}/pen.pid", "-F", "{dir}/pen.cfg"],
        &[a.spec(), format!("{}:10:20", b.spec())],
    );
    assert_eq!(pen.cmd(&format!("write {}", pen.path("written.cfg"))), "");
    let got = fs::read_to_string(pen.path("written.cfg")).unwrap();
    let got: Vec<&str> = got.lines().collect();

    let header = got[0].strip_prefix("# Generated by pen ").expect("header");
    assert!(is_local_time(header), "{header:?}");
    // pen's -u comes before -F in the restart comment, as the original's.
    let user = if as_root() { " -u 'nobody'" } else { "" };
    let want = WRITE_CAPTURE
        .replace("{time}", header)
        .replace("{dir}", &dir.display().to_string())
        .replace("{user}", user)
        .replace("{ctl}", &pen.ctl)
        .replace("{listen}", &pen.addr.to_string())
        .replace("{pa}", &a.addr.port().to_string())
        .replace("{pb}", &b.addr.port().to_string());
    // Our additions (pen/src/command/write.rs): every server line carries its weight and
    // prio, and a block of settings the original never saved follows its last line.
    let want: Vec<String> = want
        .lines()
        .map(|l| {
            if l.starts_with("server ") {
                format!("{l} weight 0 prio 0")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_eq!(got[..want.len()], want[..]);
    assert_eq!(
        got[want.len()..],
        [
            "idle_timeout 0",
            "pending_max 100",
            "no keepalive",
            "no transparent",
            "no source",
            "multi_accept 100",
            "conn_max 500",
            "clients_max 2048",
        ]
    );
}

// ---- exit, Prometheus ----

#[test]
fn exit_needs_dash_x() {
    let a = NameServer::start("A");
    let dir = test_dir("exit");
    let pen = Pen::start(&dir, Ctl::V4, &["-p", "{dir}/pen.pid"], &[a.spec()]);
    assert_eq!(
        pen.cmd("exit"),
        "Exit is not enabled; restart with -X flag\n"
    );
    assert_eq!(which_from("127.0.0.1", pen.addr), "A");

    let mut pen = Pen::start(
        &dir,
        Ctl::Unix,
        &["-X", "-p", "{dir}/pen2.pid"],
        &[a.spec()],
    );
    let pidfile = dir.join("pen2.pid");
    util::wait_for_file(&pidfile);
    let (_, mut held) = hello_from("127.0.0.1", pen.addr);
    assert_eq!(pen.cmd("exit"), "");
    assert_eq!(pen.proc.wait_exit(DEADLINE), Some(0));
    assert!(!pidfile.exists(), "pidfile removed on exit");
    let mut buf = [0u8; 8];
    assert_eq!(
        held.read(&mut buf).unwrap_or(0),
        0,
        "connections closed on exit"
    );
}

#[test]
fn prometheus_metrics_only_when_asked_for() {
    let a = NameServer::start("A");
    let dir = test_dir("prometheus");
    // Off by default: pen listens on its port and its control socket, nothing else.
    let plain = Pen::start(&dir, Ctl::V4, &[], &[a.spec()]);
    let ctl: SocketAddr = plain.ctl.parse().unwrap();
    let mut want = vec![plain.addr, ctl];
    want.sort();
    assert_eq!(util::tcp_listeners(plain.proc.pid()), want);
    assert_eq!(plain.cmd("prometheus"), "");

    let pen = Pen::start(
        &dir,
        Ctl::V4,
        &["-O", "prometheus 127.0.0.1:{port2}"],
        &[a.spec()],
    );
    let metrics = SocketAddr::from(([127, 0, 0, 1], pen.port2));
    assert_eq!(pen.cmd("prometheus"), format!("{metrics}\n"));
    assert!(util::tcp_listeners(pen.proc.pid()).contains(&metrics));
    let (_, mut s) = hello_from("127.0.0.2", pen.addr);
    echo(&mut s, "12345\n");

    let mut m = TcpStream::connect(metrics).unwrap();
    m.set_read_timeout(Some(DEADLINE)).unwrap();
    m.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let (resp, err) = read_until_eof(&mut m);
    assert!(err.is_none(), "{err:?}");
    let resp = String::from_utf8(resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP head");
    let mut head = head.lines();
    assert_eq!(head.next(), Some("HTTP/1.0 200 OK"));
    let headers: Vec<&str> = head.collect();
    assert!(
        headers.contains(&"Content-Type: text/plain; version=0.0.4"),
        "{headers:?}"
    );
    assert!(headers.contains(&format!("Content-Length: {}", body.len()).as_str()));
    assert!(
        body.contains("# TYPE pen_connections_accepted_total counter\n"),
        "{body}"
    );
    assert!(
        body.lines()
            .any(|l| l == "pen_connections_accepted_total 1"),
        "{body}"
    );
    assert!(
        body.lines().any(|l| l == "pen_connections_active 1"),
        "{body}"
    );
    for l in body.lines() {
        if let Some(rest) = l.strip_prefix("# ") {
            assert!(
                rest.starts_with("HELP pen_") || rest.starts_with("TYPE pen_"),
                "{l}"
            );
        } else {
            let (name, value) = l.rsplit_once(' ').unwrap();
            assert!(name.starts_with("pen_"), "{l}");
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
    }
    // Per-server samples carry the server's index and address.
    let a_sent = format!("{{server=\"0\",address=\"{}\"}} 6", a.addr);
    assert!(body.lines().any(|l| l.ends_with(&a_sent)), "{body}");
}

// ---- compatibility: the captured replies of control.md ----

#[test]
fn replies_match_the_captured_formats() {
    let (a, b) = (NameServer::start("A"), NameServer::start("B"));
    let dir = test_dir("compat");
    let pen = Pen::start(
        &dir,
        Ctl::V4,
        &[],
        &[a.spec(), format!("{}:10:20:3:4", b.spec())],
    );
    let (pa, pb) = (a.addr.port(), b.addr.port());

    // servers (§3.3): `%d addr %s port %d conn %d max %d hard %d weight %d prio %d sx %llu
    // rx %llu`, a Unix server with port 1, IPv6 bare, an empty slot as the original.
    assert_eq!(pen.cmd("server 4 port 80"), "");
    assert_eq!(pen.cmd(&format!("server 3 address ::1 port {pa}")), "");
    assert_eq!(
        pen.cmd(&format!("server 2 address {}/sock", dir.display())),
        ""
    );
    let idle = "conn 0 max 0 hard 0 weight 0 prio 0 sx 0 rx 0";
    assert_eq!(
        pen.cmd("servers"),
        [
            format!("0 addr 127.0.0.1 port {pa} {idle}\n"),
            format!("1 addr 127.0.0.1 port {pb} conn 0 max 10 hard 20 weight 3 prio 4 sx 0 rx 0\n"),
            format!("2 addr {}/sock port 1 {idle}\n", dir.display()),
            format!("3 addr ::1 port {pa} {idle}\n"),
            format!("4 addr (unknown address family 0 port 0 {idle}\n"),
        ]
        .concat()
    );

    // mode (§3.2): five flags, always in this order.
    assert_eq!(
        pen.cmd("mode"),
        "no hash no roundrobin no stubborn no weight no prio\n"
    );
    for f in ["prio", "weight", "stubborn", "roundrobin", "hash"] {
        assert_eq!(pen.cmd(f), "");
    }
    assert_eq!(pen.cmd("mode"), "hash roundrobin stubborn weight prio\n");
    for f in ["hash", "roundrobin", "stubborn", "weight", "prio"] {
        assert_eq!(pen.cmd(&format!("no {f}")), "");
    }

    // connection (§3.4): five lines while a request is held open.
    let (name, mut held) = hello_from("127.0.0.1", pen.addr);
    assert_eq!(name, "B");
    echo(&mut held, "GET / HTTP/1.0\r\n");
    let reply = pen.cmd("connection 0");
    let [_, down, up, ..] = connection_block(&reply, 0);
    assert_eq!(
        reply,
        format!("Connection 0:\nstate = 2\ndownfd = {down}, upfd = {up}\nclient = 0, server = 1\npend = 0\n")
    );
    assert_eq!(pen.cmd("connection 500"), "Connection 500 out of range\n");
    assert_eq!(
        pen.cmd(&format!("socket {down}")),
        format!("Socket {down} belongs to connection 0\n")
    );
    assert_eq!(
        pen.cmd("socket 99999"),
        "Socket 99999 belongs to connection -1\n"
    );
    // recent (§3.4): `%s connects %ld sx %lld rx %lld`.
    assert_eq!(pen.cmd("recent"), "127.0.0.1 connects 1 sx 18 rx 16\n");
    assert_eq!(pen.cmd("close 5"), "connection 5 is not in use\n");
    assert_eq!(pen.cmd("close 700"), "Connection 700 out of range\n");
    assert_eq!(pen.cmd("close 0"), "Forcibly closing connection 0\n");

    // The settings of §3.1 with their odd formats.
    assert_eq!(pen.cmd("tarpit_acl"), "tarpit_acl = -1", "no newline");
    assert_eq!(pen.cmd("tarpit_acl 3"), "tarpit_acl = 3");
    assert_eq!(pen.cmd("idle_timeout"), "Idle timeout: 0 seconds\n");
    assert_eq!(pen.cmd("idle_timeout 7"), "Idle timeout: 7 seconds\n");
    assert_eq!(pen.cmd("idlers"), "Idlers: 0/0\n");
    assert_eq!(pen.cmd("clients_max 10"), "2048\n");
    assert_eq!(pen.cmd("clients_max 4000"), "4000\n");
    assert_eq!(pen.cmd("conn_max 600"), "600\n");
    assert_eq!(pen.cmd("blacklist -5"), "-5\n");
    assert_eq!(
        pen.cmd("tcp_fastclose"),
        "do_cmd: ignoring tcp_fastclose without argument\n"
    );
    assert_eq!(pen.cmd("status"), "Unable to create webstats\n");
    assert_eq!(
        pen.cmd("exit"),
        "Exit is not enabled; restart with -X flag\n"
    );

    // Unknown and ignored input (§4).
    assert_eq!(
        pen.cmd("frobnicate a b"),
        "do_cmd: ignoring command starting with 'frobnicate'\n"
    );
    assert_eq!(
        pen.cmd("MODE"),
        "do_cmd: ignoring command starting with 'MODE'\n"
    );
    assert_eq!(pen.cmd("# hello"), "");
    assert_eq!(pen.cmd("no frob"), "");
    let (rc, out, _) = util::run("penctl", &[&pen.ctl, " mode"]);
    assert_eq!(
        (rc, out.as_str()),
        (0, "no hash no roundrobin no stubborn no weight no prio\n")
    );
    let pid = pen.proc.pid();
    assert_eq!(
        pen.raw(b"pid\ndebug\n"),
        format!("{pid}\n").as_bytes(),
        "second line ignored"
    );
    assert_eq!(pen.raw(b"pid\r\n"), format!("{pid}\n").as_bytes());
    assert_eq!(
        pen.raw(b"mode"),
        b"no hash no roundrobin no stubborn no weight no prio\n",
        "no newline needed"
    );
    assert_eq!(
        pen.raw(b"blacklist\t5\n"),
        b"do_cmd: ignoring command starting with 'blacklist\t5'\n",
        "a TAB is not a separator"
    );
    assert_eq!(pen.cmd("blacklist"), "-5\n");
}

// ---- bad input ----

#[test]
fn bad_input_gets_one_error_line_and_traffic_goes_on() {
    let a = NameServer::start("A");
    let dir = test_dir("bad-input");
    let pen = Pen::start(&dir, Ctl::V4, &[], &[a.spec()]);
    // A client that connects and says nothing is cut off by the session deadline.
    let mut silent = pen.connect_ctl();
    silent.set_read_timeout(Duration::from_secs(30));
    let silent_since = Instant::now();

    for (line, reply) in [
        (
            "frobnicate",
            "do_cmd: ignoring command starting with 'frobnicate'",
        ),
        ("server 0 max", "server: missing value after 'max'"),
        (
            "server 0 frob 1",
            "server: expected address, port, max, hard, weight, prio, blacklist or acl, got 'frob'",
        ),
        ("server 99999 max 1", "server 99999 out of range (0..65535)"),
        (
            "server -1 max 1",
            "server: expected a server number of at least 0, got '-1'",
        ),
        (
            "server 0 port 70000",
            "server: expected a port from 1 to 65535 or a service name, got '70000'",
        ),
        (
            "timeout -1",
            "timeout: expected a number of seconds of at least 1, got '-1'",
        ),
        (
            "timeout 0",
            "timeout: expected a number of seconds of at least 1, got '0'",
        ),
        (
            "conn_max 999999999",
            "conn_max: expected a number from 1 to 1000000, got '999999999'",
        ),
        (
            "client_acl 12",
            "client_acl: expected an ACL number from 0 to 9, got '12'",
        ),
        ("blacklist abc", "blacklist: expected a number, got 'abc'"),
        ("blacklist 12x", "blacklist: expected a number, got '12x'"),
        (
            "blacklist 99999999999",
            "blacklist: expected a number, got '99999999999'",
        ),
        ("include", "include: missing file name"),
        ("source", "source: missing address"),
        ("no acl", "no acl: missing ACL number"),
        (
            "acl 1 permit 10.0.0.0/33",
            "acl: expected a prefix length from 0 to 32, got '10.0.0.0/33'",
        ),
        (
            "connection x",
            "connection: expected a connection number, got 'x'",
        ),
    ] {
        assert_eq!(pen.cmd(line), format!("{reply}\n"), "penctl {line}");
        assert_eq!(
            which_from("127.0.0.2", pen.addr),
            "A",
            "traffic after {line:?}"
        );
    }
    // Commands that are well formed but cannot be carried out.
    let missing = pen.path("missing");
    for (line, reply) in [
        (
            "write".to_string(),
            "write: no file given and no -F file to overwrite".to_string(),
        ),
        (
            format!("write {missing}/x.cfg"),
            format!("write {missing}/x.cfg: No such file or directory (os error 2)"),
        ),
        (
            format!("include {missing}.cfg"),
            format!(
                "{missing}.cfg: can't read config file: No such file or directory (os error 2)"
            ),
        ),
        (
            format!("log {missing}/x.log"),
            format!("can't open logfile '{missing}/x.log': No such file or directory (os error 2)"),
        ),
        (
            "listen 127.0.0.1:99999".to_string(),
            "bad address '127.0.0.1:99999': port 99999 out of range".to_string(),
        ),
        (
            "idlers 3".to_string(),
            "idlers 3: idle backend connections are not supported".to_string(),
        ),
        (
            "prometheus 127.0.0.1:9".to_string(),
            "prometheus: set the metrics listener at startup (-O or -F)".to_string(),
        ),
    ] {
        assert_eq!(pen.cmd(&line), format!("{reply}\n"), "penctl {line}");
    }
    assert_eq!(pen.cmd("listen"), format!("{}\n", pen.addr));
    assert_eq!(pen.cmd("log"), "");
    assert_eq!(which_from("127.0.0.2", pen.addr), "A");
    // Nothing was changed by the bad commands.
    assert_eq!(pen.cmd("timeout"), "3\n");
    assert_eq!(pen.cmd("conn_max"), "500\n");
    assert_eq!(pen.cmd("client_acl"), "0\n");
    assert_eq!(pen.cmd("servers").lines().count(), 1);

    // Bytes that are not UTF-8.
    assert_eq!(
        pen.raw(b"mode \xff\xfe\n"),
        b"command is not valid UTF-8 (byte 5)\n"
    );
    assert_eq!(which_from("127.0.0.2", pen.addr), "A");

    // A 1 MB line: one error line once the limit is passed; pen does not read the rest.
    let mut s = pen.connect_ctl();
    let mut w = s.try_clone();
    let writer = thread::spawn(move || {
        let _ = w.write_all(&vec![b'x'; 1 << 20]);
    });
    let (got, _) = read_until_eof(&mut s);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "command line too long (max 4095 bytes)\n"
    );
    drop(s);
    writer.join().unwrap();
    assert_eq!(which_from("127.0.0.2", pen.addr), "A");
    assert_eq!(pen.cmd("pid"), format!("{}\n", pen.proc.pid()));

    // The silent client: no reply, closed after the session timeout (10 s), not before.
    let (got, err) = read_until_eof(&mut silent);
    let waited = silent_since.elapsed();
    assert!(got.is_empty() && err.is_none(), "{got:?} {err:?}");
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(20),
        "silent control client closed after {waited:?}"
    );
}

#[test]
fn a_long_line_on_the_unix_socket_too() {
    let a = NameServer::start("A");
    let dir = test_dir("bad-input-unix");
    let pen = Pen::start(&dir, Ctl::Unix, &[], &[a.spec()]);
    let mut s = pen.connect_ctl();
    let mut w = s.try_clone();
    let writer = thread::spawn(move || {
        let _ = w.write_all(&vec![b'y'; 1 << 20]);
    });
    let (got, _) = read_until_eof(&mut s);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "command line too long (max 4095 bytes)\n"
    );
    drop(s);
    writer.join().unwrap();
    assert_eq!(
        pen.raw(b"\xc3\x28\n"),
        b"command is not valid UTF-8 (byte 0)\n"
    );
    assert_eq!(
        pen.cmd("timeout -1"),
        "timeout: expected a number of seconds of at least 1, got '-1'\n"
    );
    assert_eq!(which_from("127.0.0.2", pen.addr), "A");
}

#[test]
fn traffic_flows_while_the_control_socket_is_abused() {
    let a = NameServer::start("A");
    let dir = test_dir("abuse");
    // A Unix control socket: its fixed, small socket buffers make sure that a reply of
    // 1.4 MB really stalls when its client does not read.
    let pen = Pen::start(&dir, Ctl::Unix, &[], &[a.spec()]);
    assert_eq!(pen.cmd("server 20000 max 1"), "");
    let mut hog = pen.connect_ctl();
    hog.write_all(b"servers\n").unwrap();
    // Silent clients, and one that sent half a command.
    let silent: Vec<CtlStream> = (0..10).map(|_| pen.connect_ctl()).collect();
    let mut half = pen.connect_ctl();
    half.write_all(b"serv").unwrap();
    // The control socket still answers.
    assert_eq!(pen.cmd("pid"), format!("{}\n", pen.proc.pid()));

    let start = Instant::now();
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let at = pen.addr;
            thread::spawn(move || {
                let (name, mut s) = hello_from("127.0.0.2", at);
                assert_eq!(name, "A");
                echo(&mut s, &format!("{i}{}\n", "z".repeat(1000)));
                s.shutdown(Shutdown::Write).unwrap();
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).unwrap();
                assert!(rest.is_empty());
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "16 requests took {took:?}");
    assert_eq!(a.accepted.load(std::sync::atomic::Ordering::SeqCst), 16);

    // The half command ran as `serv` after a moment of quiet: one error line.
    assert_eq!(
        read_until_eof(&mut half).0,
        b"do_cmd: ignoring command starting with 'serv'\n"
    );
    // The stalled reply was kept and resumes when its reader reads.
    let (reply, err) = read_until_eof(&mut hog);
    assert!(err.is_none(), "{err:?}");
    let reply = String::from_utf8(reply).unwrap();
    assert_eq!(reply.lines().count(), 20001);
    assert!(reply.ends_with(
        "\n20000 addr (unknown address family 0 port 0 conn 0 max 1 hard 0 weight 0 prio 0 sx 0 rx 0\n"
    ));
    drop(silent);
    assert_eq!(pen.cmd("pid"), format!("{}\n", pen.proc.pid()));
}

// ---- control_acl ----

#[test]
fn control_acl_closes_denied_peers_without_a_reply() {
    let a = NameServer::start("A");
    let dir = test_dir("control-acl");
    let pen = Pen::start(
        &dir,
        Ctl::V4,
        &["-O", "acl 1 deny 127.0.0.2", "-O", "control_acl 1"],
        &[a.spec()],
    );
    assert_eq!(pen.cmd("control_acl"), "1\n");
    let ctl: SocketAddr = pen.ctl.parse().unwrap();
    for _ in 0..3 {
        let mut s = util::connect_from("127.0.0.2", ctl);
        let _ = s.write_all(b"pid\n");
        let (got, _) = read_until_eof(&mut s);
        assert!(
            got.is_empty(),
            "denied peer got {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    // 127.0.0.1 is allowed, and the ACL is about the control socket only: 127.0.0.2 is
    // still served as a client (client_acl is 0, an empty list).
    assert_eq!(pen.cmd("pid"), format!("{}\n", pen.proc.pid()));
    let mut s = util::connect_from("127.0.0.3", ctl);
    s.write_all(b"mode\n").unwrap();
    assert_eq!(
        read_until_eof(&mut s).0,
        b"no hash no roundrobin no stubborn no weight no prio\n"
    );
    assert_eq!(which_from("127.0.0.2", pen.addr), "A");
}
