//! Test harness: finds the binaries, starts them with a guard that kills and reaps them,
//! gives each test its own directory, waits for ports by polling, and provides small
//! backends that say who they are.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

/// Generous default deadline: the machine is shared and noisy.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Path of one of the suite's binaries (pen, penctl, penlog, penlogd).
pub fn bin(name: &str) -> PathBuf {
    // The e2e binary lives in target/<profile>/deps; the programs in target/<profile>.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "binary {} not found; run `cargo test --workspace` so that it is built",
        path.display()
    );
    path
}

/// A fresh directory for one test's sockets, pidfiles and logs.
pub fn temp_dir(test: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("pen-e2e-{}-{n}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A free TCP port on 127.0.0.1 (bind 0, read, drop). Callers retry on EADDRINUSE.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running program, killed and reaped on drop. Its stderr and stdout are collected by
/// reader threads (and echoed with a prefix for failing-test diagnosis).
pub struct Proc {
    pub child: Child,
    pub argv: Vec<String>,
    pub output: Arc<Mutex<String>>,
}

impl Proc {
    /// Starts `name` with `args`, stdin closed.
    pub fn start(name: &str, args: &[&str]) -> Proc {
        Proc::start_with(name, args, Stdio::null())
    }

    pub fn start_with(name: &str, args: &[&str], stdin: Stdio) -> Proc {
        let mut cmd = Command::new(bin(name));
        cmd.args(args).stdin(stdin);
        Proc::spawn(name, cmd)
    }

    /// Starts a prepared command for `name`'s binary, with stdout and stderr collected.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} {args:?}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let prefix = format!("[{name} {}]", child.id());
        if let Some(out) = child.stdout.take() {
            collect(out, prefix.clone(), output.clone());
        }
        if let Some(err) = child.stderr.take() {
            collect(err, prefix, output.clone());
        }
        let mut argv = vec![name.to_string()];
        argv.extend(args);
        Proc {
            child,
            argv,
            output,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything the program printed so far (stdout and stderr interleaved).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for the program to exit on its own, up to `limit`; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        self.wait_status(limit).code()
    }

    /// Waits for the program to end on its own, up to `limit`; returns how it ended.
    pub fn wait_status(&mut self, limit: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Give the reader threads a moment to collect the last lines.
                thread::sleep(Duration::from_millis(50));
                return st;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{:?} did not exit within {limit:?}; output:\n{}",
            self.argv,
            self.output()
        );
    }

    /// Waits until the output contains `needle`.
    pub fn wait_output(&self, needle: &str, limit: Duration) {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if self.output().contains(needle) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{:?}: no '{needle}' within {limit:?}; output:\n{}",
            self.argv,
            self.output()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(mut r: impl Read + Send + 'static, prefix: String, sink: Arc<Mutex<String>>) {
    thread::spawn(move || {
        let mut buf = BufReader::new(&mut r);
        let mut line = String::new();
        loop {
            line.clear();
            match buf.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    eprint!("{prefix} {line}");
                    sink.lock().unwrap().push_str(&line);
                }
            }
        }
    });
}

/// Runs a program to completion with a time limit; returns (exit code, stdout, stderr).
pub fn run(name: &str, args: &[&str]) -> (i32, String, String) {
    run_with_stdin(name, args, b"")
}

pub fn run_with_stdin(name: &str, args: &[&str], input: &[u8]) -> (i32, String, String) {
    run_program(Command::new(bin(name)), name, args, input)
}

/// Runs `cmd` (named `name` in messages) with `args` to completion with a time limit,
/// feeding it `input`; returns (exit code, stdout, stderr).
pub fn run_program(
    mut cmd: Command,
    name: &str,
    args: &[&str],
    input: &[u8],
) -> (i32, String, String) {
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    // Read both pipes while the program runs, so a large output cannot block it.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let end = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("{name} {args:?} did not finish within {DEADLINE:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let _ = feeder.join();
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// Polls until a TCP connect to `addr` succeeds (miniserve's wait_for_port).
pub fn wait_for_port(addr: SocketAddr) {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listening on {addr} after {DEADLINE:?}");
}

/// Polls until `path` exists.
pub fn wait_for_file(path: &Path) {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        if path.exists() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("{} did not appear within {DEADLINE:?}", path.display());
}

/// Polls `cond` until it holds or the deadline passes.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        if cond() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

/// Starts pen with `args` on a free port `127.0.0.1:P`; `args` may use `{port}` for P.
/// Retries with another port if the first one was taken meanwhile.
pub fn start_pen(args: &[&str]) -> (Proc, SocketAddr) {
    start_pen_at(Ipv4Addr::LOCALHOST.into(), args)
}

/// [`start_pen`] on another loopback address (e.g. `::1`): `{port}` in `args` becomes a
/// port that was free on `ip`.
pub fn start_pen_at(ip: std::net::IpAddr, args: &[&str]) -> (Proc, SocketAddr) {
    start_pen_with(|argv| Proc::start("pen", argv), ip, args)
}

/// [`start_pen_at`] for a pen that `start` runs (ours, or the original).
pub fn start_pen_with(
    start: impl Fn(&[&str]) -> Proc,
    ip: std::net::IpAddr,
    args: &[&str],
) -> (Proc, SocketAddr) {
    for _ in 0..5 {
        let port = TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::new(ip, port);
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut pen = start(&argv);
        let end = Instant::now() + DEADLINE;
        loop {
            // Look for pen's listening socket instead of connecting: a probe connection is
            // a client like any other (it moves the round-robin cursor, takes a client
            // slot and counts in the stats).
            if tcp_listeners(pen.pid()).contains(&addr) {
                return (pen, addr);
            }
            if let Some(st) = pen.child.try_wait().unwrap() {
                let out = pen.output();
                if out.contains("in use") {
                    break; // port race: try another one
                }
                panic!("pen {args:?} exited with {st} before listening:\n{out}");
            }
            assert!(
                Instant::now() < end,
                "pen {args:?} not listening on {addr}:\n{}",
                pen.output()
            );
            thread::sleep(Duration::from_millis(20));
        }
        let _ = pen.wait_exit(DEADLINE);
    }
    panic!("could not find a free port for pen");
}

/// Connects to `to` from the local address `from` (e.g. 127.0.0.2), port chosen by the OS.
pub fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let domain = Domain::for_address(to);
    let sock = Socket::new(domain, Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&SockAddr::from(local)).unwrap();
    sock.connect_timeout(&SockAddr::from(to), DEADLINE).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

/// A backend that answers every connection with its name and the client's first line,
/// then keeps echoing; it counts connections.
pub struct NameServer {
    pub addr: SocketAddr,
    pub name: String,
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl NameServer {
    /// Starts a backend on 127.0.0.1:0 that writes `name\n` to each new connection and then
    /// echoes whatever it receives until the client closes.
    pub fn start(name: &str) -> NameServer {
        NameServer::start_on("127.0.0.1:0", name)
    }

    pub fn start_on(bind: &str, name: &str) -> NameServer {
        let listener = TcpListener::bind(bind).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (acc, st, nm) = (accepted.clone(), stop.clone(), name.to_string());
        thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        acc.fetch_add(1, Ordering::SeqCst);
                        let nm = nm.clone();
                        thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.write_all(format!("{nm}\n").as_bytes());
                            let mut buf = [0u8; 16384];
                            loop {
                                match s.read(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => {
                                        if s.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                }
                            }
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        NameServer {
            addr,
            name: name.to_string(),
            accepted,
            stop,
        }
    }

    /// The spec to give pen: `127.0.0.1:PORT`.
    pub fn spec(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Connects to pen from `from` and returns the backend name that answered (the first line),
/// keeping the connection open in the returned stream.
pub fn hello_from(from: &str, pen: SocketAddr) -> (String, TcpStream) {
    let s = connect_from(from, pen);
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line)
        .unwrap_or_else(|e| panic!("reading backend name via pen: {e}"));
    (line.trim_end().to_string(), s)
}

/// Like [`hello_from`] but closes the connection and returns only the name ("" if pen
/// closed the connection without an answer).
pub fn which_from(from: &str, pen: SocketAddr) -> String {
    let s = connect_from(from, pen);
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    let _ = r.read_line(&mut line);
    let _ = s.shutdown(Shutdown::Both);
    line.trim_end().to_string()
}

/// Makes a FIFO at `path` that anyone may read (pen may run as nobody).
pub fn mkfifo(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) };
    assert_eq!(
        rc,
        0,
        "mkfifo {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// The names of a process's threads.
pub fn threads(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim_end().to_string())
        .collect()
}

/// A backend that answers each connection with one line: the address it came from.
pub fn peer_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let _ = s.write_all(format!("{peer}\n").as_bytes());
        }
    });
    addr
}

