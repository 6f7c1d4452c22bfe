//! Fixes of the original's defects that the README promises and other files don't cover:
//! `-b 0` with every server down (§13.2 #9), `no log` stopping UDP records (#26), an IPv6
//! log target (logging.md §6), a log FIFO whose reader is behind.

use std::io::{Read, Write};
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use crate::util::*;

/// With `-b 0` nothing is ever blacklisted; the original then retried the dead servers of
/// one connection forever at 100% CPU and never answered the client. Each connection now
/// tries each candidate once and is closed.
#[test]
fn no_blacklist_and_all_servers_down_closes_without_spinning() {
    let (d1, d2) = (dead_addr(), dead_addr());
    let (pen, addr) = start_pen(&[
        "-f",
        "-b",
        "0",
        "127.0.0.1:{port}",
        &d1.to_string(),
        &d2.to_string(),
    ]);
    let before = cpu_seconds(pen.pid());
    for _ in 0..3 {
        let mut s = connect_from("127.0.0.2", addr);
        let started = Instant::now();
        let mut buf = [0u8; 16];
        // Closed (EOF or reset) with no bytes, promptly.
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("got {n} bytes from nowhere"),
            Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "no answer: {e}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }
    // And pen is idle afterwards, not spinning on reconnects.
    let t0 = Instant::now();
    let cpu0 = cpu_seconds(pen.pid());
    wait_until("half a second", || {
        t0.elapsed() >= Duration::from_millis(500)
    });
    let spent = cpu_seconds(pen.pid()) - cpu0;
    assert!(
        spent < 0.2,
        "pen used {spent:.2} s of CPU in 0.5 s while idle (before: {before})"
    );
}

fn udp_listener(bind: &str) -> UdpSocket {
    let u = UdpSocket::bind(bind).unwrap();
    u.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    u
}

fn request(addr: std::net::SocketAddr, path: &str) {
    let mut s = connect_from("127.0.0.2", addr);
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .unwrap();
    // The echo backend closes once we do.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

/// Waits for a datagram containing `needle`, up to the deadline.
fn expect_record(u: &UdpSocket, needle: &str) -> String {
    let end = Instant::now() + DEADLINE;
    let mut buf = [0u8; 2048];
    while Instant::now() < end {
        if let Ok(n) = u.recv(&mut buf) {
            let got = String::from_utf8_lossy(&buf[..n]).into_owned();
            if got.contains(needle) {
                return got;
            }
        }
    }
    panic!("no record containing {needle:?}");
}

/// `no log` stops the UDP records too (the original kept sending them: defect #26), and
/// `log` reports the whole `host:port` target.
#[test]
fn no_log_stops_udp_records() {
    let backend = NameServer::start("A");
    let u = udp_listener("127.0.0.1:0");
    let target = u.local_addr().unwrap().to_string();
    let dir = temp_dir("nolog");
    // The control socket needs -u when running as root (compat); nobody must reach it.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let ctl = dir.join("ctl.sock");
    let ctl_s = ctl.to_str().unwrap();
    let (_pen, addr) = start_pen(&[
        "-f",
        "-u",
        "nobody",
        "-C",
        ctl_s,
        "-l",
        &target,
        "127.0.0.1:{port}",
        &backend.spec(),
    ]);
    wait_for_file(&ctl);
    request(addr, "/before");
    let rec = expect_record(&u, "/before");
    assert_eq!(rec, "+ 127.0.0.2 127.0.0.1 GET /before HTTP/1.0\n");
    let (rc, out, _) = run("penctl", &[ctl_s, "log"]);
    assert_eq!((rc, out.as_str()), (0, format!("{target}\n").as_str()));
    let (rc, out, _) = run("penctl", &[ctl_s, "no", "log"]);
    assert_eq!((rc, out.as_str()), (0, ""));
    request(addr, "/after");
    // Nothing arrives: drain for a while (bounded) and check no record names /after.
    let end = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 2048];
    while Instant::now() < end {
        if let Ok(n) = u.recv(&mut buf) {
            let got = String::from_utf8_lossy(&buf[..n]);
            assert!(!got.contains("/after"), "record after `no log`: {got:?}");
        }
    }
    let (_, out, _) = run("penctl", &[ctl_s, "log"]);
    assert_eq!(out, "");
    // `log host:port` at run time turns the records back on.
    let (rc, out, _) = run("penctl", &[ctl_s, "log", &target]);
    assert_eq!((rc, out.as_str()), (0, format!("{target}\n").as_str()));
    request(addr, "/again");
    assert_eq!(
        expect_record(&u, "/again"),
        "+ 127.0.0.2 127.0.0.1 GET /again HTTP/1.0\n"
    );
}

/// The network log target may be IPv6 (the original's was IPv4 only).
#[test]
fn log_target_may_be_ipv6() {
    let Ok(u) = UdpSocket::bind("[::1]:0") else {
        eprintln!("note: ::1 not available; skipping log_target_may_be_ipv6");
        return;
    };
    u.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let target = format!("[::1]:{}", u.local_addr().unwrap().port());
    let backend = NameServer::start("A");
    let (_pen, addr) = start_pen(&["-f", "-l", &target, "127.0.0.1:{port}", &backend.spec()]);
    request(addr, "/v6log");
    let rec = expect_record(&u, "/v6log");
    assert_eq!(rec, "+ 127.0.0.2 127.0.0.1 GET /v6log HTTP/1.0\n");
}

/// Records naming an IPv6 server go only to an IPv6 log target: the original penlogd,
/// which listens on IPv4 only, crashes on them (logging.md §5). `stats` counts each
/// withheld record once, however many relay passes its connection took.
#[test]
fn ipv6_server_records_only_to_an_ipv6_target() {
    let Ok(listener) = std::net::TcpListener::bind("[::1]:0") else {
        eprintln!("note: ::1 not available; skipping");
        return;
    };
    let backend = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
    });
    let spec = format!("[::1]:{}", backend.port());
    let u4 = udp_listener("127.0.0.1:0");
    let t4 = u4.local_addr().unwrap().to_string();
    let (pen4, addr4, ctl) = pen_with_control(&["-l", &t4], &[&spec]);
    for _ in 0..3 {
        request(addr4, "/v6server");
    }
    pen4.wait_output("not sending log records for server", DEADLINE);
    let mut buf = [0u8; 2048];
    assert!(
        u4.recv(&mut buf).is_err(),
        "an IPv4 target got a record for an IPv6 server"
    );
    // Each request has returned: pen has closed its connection, so all is counted.
    let stats = penctl(&ctl, "stats");
    assert!(
        stats.lines().any(|l| l == "log_records_withheld_total 3"),
        "{stats}"
    );

    let u6 = udp_listener("[::1]:0");
    let t6 = format!("[::1]:{}", u6.local_addr().unwrap().port());
    let (_pen6, addr6) = start_pen(&["-f", "-l", &t6, "127.0.0.1:{port}", &spec]);
    request(addr6, "/v6server");
    assert_eq!(
        expect_record(&u6, "/v6server"),
        "+ 127.0.0.2 ::1 GET /v6server HTTP/1.0\n"
    );
}

