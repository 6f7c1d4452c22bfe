//! Runs the real penctl binary: exit codes, one-line errors, and round trips against a tiny
//! fake control server (a TCP or Unix listener in a thread) that records the exact request.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const PENCTL: &str = env!("CARGO_BIN_EXE_penctl");

/// No test may take longer than this; a hung penctl is a failure, not a hung suite.
const LIMIT: Duration = Duration::from_secs(20);

struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    /// Asserts exit 1 with exactly one `penctl: ` line on stderr and nothing on stdout;
    /// returns the message after the prefix.
    fn one_line_error(&self, args: &[&str]) -> String {
        assert_eq!(
            self.code,
            Some(1),
            "penctl {args:?}: stderr {:?}",
            self.stderr
        );
        assert!(
            self.stdout.is_empty(),
            "penctl {args:?}: stdout {:?}",
            self.stdout
        );
        assert!(
            self.stderr.ends_with('\n') && self.stderr.lines().count() == 1,
            "penctl {args:?}: want one line, got {:?}",
            self.stderr
        );
        let msg = self.stderr.trim_end();
        msg.strip_prefix("penctl: ")
            .unwrap_or_else(|| panic!("penctl {args:?}: no prefix in {msg:?}"))
            .to_string()
    }

    /// Asserts exit 0 with nothing on stderr and returns stdout.
    fn success(&self, args: &[&str]) -> &[u8] {
        assert_eq!(
            self.code,
            Some(0),
            "penctl {args:?}: stderr {:?}",
            self.stderr
        );
        assert!(
            self.stderr.is_empty(),
            "penctl {args:?}: stderr {:?}",
            self.stderr
        );
        &self.stdout
    }
}

/// Runs penctl with `args` and an optional PENCTL_TIMEOUT, killing it after [`LIMIT`].
fn penctl(args: &[&str], timeout: Option<&str>) -> Run {
    let mut cmd = Command::new(PENCTL);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.env_remove("PENCTL_TIMEOUT");
    if let Some(t) = timeout {
        cmd.env("PENCTL_TIMEOUT", t);
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("can't run {PENCTL}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).map(|_| v)
    });
    let err = thread::spawn(move || {
        let mut v = Vec::new();
        err.read_to_end(&mut v).map(|_| v)
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("penctl {args:?} still running after {LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    Run {
        code: status.code(),
        stdout: out.join().unwrap().unwrap(),
        stderr: String::from_utf8_lossy(&err.join().unwrap().unwrap()).into_owned(),
        elapsed,
    }
}

/// A fresh directory for this test's socket files.
fn temp_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("penctl-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Serves one control session the way pen does: read the request line, answer, close.
/// Returns the exact bytes received.
fn serve_once<S: Read + Write>(mut conn: S, reply: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.contains(&b'\n') {
        match conn.read(&mut buf).unwrap() {
            0 => break,
            n => got.extend_from_slice(&buf[..n]),
        }
    }
    conn.write_all(reply).unwrap();
    got
}

/// A fake TCP control server answering one connection with `reply`.
fn tcp_server(listener: TcpListener, reply: &'static [u8]) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(LIMIT)).unwrap();
        serve_once(conn, reply)
    })
}

fn local_tcp() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// Sends `words` through penctl to a fresh fake TCP server answering `reply`; checks the
/// request bytes and that stdout is the reply, byte for byte.
fn round_trip(words: &[&str], sent: &[u8], reply: &'static [u8]) {
    let (l, port) = local_tcp();
    let server = tcp_server(l, reply);
    let target = format!("127.0.0.1:{port}");
    let mut args = vec![target.as_str()];
    args.extend_from_slice(words);
    let run = penctl(&args, Some("10"));
    assert_eq!(run.success(&args), reply);
    assert_eq!(server.join().unwrap(), sent);
}

#[test]
fn usage_on_stdout_exit_0() {
    for args in [&[][..], &["127.0.0.1:41001"][..], &["nonsense"][..]] {
        let run = penctl(args, None);
        assert_eq!(run.success(args), b"usage: penctl host:port command\n");
    }
}

#[test]
fn no_port_given() {
    let args = ["127.0.0.1", "pid"];
    assert_eq!(
        penctl(&args, None).one_line_error(&args),
        "no port given in '127.0.0.1'"
    );
    let args = ["[::1]", "pid"];
    assert_eq!(
        penctl(&args, None).one_line_error(&args),
        "no port given in '[::1]'"
    );
}

#[test]
fn bad_port_and_host() {
    let args = ["127.0.0.1:0", "pid"];
    assert_eq!(
        penctl(&args, None).one_line_error(&args),
        "port 0 out of range in '127.0.0.1:0'"
    );
    let args = [":41001", "pid"];
    assert_eq!(
        penctl(&args, None).one_line_error(&args),
        "no host given in ':41001'"
    );
}

#[test]
fn connection_refused() {
    // Bind and drop to find a port that is (almost certainly) closed.
    let port = local_tcp().1;
    let target = format!("127.0.0.1:{port}");
    let args = [target.as_str(), "pid"];
    let msg = penctl(&args, None).one_line_error(&args);
    assert_eq!(
        msg,
        format!("can't connect to {target}: Connection refused")
    );
}

#[test]
fn missing_unix_socket() {
    let path = temp_dir("missing").join("nope.sock");
    let path = path.to_str().unwrap();
    let args = [path, "pid"];
    let msg = penctl(&args, None).one_line_error(&args);
    assert_eq!(
        msg,
        format!("can't connect to {path}: No such file or directory")
    );
}

#[test]
fn unknown_host() {
    let args = ["nosuch.invalid:1", "pid"];
    let msg = penctl(&args, None).one_line_error(&args);
    assert!(msg.starts_with("can't resolve 'nosuch.invalid': "), "{msg}");
}

#[test]
fn argument_list_too_long() {
    let word = "x".repeat(5000);
    let args = ["127.0.0.1:1", "server", word.as_str()];
    let msg = penctl(&args, None).one_line_error(&args);
    assert_eq!(msg, "argument list too long (5008 bytes, max 4095)");
}

#[test]
fn bad_timeout_variable() {
    let args = ["127.0.0.1:1", "pid"];
    let msg = penctl(&args, Some("soon")).one_line_error(&args);
    assert_eq!(
        msg,
        "bad PENCTL_TIMEOUT 'soon': expected a positive number of seconds"
    );
}

#[test]
fn tcp_round_trips() {
    round_trip(
        &["servers"],
        b"servers\n",
        b"0 addr 127.0.0.1 port 41081 conn 0 max 0 hard 0 weight 0 prio 0 sx 0 rx 0\n",
    );
    // Words are joined with single spaces; pen's reply to `server` is empty.
    round_trip(&["server", "0", "max", "5"], b"server 0 max 5\n", b"");
    round_trip(&["server 0 max 5"], b"server 0 max 5\n", b"");
    // Replies without a trailing newline, and bytes that are not UTF-8, pass unchanged.
    round_trip(&["tarpit_acl"], b"tarpit_acl\n", b"tarpit_acl = -1");
    round_trip(&["status"], b"status\n", b"\xff\xfe\x00bin\r\nary\x80");
    // A reply bigger than one read.
    let big: &'static [u8] = Box::leak(vec![b'y'; 100_000].into_boxed_slice());
    round_trip(&["status"], b"status\n", big);
}

#[test]
fn unix_round_trip() {
    let path = temp_dir("unix").join("ctl.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(LIMIT)).unwrap();
        serve_once(conn, b"/run/pen/ctl.sock\n")
    });
    let path = path.to_str().unwrap();
    let args = [path, "control"];
    assert_eq!(penctl(&args, None).success(&args), b"/run/pen/ctl.sock\n");
    assert_eq!(server.join().unwrap(), b"control\n");
}