/// A loopback address that is certainly closed: a port we bound and released.
pub fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// 127.0.0.N.
pub fn lo(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

// ---- Added for pen_relay / pen_process: starting pen through a wrapper (prlimit, sh). ----

impl Proc {
    /// Starts `program` (a wrapper such as `prlimit`, looked up in PATH) with `args`, stdin
    /// closed, output collected like [`Proc::start`]. With a wrapper that `exec`s its
    /// command, [`Proc::pid`] is the pid of the wrapped program.
    pub fn start_program(program: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program} {args:?}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let prefix = format!("[{program} {}]", child.id());
        if let Some(out) = child.stdout.take() {
            collect(out, prefix.clone(), output.clone());
        }
        if let Some(err) = child.stderr.take() {
            collect(err, prefix, output.clone());
        }
        let mut argv = vec![program.to_string()];
        argv.extend(args.iter().map(|s| s.to_string()));
        Proc {
            child,
            argv,
            output,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Logging suite helpers (penlog, penlogd), added for tests/e2e/logging.rs.
// ---------------------------------------------------------------------------------------

/// Starts `penlogd -f -d ARGS... PORT` on a free UDP port of `listen` (127.0.0.1 or ::1),
/// waits until it reports that it listens, and returns it with its address. Retries with
/// another port if the first one was taken meanwhile.
pub fn start_penlogd(listen: &str, args: &[&str]) -> (Proc, SocketAddr) {
    for _ in 0..5 {
        let port = UdpSocket::bind(format!("{}:0", bracket(listen)))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let port_s = port.to_string();
        let mut argv = vec!["-f", "-d", "-L", listen];
        argv.extend_from_slice(args);
        argv.push(&port_s);
        let mut p = Proc::start("penlogd", &argv);
        let end = Instant::now() + DEADLINE;
        loop {
            if p.output().contains("listening on") {
                let addr = format!("{}:{port}", bracket(listen)).parse().unwrap();
                return (p, addr);
            }
            if let Some(st) = p.child.try_wait().unwrap() {
                let out = p.output();
                if out.contains("in use") {
                    break;
                }
                panic!("penlogd {argv:?} exited with {st}:\n{out}");
            }
            assert!(
                Instant::now() < end,
                "penlogd {argv:?} did not start:\n{}",
                p.output()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("could not find a free UDP port for penlogd");
}

fn bracket(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// A UDP socket bound to `ip:0` (e.g. 127.0.0.2, to pose as a web server or as pen).
pub fn udp_from(ip: &str) -> UdpSocket {
    UdpSocket::bind(format!("{}:0", bracket(ip))).unwrap()
}

/// The file's lines (empty if it does not exist yet).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read(path)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `path` holds at least `n` lines and returns them.
pub fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    let end = Instant::now() + DEADLINE;
    loop {
        let l = lines(path);
        if l.len() >= n {
            return l;
        }
        assert!(
            Instant::now() < end,
            "{}: {} of {n} lines:\n{}",
            path.display(),
            l.len(),
            l.join("\n")
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until penlogd has handled `n` datagrams (by its USR1 report) and returns it.
pub fn wait_received(d: &Proc, n: u64) -> std::collections::HashMap<String, u64> {
    let end = Instant::now() + DEADLINE;
    loop {
        let c = penlogd_report(d);
        if c["received"] >= n {
            return c;
        }
        assert!(
            Instant::now() < end,
            "penlogd handled {} of {n} datagrams",
            c["received"]
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// penlogd's counters as reported on stderr (`received N datagrams: ...`), by name.
pub fn penlogd_counts(line: &str) -> std::collections::HashMap<String, u64> {
    let mut m = std::collections::HashMap::new();
    let words: Vec<&str> = line
        .split([' ', '(', ')', ',', ':'])
        .filter(|w| !w.is_empty())
        .collect();
    for w in words.windows(2) {
        if let Ok(n) = w[0].parse::<u64>() {
            m.insert(w[1].to_string(), n);
        }
    }
    if let Some(pos) = words.iter().position(|w| *w == "received") {
        if let Some(n) = words.get(pos + 1).and_then(|w| w.parse().ok()) {
            m.insert("received".to_string(), n);
        }
    }
    m
}

/// Sends USR1 to penlogd and returns the counters of the report it prints.
pub fn penlogd_report(p: &Proc) -> std::collections::HashMap<String, u64> {
    let before = p.output().matches("received ").count();
    p.signal(libc::SIGUSR1);
    wait_until("penlogd's USR1 report", || {
        p.output().matches("received ").count() > before
    });
    let out = p.output();
    let line = out
        .lines()
        .rfind(|l| l.contains("received "))
        .unwrap_or_default()
        .to_string();
    penlogd_counts(&line)
}

// ---------------------------------------------------------------------------------------
// Control suite helpers (tests/e2e/penctl.rs): what a process holds open, read from /proc
// (Linux), so that a test can look at pen's sockets without connecting to them.
// ---------------------------------------------------------------------------------------

/// The socket inodes among process `pid`'s descriptors, by descriptor number.
fn socket_inodes(pid: i32) -> Vec<(i32, String)> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let link = std::fs::read_link(e.path()).ok()?;
            let inode = link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some((fd, inode.to_string()))
        })
        .collect()
}

/// An address of /proc/net/tcp{,6}: hex words as the kernel prints them (each 32-bit word in
/// host byte order), a colon, the port in hex.
fn proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..ip.len()).step_by(8) {
        let word = u32::from_str_radix(ip.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip: std::net::IpAddr = match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok()?.into(),
        16 => <[u8; 16]>::try_from(bytes).ok()?.into(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The TCP sockets (IPv4 and IPv6) with their inode, local and remote address, and state
/// (`0A` is LISTEN, `01` ESTABLISHED).
fn tcp_table() -> Vec<(String, SocketAddr, SocketAddr, String)> {
    let mut rows = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(table) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in table.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() <= 9 {
                continue;
            }
            if let (Some(local), Some(remote)) = (proc_addr(f[1]), proc_addr(f[2])) {
                rows.push((f[9].to_string(), local, remote, f[3].to_string()));
            }
        }
    }
    rows
}

/// The TCP addresses process `pid` listens on.
pub fn tcp_listeners(pid: i32) -> Vec<SocketAddr> {
    let inodes: Vec<String> = socket_inodes(pid).into_iter().map(|(_, i)| i).collect();
    let mut found: Vec<SocketAddr> = tcp_table()
        .into_iter()
        .filter(|(inode, _, _, st)| st == "0A" && inodes.contains(inode))
        .map(|(_, local, _, _)| local)
        .collect();
    found.sort();
    found
}

/// The local and remote address of the TCP socket that is descriptor `fd` of process `pid`.
pub fn tcp_fd_addrs(pid: i32, fd: i32) -> Option<(SocketAddr, SocketAddr)> {
    let (_, inode) = socket_inodes(pid).into_iter().find(|(f, _)| *f == fd)?;
    tcp_table()
        .into_iter()
        .find(|(i, _, _, _)| *i == inode)
        .map(|(_, local, remote, _)| (local, remote))
}

// ---------------------------------------------------------------------------------------
// Connects that stay pending (pen_defects.rs).

/// The remote addresses of process `pid`'s TCP sockets in state SYN_SENT (a connect
/// under way).
pub fn tcp_connecting(pid: i32) -> Vec<SocketAddr> {
    let inodes: Vec<String> = socket_inodes(pid).into_iter().map(|(_, i)| i).collect();
    tcp_table()
        .into_iter()
        .filter(|(inode, _, _, st)| st == "02" && inodes.contains(inode))
        .map(|(_, _, remote, _)| remote)
        .collect()
}

/// A backend whose connects never complete: it listens with the smallest backlog, never
/// accepts, and its one queue place is taken by a connection the guard holds, so the
/// kernel drops every further SYN and a connect to it stays pending.
pub struct BlackHole {
    pub addr: SocketAddr,
    _listener: Socket,
    _filler: TcpStream,
}

impl BlackHole {
    pub fn start() -> BlackHole {
        let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        l.bind(&SockAddr::from(
            "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
        ))
        .unwrap();
        l.listen(0).unwrap();
        let addr = l.local_addr().unwrap().as_socket().unwrap();
        let filler = TcpStream::connect_timeout(&addr, DEADLINE).unwrap();
        BlackHole {
            addr,
            _listener: l,
            _filler: filler,
        }
    }
}

/// CPU seconds (user + system) process `pid` has used, from /proc/PID/stat.
pub fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process's stat");
    // The fields after the ")" that ends the command name: state is field 3, utime 14,
    // stime 15.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// `-u nobody` when running as root (pen opens no control port for root otherwise).
pub fn as_user() -> Vec<&'static str> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        vec!["-u", "nobody"]
    } else {
        Vec::new()
    }
}

/// Starts pen with a TCP control port; returns it with the control address.
pub fn pen_with_control(opts: &[&str], servers: &[&str]) -> (Proc, SocketAddr, String) {
    let ctl = format!("127.0.0.1:{}", free_port());
    let user = as_user();
    let mut args = vec!["-f", "-C", &ctl];
    args.extend(user.iter());
    args.extend_from_slice(opts);
    args.push("127.0.0.1:{port}");
    args.extend_from_slice(servers);
    let (pen, addr) = start_pen(&args);
    wait_for_port(ctl.parse().unwrap());
    (pen, addr, ctl)
}

/// `penctl CTL CMD…`; asserts exit 0.
pub fn penctl(ctl: &str, cmd: &str) -> String {
    let words: Vec<&str> = std::iter::once(ctl).chain(cmd.split(' ')).collect();
    let (rc, out, err) = run("penctl", &words);
    assert_eq!(rc, 0, "penctl {cmd}: {err}");
    out
}
