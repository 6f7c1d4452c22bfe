//! pen as a process: the pidfile and TERM, HUP (log reopening, `-F` re-read), daemon
//! mode and its startup failures, running out of file descriptors, and USR1 stats
//! (pen.md §1, §9).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

/// `pen -f -F CFG 127.0.0.1:P BACKEND`.
fn start_pen_with_config(cfg: &Path, backend: &NameServer) -> (Proc, SocketAddr) {
    start_pen(&[
        "-f",
        "-F",
        cfg.to_str().unwrap(),
        "127.0.0.1:{port}",
        &backend.spec(),
    ])
}

/// Reads a pidfile once it holds a whole number.
fn read_pidfile(path: &Path) -> i32 {
    let mut pid = 0;
    wait_until(&format!("a pid in {}", path.display()), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        pid = text.parse().unwrap_or(0);
        pid > 0
    });
    pid
}

/// True while `pid` names a live process (not a zombie).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => {
            !matches!(stat.rsplit(')').next().map(str::trim_start), Some(s) if s.starts_with('Z'))
        }
        Err(_) => false,
    }
}

/// A background pen known only by its pidfile: killed on drop, whatever happened.
struct Daemon {
    pidfile: PathBuf,
    pid: Option<i32>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = self.pid.or_else(|| {
            std::fs::read_to_string(&self.pidfile)
                .ok()
                .and_then(|t| t.parse().ok())
        });
        if let Some(pid) = pid.filter(|&p| p > 0) {
            // SAFETY: signalling a process this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Sends `line` through pen to a [`NameServer`] from 127.0.0.2; returns the backend's name
/// and the echo (for an HTTP request, up to the blank line: pen may insert headers).
fn round_trip(pen: SocketAddr, line: &str) -> (String, String) {
    let (name, mut s) = hello_from("127.0.0.2", pen);
    s.write_all(line.as_bytes()).unwrap();
    let http = line.ends_with("\r\n\r\n");
    let mut r = BufReader::new(s);
    let mut got = String::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap() == 0 {
            break;
        }
        got.push_str(&l);
        if (http && l == "\r\n") || (!http && got.len() >= line.len()) {
            break;
        }
    }
    (name, got)
}

/// Polls a file until it holds `n` lines.
fn lines_in(path: &Path, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    wait_until(&format!("{n} lines in {}", path.display()), || {
        lines = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        lines.len() >= n
    });
    lines
}

/// The request part of a file log line (`CLIENT EPOCH SERVER REQUEST`).
fn request_of(line: &str) -> &str {
    line.splitn(4, ' ').nth(3).unwrap_or("")
}

/// `-p`: the pidfile holds the pid with no newline while pen runs (pen.md §1.1 step 13);
/// TERM closes the connections, removes the pidfile and exits 0 (§1.3).
#[test]
fn term_removes_the_pidfile_and_exits_0() {
    let dir = temp_dir("term");
    let pidfile = dir.join("pen.pid");
    let ns = NameServer::start("x");
    let (mut pen, addr) = start_pen(&[
        "-f",
        "-p",
        pidfile.to_str().unwrap(),
        "127.0.0.1:{port}",
        &ns.spec(),
    ]);
    read_pidfile(&pidfile);
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        pen.pid().to_string()
    );
    let (_, mut open) = hello_from("127.0.0.2", addr);
    pen.signal(libc::SIGTERM);
    assert_eq!(pen.wait_exit(DEADLINE), Some(0), "{}", pen.output());
    assert!(!pidfile.exists(), "pidfile left behind");
    let mut rest = Vec::new();
    open.read_to_end(&mut rest)
        .expect("the open connection is closed");
}

