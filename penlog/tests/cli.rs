//! penlog's command line: exit codes, one-line errors, and lines that reach a listener.

use std::io::Write;
use std::net::UdpSocket;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn penlog(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_penlog"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn penlog");
    let mut stdin = child.stdin.take().unwrap();
    // penlog may exit before reading (bad arguments): ignore EPIPE.
    let _ = stdin.write_all(input);
    drop(stdin);
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn usage_errors_exit_1() {
    let o = penlog(&[], b"");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("Usage: penlog"), "{}", stderr(&o));
    let o = penlog(&["127.0.0.1", "9", "127.0.0.2", "extra"], b"");
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn help_exits_0() {
    let o = penlog(&["--help"], b"");
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("CustomLog"));
}

#[test]
fn startup_errors_are_one_line() {
    for (args, want) in [
        (
            &["127.0.0.1", "notaport"][..],
            "penlog: bad port 'notaport'",
        ),
        (
            &["127.0.0.1", "70000"],
            "penlog: bad port '70000': port 70000 out of range",
        ),
        (
            &["::1", "9", "127.0.0.2"],
            "penlog: '::1' has no IPv4 address",
        ),
        (
            &["127.0.0.1", "9", "192.0.2.1"],
            "penlog: can't bind 192.0.2.1:0",
        ),
    ] {
        let o = penlog(args, b"x\n");
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let e = stderr(&o);
        assert!(e.starts_with(want), "{args:?}: {e}");
        assert_eq!(e.lines().count(), 1, "{args:?}: {e}");
    }
}

#[test]
fn sends_lines_over_ipv6_from_local_addr() {
    let l = UdpSocket::bind("[::1]:0").unwrap();
    l.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let o = penlog(&["::1", &port, "::1"], b"hello v6\n");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut buf = [0; 100];
    let (n, from) = l.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello v6\n");
    assert!(from.ip().is_loopback());
}

#[test]
fn binary_input_exits_0() {
    let l = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let junk: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let o = penlog(&["127.0.0.1", &port], &junk);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn penlogd_down_is_reported_not_fatal() {
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let o = penlog(&["127.0.0.1", &port], &b"line\n".repeat(20));
    assert_eq!(o.status.code(), Some(0));
    let e = stderr(&o);
    assert!(
        e.starts_with("penlog: at least ") && e.contains("refused"),
        "{e}"
    );
}