/// Debug level 3 dumps each read as `<n>: <bytes>`, in hex, or in ASCII with `-a`
/// (pen.md §8.2).
#[test]
fn debug_level_3_dumps_payloads() {
    let backend = NameServer::start("A");
    let (hex, addr) = start_pen(&["-f", "-ddd", "127.0.0.1:{port}", &backend.spec()]);
    request(addr, "/dumped");
    // "GET /dumped HTTP/1.0\r\n\r\n" is 24 bytes.
    hex.wait_output("24: 47 45 54 20 2f 64 75 6d 70 65 64", DEADLINE);
    let (ascii, addr) = start_pen(&[
        "-f",
        "-d",
        "-d",
        "-d",
        "-a",
        "127.0.0.1:{port}",
        &backend.spec(),
    ]);
    request(addr, "/dumped");
    ascii.wait_output("24: GET /dumped HTTP/1.0....", DEADLINE);
}

/// A second pen cannot share a control port: the original set `SO_REUSEPORT`, so both
/// bound and the kernel split control connections between them (control.md §1.1).
#[test]
fn a_second_pen_cannot_share_the_control_port() {
    let backend = NameServer::start("A");
    let spec = backend.spec();
    let (_pen, _, ctl) = pen_with_control(&[], &[&spec]);
    let user = as_user();
    let second_listen = format!("127.0.0.1:{}", free_port());
    let mut second = vec!["-f", "-C", &ctl];
    second.extend_from_slice(&user);
    second.extend_from_slice(&[&second_listen, &spec]);
    let (rc, out, err) = run("pen", &second);
    assert_eq!(rc, 1, "second pen on {ctl}: stdout {out:?} stderr {err:?}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.contains(&ctl) && err.contains("in use"), "{err:?}");
    // And the first one still answers on it.
    let (rc, pid, _) = run("penctl", &[&ctl, "pid"]);
    assert_eq!((rc, pid.trim()), (0, _pen.pid().to_string().as_str()));
}

/// Without `-H`, pen still follows HTTP when it logs: one record per request head, even
/// when the reads split a request line (the original logged each read, so `GET ` and
/// `/split HTTP/1.0` became two junk records). Other protocols keep one record per read.
#[test]
fn log_records_follow_http_requests_not_reads() {
    let backend = NameServer::start("A");
    let dir = temp_dir("logsplit");
    let log = dir.join("pen.log");
    let (_pen, addr) = start_pen(&[
        "-f",
        "-l",
        log.to_str().unwrap(),
        "127.0.0.1:{port}",
        &backend.spec(),
    ]);
    let mut s = connect_from("127.0.0.2", addr);
    s.set_nodelay(true).unwrap();
    // Three writes with pauses, so that pen reads them separately, then a second request
    // on the same connection with a body that looks like a request line.
    let echoed = |s: &mut std::net::TcpStream, n: usize| {
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).unwrap();
    };
    let mut name = [0u8; 2];
    s.read_exact(&mut name).unwrap(); // the backend's "A\n": pen is relaying
    for piece in ["GET ", "/split", " HTTP/1.0\r\nHost: x\r\n\r\n"] {
        s.write_all(piece.as_bytes()).unwrap();
        echoed(&mut s, piece.len()); // the echo proves pen read and forwarded it
    }
    let post = "POST /p HTTP/1.1\r\nContent-Length: 16\r\n\r\nGET /no HTTP/1.0";
    s.write_all(post.as_bytes()).unwrap();
    echoed(&mut s, post.len());
    drop(s);
    // A line protocol that is not HTTP: one record per read, as the original.
    let mut t = connect_from("127.0.0.3", addr);
    t.read_exact(&mut name).unwrap();
    t.write_all(b"HELO example\r\n").unwrap();
    echoed(&mut t, 14);
    drop(t);
    wait_until("three log lines", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.lines().count() >= 3)
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let requests: Vec<String> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, ' ').collect();
            format!("{} {} {}", f[0], f[2], f[3])
        })
        .collect();
    assert_eq!(
        requests,
        [
            "127.0.0.2 127.0.0.1 GET /split HTTP/1.0",
            "127.0.0.2 127.0.0.1 POST /p HTTP/1.1",
            "127.0.0.3 127.0.0.1 HELO example",
        ],
        "{text}"
    );
}

