//! Tests that show the fixes of the original's defects listed in pen.md §13.2 which the
//! other files do not cover: #11 pending connects count against `max`, #14 the default
//! backend port, #15 `-W` without weights, #19 `pending_max`, #20 `source`, #21 `-u`/`-j`,
//! #27 Unix-socket clients in the log, #33 the client watched during the connect.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::util::*;

/// The `conn` column of `servers` for server `n`.
fn conns(ctl: &str, n: usize) -> u32 {
    let out = penctl(ctl, "servers");
    let line = out
        .lines()
        .nth(n)
        .unwrap_or_else(|| panic!("no server {n}: {out}"));
    let f: Vec<&str> = line.split(' ').collect();
    f[f.iter().position(|w| *w == "conn").unwrap() + 1]
        .parse()
        .unwrap()
}

/// #11: a connect still under way counts against the server's `max` (the original
/// counted only established connections, so a slow server was sent more than `max`).
#[test]
fn pending_connects_count_against_max() {
    let hole = BlackHole::start();
    let spare = NameServer::start("E");
    let spec = format!("{}:1", hole.addr); // max 1
    let (pen, addr, ctl) = pen_with_control(&["-t", "20", "-e", &spare.spec()], &[&spec]);
    let _first = connect_from("127.0.0.2", addr); // its connect stays pending
    wait_until("the pending connect", || {
        tcp_connecting(pen.pid()).contains(&hole.addr)
    });
    assert_eq!(conns(&ctl, 0), 1, "the pending connect is counted");
    // A second client finds the server full and goes to the emergency server at once.
    assert_eq!(which_from("127.0.0.3", addr), "E");
}

/// #19: at `pending_max`, pen stops accepting without spinning, and accepts again when a
/// connect resolves.
#[test]
fn pending_max_waits_without_spinning() {
    let hole = BlackHole::start();
    let (pen, addr) = start_pen(&[
        "-f",
        "-t",
        "2",
        "-O",
        "pending_max 1",
        "127.0.0.1:{port}",
        &hole.addr.to_string(),
    ]);
    let _first = connect_from("127.0.0.2", addr);
    wait_until("the pending connect", || {
        !tcp_connecting(pen.pid()).is_empty()
    });
    let _second = connect_from("127.0.0.3", addr); // waits in the backlog
    let cpu0 = cpu_seconds(pen.pid());
    let t0 = Instant::now();
    wait_until("a second", || t0.elapsed() >= Duration::from_secs(1));
    let spent = cpu_seconds(pen.pid()) - cpu0;
    assert!(
        spent < 0.2,
        "pen used {spent:.2} s of CPU in 1 s at pending_max"
    );
}

/// #33: the client is watched while the connect is under way: a client that resets ends
/// the attempt at once instead of after the connect timeout.
#[test]
fn client_reset_during_connect_ends_it() {
    let hole = BlackHole::start();
    let (pen, addr, ctl) = pen_with_control(&["-t", "30"], &[&hole.addr.to_string()]);
    let c = connect_from("127.0.0.2", addr);
    wait_until("the pending connect", || {
        tcp_connecting(pen.pid()).contains(&hole.addr)
    });
    // Reset: SO_LINGER 0 then close.
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    wait_until("pen to give up the connect", || {
        tcp_connecting(pen.pid()).is_empty() && conns(&ctl, 0) == 0
    });
}

/// #14: a backend without a port takes the listen port, also when the listener comes
/// from a `listen` line and a control port exists (the original took the control port).
#[test]
fn default_backend_port_is_the_listen_port() {
    let dir = temp_dir("defport");
    let port = free_port();
    let cfg = dir.join("pen.cfg");
    std::fs::write(&cfg, format!("listen 127.0.0.1:{port}\n")).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let ctl = format!("127.0.0.1:{}", free_port());
    let user = as_user();
    let mut args = vec!["-f", "-C", &ctl, "-F", cfg.to_str().unwrap()];
    args.extend(user.iter());
    args.extend_from_slice(&["ignored:1", "127.0.0.5"]);
    let _pen = Proc::start("pen", &args);
    wait_for_port(ctl.parse().unwrap());
    assert_eq!(
        penctl(&ctl, "servers").split(' ').nth(4),
        Some(port.to_string().as_str()),
        "servers: {}",
        penctl(&ctl, "servers")
    );
}

/// #15: weight mode with no weights refuses every connection; pen says so at startup.
#[test]
fn weight_mode_without_weights_warns() {
    let backend = NameServer::start("A");
    let (pen, _) = start_pen(&["-f", "-W", "127.0.0.1:{port}", &backend.spec()]);
    pen.wait_output("weight mode is on but no server has a weight", DEADLINE);
}