/// HUP reopens the log file: after `mv log log.1` new records go to a new `log`.
#[test]
fn hup_reopens_the_log() {
    let dir = temp_dir("hup-log");
    let log = dir.join("log");
    let ns = NameServer::start("x");
    let (pen, addr) = start_pen(&[
        "-f",
        "-l",
        log.to_str().unwrap(),
        "127.0.0.1:{port}",
        &ns.spec(),
    ]);
    round_trip(addr, "GET /before HTTP/1.1\r\n\r\n");
    assert_eq!(request_of(&lines_in(&log, 1)[0]), "GET /before HTTP/1.1");
    let rotated = dir.join("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    pen.signal(libc::SIGHUP);
    wait_for_file(&log);
    round_trip(addr, "GET /after HTTP/1.1\r\n\r\n");
    let new = lines_in(&log, 1);
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(request_of(&new[0]), "GET /after HTTP/1.1");
    let old = lines_in(&rotated, 1);
    assert_eq!(old.len(), 1, "{old:?}");
    assert_eq!(request_of(&old[0]), "GET /before HTTP/1.1");
}

/// A HUP whose file names a host: the name is looked up by pen's lookup thread, then the
/// whole file applies (its replies on stdout, as always).
#[test]
fn reload_naming_a_host_applies_after_the_lookup() {
    use std::net::ToSocketAddrs;
    let dir = temp_dir("config_names");
    let cfg = dir.join("pen.cfg");
    std::fs::write(&cfg, "blacklist 4117\n").unwrap();
    let a = NameServer::start("A");
    // pen takes the first address of localhost, as this lookup does.
    let first = ("localhost", 0).to_socket_addrs().unwrap().next().unwrap();
    let b = match first {
        SocketAddr::V6(_) => NameServer::start_on("[::1]:0", "B"),
        SocketAddr::V4(_) => NameServer::start("B"),
    };
    let (pen, addr) = start_pen_with_config(&cfg, &a);
    assert_eq!(round_trip(addr, "x\n").0, "A");
    assert!(!threads(pen.pid()).contains(&"pen-lookup".to_string()));
    let text = format!(
        "server 0 address localhost port {}\nblacklist 4233\n",
        b.addr.port()
    );
    std::fs::write(&cfg, text).unwrap();
    pen.signal(libc::SIGHUP);
    pen.wait_output("4233\n", DEADLINE);
    assert!(threads(pen.pid()).contains(&"pen-lookup".to_string()));
    assert_eq!(round_trip(addr, "x\n").0, "B");
}

/// HUP reads the `-F` file off the loop too: one that is slow to read (here a FIFO with no
/// writer yet) holds up no traffic, and applies when it comes.
#[test]
fn a_reload_that_is_slow_to_read_holds_up_no_traffic() {
    let dir = temp_dir("reload_fifo");
    let cfg = dir.join("pen.cfg");
    std::fs::write(&cfg, "blacklist 4117\n").unwrap();
    let a = NameServer::start("A");
    let (pen, addr) = start_pen_with_config(&cfg, &a);
    pen.wait_output("4117\n", DEADLINE);
    std::fs::remove_file(&cfg).unwrap();
    mkfifo(&cfg);
    pen.signal(libc::SIGHUP);
    wait_until("the pen-lookup thread", || {
        threads(pen.pid()).contains(&"pen-lookup".to_string())
    });
    assert_eq!(round_trip(addr, "x\n").0, "A");
    std::fs::write(&cfg, "blacklist 4233\n").unwrap();
    pen.wait_output("4233\n", DEADLINE);
}

/// `abort_on_error`: a fatal error prints its line, then aborts with a core file (the
/// soft core limit is raised to the hard one) instead of exiting 1.
#[test]
fn abort_on_error_aborts_with_a_core_file() {
    use std::os::unix::process::ExitStatusExt;
    let dir = temp_dir("abort_on_error");
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let mut cmd = std::process::Command::new(bin("pen"));
    cmd.current_dir(&dir)
        .args(["-f", "-O", "abort_on_error", &busy_addr, "127.0.0.1:1"]);
    let mut pen = Proc::spawn("pen", cmd);
    let status = pen.wait_status(DEADLINE);
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    let out = pen.output();
    assert!(out.contains("pen: ") && out.contains(&busy_addr), "{out}");
    // A plain core_pattern writes `core…` into the working directory, if the hard limit
    // allows a core at all.
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    if pattern.trim_start().starts_with("core") && hard_core_limit() > 0 {
        let cores = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("core"))
            .count();
        assert_eq!(cores, 1, "core file in {}", dir.display());
    }
    let _ = std::fs::remove_dir_all(&dir);

    let (code, _, err) = run("pen", &["-f", &busy_addr, "127.0.0.1:1"]);
    assert_eq!(code, 1, "without abort_on_error: {err}");
}

fn hard_core_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to a rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut lim) } != 0 {
        return 0;
    }
    lim.rlim_max
}