/// Sends `GET /PATH` from `from` through pen to a [`NameServer`] and reads the greeting and
/// the echo, so that pen has read (and logged) the request.
fn logged_request(from: &str, addr: std::net::SocketAddr, path: &str) {
    let req = format!("GET /{path} HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut s = connect_from(from, addr);
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = vec![0u8; 2 + req.len()];
    s.read_exact(&mut buf).unwrap();
}

/// The log file may be a pipe or FIFO (`-l /dev/stdout` under a log collector): pen starts
/// without waiting for a reader, and a reader that falls behind costs records, never
/// traffic. The original waited in `open` for a reader, then blocked in `write`.
#[test]
fn a_log_fifo_whose_reader_is_behind_holds_up_no_traffic() {
    use std::os::unix::fs::OpenOptionsExt;
    let backend = NameServer::start("A");
    let dir = temp_dir("logfifo");
    let fifo = dir.join("log.fifo");
    mkfifo(&fifo);
    let (_pen, addr) = start_pen(&[
        "-f",
        "-l",
        fifo.to_str().unwrap(),
        "127.0.0.1:{port}",
        &backend.spec(),
    ]);

    // 5,000 pipelined requests: some 630 KB of records, more than the pipe (64 KiB) and
    // pen's backlog (256 KiB) hold. All of it is relayed.
    let (total, path) = (5000, "x".repeat(80));
    let req = format!("GET /{path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut s = connect_from("127.0.0.2", addr);
    let mut r = s.try_clone().unwrap();
    let want = 2 + req.len() * total;
    let echo = std::thread::spawn(move || {
        let mut buf = vec![0u8; want];
        r.read_exact(&mut buf)
    });
    s.write_all(req.repeat(total).as_bytes()).unwrap();
    echo.join().unwrap().unwrap();
    assert_eq!(which_from("127.0.0.3", addr), "A");

    // A reader comes: it gets what pen kept, whole lines in order, then new records.
    let mut log = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let (mut got, mut chunk) = (Vec::new(), vec![0u8; 1 << 16]);
    let end = Instant::now() + DEADLINE;
    while !String::from_utf8_lossy(&got).contains("/marker ") {
        assert!(Instant::now() < end, "no marker record after the backlog");
        while let Ok(k @ 1..) = log.read(&mut chunk) {
            got.extend_from_slice(&chunk[..k]);
        }
        // Each request is also a loop pass in which pen writes what it kept.
        logged_request("127.0.0.4", addr, "marker");
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = String::from_utf8(got).unwrap();
    let flood: Vec<&str> = text
        .lines()
        .take_while(|l| !l.contains("/marker "))
        .collect();
    for l in &flood {
        let f: Vec<&str> = l.splitn(4, ' ').collect();
        assert_eq!(
            (f[0], f[2], f[3]),
            ("127.0.0.2", "127.0.0.1", &*format!("GET /{path} HTTP/1.1")),
            "{l:?}"
        );
    }
    assert!(
        (1000..total).contains(&flood.len()),
        "{} of {total} records kept",
        flood.len()
    );
}