#[test]
fn ipv6_last_colon_and_brackets() {
    for form in ["::1:{}", "[::1]:{}"] {
        let listener = match TcpListener::bind("[::1]:0") {
            Ok(l) => l,
            Err(e) => {
                eprintln!("skipping IPv6 test: can't bind ::1: {e}");
                return;
            }
        };
        let port = listener.local_addr().unwrap().port();
        let server = tcp_server(listener, b"::1:41011\n");
        let target = form.replace("{}", &port.to_string());
        let args = [target.as_str(), "control"];
        assert_eq!(penctl(&args, None).success(&args), b"::1:41011\n");
        assert_eq!(server.join().unwrap(), b"control\n");
    }
}

#[test]
fn host_names_try_every_address() {
    // localhost often resolves to ::1 first; the server is on 127.0.0.1 only, so this works
    // only if penctl goes on to the next address (the original tried just the first).
    let (l, port) = local_tcp();
    let server = tcp_server(l, b"4242\n");
    let target = format!("localhost:{port}");
    let args = [target.as_str(), "pid"];
    assert_eq!(penctl(&args, None).success(&args), b"4242\n");
    assert_eq!(server.join().unwrap(), b"pid\n");
}

#[test]
fn read_timeout_is_bounded() {
    // The kernel completes the handshake without accept(), so penctl connects, sends, and
    // then waits for a reply that never comes.
    let (listener, port) = local_tcp();
    let target = format!("127.0.0.1:{port}");
    let args = [target.as_str(), "pid"];
    let run = penctl(&args, Some("1"));
    let msg = run.one_line_error(&args);
    assert_eq!(
        msg,
        format!("no reply from {target} within 1 s (set PENCTL_TIMEOUT to wait longer)")
    );
    assert!(
        run.elapsed >= Duration::from_millis(900),
        "{:?}",
        run.elapsed
    );
    assert!(run.elapsed < Duration::from_secs(5), "{:?}", run.elapsed);
    drop(listener);
}

#[test]
fn closed_stdout_is_not_an_error() {
    // `penctl … status | head -c0`: the reader is gone before the reply arrives.
    let (listener, port) = local_tcp();
    let (go, wait) = mpsc::channel::<()>();
    let server = thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        wait.recv().unwrap();
        // penctl hangs up mid-reply, so the tail of this write may fail; that is expected.
        let mut conn = conn;
        let _ = conn.write_all(&[b'z'; 200_000]);
    });
    let target = format!("127.0.0.1:{port}");
    let mut child = Command::new(PENCTL)
        .args([target.as_str(), "status"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    go.send(()).unwrap();
    let _ = server.join();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < LIMIT, "penctl hung with a closed stdout");
        thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "stderr {stderr:?}");
    assert_eq!(stderr, "");
}

#[test]
fn reset_without_reply_is_an_error() {
    // What pen's control ACL does to a denied host: close with the request still unread,
    // which makes the kernel send a reset instead of an orderly EOF.
    let (listener, port) = local_tcp();
    let server = thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let deadline = Instant::now() + LIMIT;
        let mut probe = [0u8; 1];
        conn.set_nonblocking(true).unwrap();
        // Wait (without reading) until the request is queued, then close.
        while conn.peek(&mut probe).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        drop(conn);
    });
    let target = format!("127.0.0.1:{port}");
    let args = [target.as_str(), "pid"];
    let msg = penctl(&args, None).one_line_error(&args);
    assert_eq!(
        msg,
        format!(
            "{target} closed the connection without a reply (does pen's control_acl deny this \
             host?)"
        )
    );
    server.join().unwrap();
}