/// Without `-f` the parent exits 0 once the daemon has started (pidfile written) and the
/// daemon serves; a daemon that cannot bind makes the parent exit 1 with one line on
/// stderr (the original exited 0: §13.2 #6).
#[test]
fn daemon_mode() {
    let dir = temp_dir("daemon");
    let pidfile = dir.join("pen.pid");
    let ns = NameServer::start("daemon");
    let mut daemon = Daemon {
        pidfile: pidfile.clone(),
        pid: None,
    };
    let mut addr = None;
    for _ in 0..5 {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut parent = Proc::start(
            "pen",
            &["-p", pidfile.to_str().unwrap(), &listen, &ns.spec()],
        );
        let code = parent.wait_exit(DEADLINE);
        if code == Some(1) && parent.output().contains("in use") {
            continue; // port race
        }
        assert_eq!(code, Some(0), "parent exit; output:\n{}", parent.output());
        assert_eq!(parent.output(), "", "the parent prints nothing");
        // The pidfile is written before the parent is released.
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().parse().unwrap();
        daemon.pid = Some(pid);
        assert_ne!(pid, parent.pid());
        addr = Some(listen.parse::<SocketAddr>().unwrap());
        break;
    }
    let addr = addr.expect("a free port for the daemon");
    assert_eq!(
        round_trip(addr, "hello\n"),
        ("daemon".into(), "hello\n".into())
    );
    let pid = daemon.pid.unwrap();
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_until("the daemon to exit", || !alive(pid));
    assert!(!pidfile.exists(), "pidfile left behind");
    daemon.pid = None;

    // Startup failure in the background: the listen address is taken.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let failed = dir.join("failed.pid");
    let _guard = Daemon {
        pidfile: failed.clone(),
        pid: None,
    };
    let (code, out, err) = run(
        "pen",
        &["-p", failed.to_str().unwrap(), &busy_addr, &ns.spec()],
    );
    assert_eq!(code, 1, "stdout {out:?} stderr {err:?}");
    assert_eq!(out, "");
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err:?}");
    assert!(
        err.starts_with("pen: ") && err.contains(&busy_addr),
        "{err:?}"
    );
    assert!(!failed.exists());
}

/// A pidfile path that is a symbolic link (planted in a shared directory, say) is refused:
/// pen exits 1 with one line and the link's target keeps its bytes.
#[test]
fn a_pidfile_that_is_a_link_is_refused() {
    let dir = temp_dir("pidfile_link");
    let (link, victim) = (dir.join("pen.pid"), dir.join("victim"));
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let ns = NameServer::start("A");
    let listen = format!("127.0.0.1:{}", free_port());
    let (code, out, err) = run(
        "pen",
        &["-f", "-p", link.to_str().unwrap(), &listen, &ns.spec()],
    );
    assert_eq!(code, 1, "stdout {out:?} stderr {err:?}");
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err:?}");
    assert!(err.contains("can't create pidfile"), "{err:?}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
}

/// `-F FILE` applies at startup, and HUP re-reads it: here `http` on, then `no http`.
#[test]
fn config_file_applied_and_reread_on_hup() {
    let dir = temp_dir("config");
    let cfg = dir.join("pen.cfg");
    std::fs::write(&cfg, "http\nblacklist 4117\n").unwrap();
    let ns = NameServer::start("cfg");
    let (pen, addr) = start_pen_with_config(&cfg, &ns);
    let request = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let (_, echoed) = round_trip(addr, request);
    assert_eq!(
        echoed,
        "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: http\r\nX-Forwarded-For: 127.0.0.2\r\n\r\n"
    );
    std::fs::write(&cfg, "no http\nblacklist 4233\n").unwrap();
    pen.signal(libc::SIGHUP);
    // The replies of the file's commands go to stdout: `blacklist 4233` answers 4233.
    pen.wait_output("4233\n", DEADLINE);
    let (_, echoed) = round_trip(addr, request);
    assert_eq!(echoed, request);
}

/// With few descriptors, pen stops accepting when it runs out, says so once, keeps
/// serving the open connections, and serves new clients once some close. Two limits, so
/// that both places that can run out are hit whatever pen's own descriptor count is: the
/// accept (the client then waits in the backlog) and the backend socket (that client is
/// refused; the server is not blacklisted for pen's own shortage).
#[test]
fn out_of_descriptors_at_40() {
    out_of_descriptors(40);
}

#[test]
fn out_of_descriptors_at_41() {
    out_of_descriptors(41);
}