/// #20: `source` binds backend connects to that address, with a kernel-chosen port.
#[test]
fn source_sets_the_local_address_of_backend_connects() {
    let backend = peer_echo();
    let (_pen, addr) = start_pen(&[
        "-f",
        "-O",
        "source 127.0.0.9",
        "127.0.0.1:{port}",
        &backend.to_string(),
    ]);
    let peer: SocketAddr = which_from("127.0.0.2", addr).parse().unwrap();
    assert_eq!(peer.ip().to_string(), "127.0.0.9");
    assert_ne!(peer.port(), 0);
}

/// #21: `-u` drops root's supplementary groups, and `-j` changes directory into the
/// chroot.
#[test]
fn user_and_chroot_drop_everything() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("note: not root; skipping user_and_chroot_drop_everything");
        return;
    }
    let dir = temp_dir("chroot");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let backend = NameServer::start("A");
    let (pen, addr) = start_pen(&[
        "-f",
        "-u",
        "nobody",
        "-j",
        dir.to_str().unwrap(),
        "127.0.0.1:{port}",
        &backend.spec(),
    ]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", pen.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let out = std::process::Command::new("id")
        .args(["-u", "nobody"])
        .output()
        .unwrap();
    let nobody = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(field("Uid:").iter().all(|u| *u == nobody), "{status}");
    assert!(
        !field("Groups:").contains(&"0"),
        "root's groups kept: {status}"
    );
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", pen.pid())).unwrap();
    assert_eq!(cwd, dir, "cwd after chroot");
    assert_eq!(which_from("127.0.0.2", addr), "A");
}

/// #27: a Unix-socket client is logged as `unix` (the original logged garbage bytes).
#[test]
fn unix_socket_clients_are_logged_as_unix() {
    let backend = NameServer::start("A");
    let dir = temp_dir("unixlog");
    let sock = dir.join("pen.sock");
    let log = dir.join("pen.log");
    let _pen = Proc::start(
        "pen",
        &[
            "-f",
            "-l",
            log.to_str().unwrap(),
            sock.to_str().unwrap(),
            &backend.spec(),
        ],
    );
    wait_for_file(&sock);
    let mut c = wait_connect_unix(&sock);
    let mut name = [0u8; 2];
    c.read_exact(&mut name).unwrap();
    c.write_all(b"GET /u HTTP/1.0\r\n\r\n").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    wait_until("the log line", || {
        std::fs::read_to_string(&log).is_ok_and(|l| !l.is_empty())
    });
    let line = std::fs::read_to_string(&log).unwrap();
    let f: Vec<&str> = line.trim_end().splitn(4, ' ').collect();
    assert_eq!(
        (f[0], f[2], f[3]),
        ("unix", "127.0.0.1", "GET /u HTTP/1.0"),
        "{line:?}"
    );
}

fn wait_connect_unix(path: &std::path::Path) -> std::os::unix::net::UnixStream {
    let end = Instant::now() + DEADLINE;
    loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => {
                s.set_read_timeout(Some(DEADLINE)).unwrap();
                return s;
            }
            Err(e) => assert!(Instant::now() < end, "connect {}: {e}", path.display()),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Shortening `idle_timeout` at run time applies to connections already open.
#[test]
fn shorter_idle_timeout_applies_to_open_connections() {
    let backend = NameServer::start("A");
    let (_pen, addr, ctl) = pen_with_control(&["-O", "idle_timeout 3600"], &[&backend.spec()]);
    let (name, mut held) = hello_from("127.0.0.2", addr);
    assert_eq!(name, "A");
    assert_eq!(penctl(&ctl, "idle_timeout 1"), "Idle timeout: 1 seconds\n");
    // pen closes the idle connection: the client reads EOF well before the hour is up.
    held.set_read_timeout(Some(DEADLINE)).unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = held.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

/// #18: growing `conn_max` at run time keeps the open connections and takes effect at once
/// (the original overflowed arrays sized at startup).
#[test]
fn growing_conn_max_keeps_connections_and_admits_more() {
    let backend = NameServer::start("A");
    let (_pen, addr, ctl) = pen_with_control(&["-x", "1"], &[&backend.spec()]);
    let (name, mut first) = hello_from("127.0.0.2", addr);
    assert_eq!(name, "A");
    // The table is full: the second client waits in the backlog, unanswered.
    let mut second = connect_from("127.0.0.3", addr);
    second
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 2];
    assert!(second.read_exact(&mut buf).is_err(), "served beyond -x 1");
    assert_eq!(penctl(&ctl, "conn_max 2"), "2\n");
    second.set_read_timeout(Some(DEADLINE)).unwrap();
    second.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"A\n");
    // And the first connection still works.
    first.write_all(b"ping\n").unwrap();
    let mut back = [0u8; 5];
    first.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping\n");
}