fn out_of_descriptors(limit: u32) {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("note: prlimit is not available; skipping the descriptor test");
        return;
    }
    let ns = NameServer::start("fd");
    let pen_bin = bin("pen");
    let nofile = format!("--nofile={limit}:{limit}");
    let mut started = None;
    for _ in 0..5 {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let args = [
            &nofile,
            pen_bin.to_str().unwrap(),
            "-f",
            &listen,
            &ns.spec(),
        ];
        let mut pen = Proc::start_program("prlimit", &args);
        let addr: SocketAddr = listen.parse().unwrap();
        let end = Instant::now() + DEADLINE;
        let mut up = false;
        while Instant::now() < end && pen.child.try_wait().unwrap().is_none() {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                up = true;
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        if up {
            started = Some((pen, addr));
            break;
        }
        let _ = pen.wait_exit(DEADLINE);
        assert!(
            pen.output().contains("in use"),
            "pen did not start:\n{}",
            pen.output()
        );
    }
    let (pen, addr) = started.expect("a free port for pen");
    const LINE: &str = "connections open, retrying";
    let count = |pen: &Proc| pen.output().matches(LINE).count();

    // Open connections until pen runs out: a client is refused, or waits with the line out.
    let mut served: Vec<TcpStream> = Vec::new();
    let mut waiting: Vec<TcpStream> = Vec::new();
    for _ in 0..limit {
        let mut s = connect_from("127.0.0.2", addr);
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let end = Instant::now() + DEADLINE;
        let mut buf = [0u8; 16];
        let got = loop {
            match s.read(&mut buf) {
                Ok(n) => break Some(n),
                Err(_) if count(&pen) > 0 => break None,
                Err(_) => assert!(Instant::now() < end, "neither served nor refused"),
            }
        };
        match got {
            Some(0) => break, // refused: no descriptor for the backend socket
            Some(n) => {
                assert_eq!(&buf[..n], b"fd\n");
                served.push(s);
            }
            None => {
                waiting.push(s);
                break;
            }
        }
    }
    pen.wait_output(LINE, DEADLINE);
    let at_accept = pen.output().contains("can't accept");
    assert!(
        served.len() >= 5,
        "only {} connections served",
        served.len()
    );
    for _ in 0..2 {
        waiting.push(connect_from("127.0.0.2", addr));
    }
    for s in served.iter_mut().take(3) {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(b"still here\n").unwrap();
        let mut back = [0u8; 11];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"still here\n");
    }
    // pen retries every 100 ms: still one line for the whole episode.
    thread::sleep(Duration::from_millis(500));
    let out = pen.output();
    assert_eq!(count(&pen), 1, "the out-of-descriptors line once:\n{out}");
    assert!(!out.contains("blacklisting"), "{out}");
    // Free some descriptors: the clients in the backlog are served (or, when the backend
    // socket was what ran out, refused), and a new client is served.
    drop(served.drain(..6).collect::<Vec<_>>());
    for (i, s) in waiting.iter_mut().enumerate() {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut hello = Vec::new();
        let _ = s.take(3).read_to_end(&mut hello);
        if at_accept {
            assert_eq!(hello, b"fd\n", "waiting client {i}:\n{}", pen.output());
        } else {
            assert!(hello.is_empty() || hello == b"fd\n", "{hello:?}");
        }
    }
    // Until pen has closed the freed connections, a client may still be refused.
    wait_until("a new client to be served", || {
        which_from("127.0.0.2", addr) == "fd"
    });
    let out = pen.output();
    assert_eq!(count(&pen), 1, "{out}");
    assert!(out.contains("accepting connections again"), "{out}");
}

/// USR1 in the foreground prints the text stats on stderr (pen.md §9.2).
#[test]
fn usr1_prints_stats() {
    let ns = NameServer::start("x");
    let (pen, addr) = start_pen(&["-f", "-x", "7", "127.0.0.1:{port}", &ns.spec()]);
    let (_, _open) = hello_from("127.0.0.2", addr);
    pen.signal(libc::SIGUSR1);
    pen.wait_output("Max number of connections: 7", DEADLINE);
    let out = pen.output();
    let port = ns.addr.port();
    assert!(out.contains(" servers, 0 current\n"), "{out}");
    assert!(
        out.contains(&format!(
            "Server 0 status:\naddress 127.0.0.1\n0\nport {port}\n"
        )),
        "{out}"
    );
    assert!(out.contains("Active clients:\n"), "{out}");
    assert!(out.contains("address 127.0.0.2\n"), "{out}");
    // The client block in the intended format (the original printed garbage: #7).
    assert!(
        out.contains("Client 0 status:\naddress 127.0.0.2\nlast used ")
            && out.contains("\nlast server 0\nconnects  1\nsent  "),
        "{out}"
    );
    assert!(out.contains("Active connections:\n"), "{out}");
}
