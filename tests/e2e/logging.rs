//! The logging suite end to end: penlog → penlogd with hand-made pen records (IPv4 and
//! IPv6), identical concurrent requests, HUP after `mv`, TERM (with datagrams queued), a
//! 100,000-pair burst, bad input, the window and source filters, rotation, the offline
//! merge, and finally a real Apache httpd logging through penlog behind the real pen.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{
    self, lines, penlogd_counts, penlogd_report, run_with_stdin, start_penlogd, temp_dir, udp_from,
    wait_lines, wait_received, wait_until, Proc, DEADLINE,
};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Sends `data` from `sock` to penlogd.
fn send(sock: &UdpSocket, to: SocketAddr, data: &[u8]) {
    sock.send_to(data, to).unwrap();
}

/// Pipes `input` through `penlog HOST PORT LOCAL`, which must exit 0.
fn penlog(to: SocketAddr, local: &str, input: &str) {
    let port = to.port().to_string();
    let host = to.ip().to_string();
    let (code, _, err) = run_with_stdin("penlog", &[&host, &port, local], input.as_bytes());
    assert_eq!(code, 0, "penlog failed: {err}");
    assert!(err.is_empty(), "penlog complained: {err}");
}

/// TERM, exit 0, and the counters of its exit report.
fn terminate(mut d: Proc) -> HashMap<String, u64> {
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(DEADLINE), Some(0), "{}", d.output());
    let out = d.output();
    let last = out.lines().rfind(|l| l.contains("exiting: received"));
    penlogd_counts(last.unwrap_or_else(|| panic!("no exit report:\n{out}")))
}

const COMMON: &str = "127.0.0.1 - - [21/Nov/2026:04:44:32 +0000]";

#[test]
fn penlog_lines_get_real_clients() {
    let dir = temp_dir("penlog_lines_get_real_clients");
    let log = dir.join("out.log");
    // `-H 0`: the unmatched line is written in arrival order, not after the hold
    // (early_web_line_waits_for_its_record tests the hold).
    let (d, addr) = start_penlogd("127.0.0.1", &["-H", "0", "-l", s(&log)]);
    let pen = udp_from("127.0.0.1");
    for (client, server, req) in [
        ("10.0.0.1", "127.0.0.2", "GET /a.html HTTP/1.1"),
        ("10.0.0.2", "127.0.0.3", "GET /b.html HTTP/1.1"),
        ("10.0.0.3", "127.0.0.2", "GET /same HTTP/1.1"),
        ("10.0.0.4", "127.0.0.2", "GET /same HTTP/1.1"),
        ("2001:db8::5", "127.0.0.2", "GET /v6client HTTP/1.1"),
    ] {
        send(
            &pen,
            addr,
            format!("+ {client} {server} {req}\n").as_bytes(),
        );
    }
    penlog(
        addr,
        "127.0.0.2",
        &format!(
            "{COMMON} \"GET /a.html HTTP/1.1\" 200 2\n\
             {COMMON} \"GET /same HTTP/1.1\" 200 2\n\
             {COMMON} \"GET /same HTTP/1.1\" 200 2\n\
             {COMMON} \"GET /v6client HTTP/1.1\" 200 1\n\
             {COMMON} \"GET /direct.html HTTP/1.1\" 404 236\n\
             a line without a request field\n"
        ),
    );
    penlog(
        addr,
        "127.0.0.3",
        &format!("{COMMON} \"GET /b.html HTTP/1.1\" 200 2 \"-\" \"curl/7.88.1\"\n"),
    );
    let got = wait_lines(&log, 7);
    let want = [
        "10.0.0.1 - - [21/Nov/2026:04:44:32 +0000] \"GET /a.html HTTP/1.1\" 200 2",
        "10.0.0.3 - - [21/Nov/2026:04:44:32 +0000] \"GET /same HTTP/1.1\" 200 2",
        "10.0.0.4 - - [21/Nov/2026:04:44:32 +0000] \"GET /same HTTP/1.1\" 200 2",
        "2001:db8::5 - - [21/Nov/2026:04:44:32 +0000] \"GET /v6client HTTP/1.1\" 200 1",
        "127.0.0.1 - - [21/Nov/2026:04:44:32 +0000] \"GET /direct.html HTTP/1.1\" 404 236",
        "a line without a request field",
        "10.0.0.2 - - [21/Nov/2026:04:44:32 +0000] \"GET /b.html HTTP/1.1\" 200 2 \"-\" \"curl/7.88.1\"",
    ];
    assert_eq!(got, want);
    let c = terminate(d);
    assert_eq!(
        (c["records"], c["lines"], c["matched"], c["unmatched"]),
        (5, 7, 5, 2)
    );
}

#[test]
fn ipv6_web_server_and_pen() {
    let dir = temp_dir("ipv6_web_server_and_pen");
    let log = dir.join("out.log");
    let (d, addr) = start_penlogd("::1", &["-l", s(&log)]);
    send(
        &udp_from("::1"),
        addr,
        b"+ 2001:db8::7 ::1 GET /six HTTP/1.1\n",
    );
    penlog(addr, "::1", "::1 - - [x] \"GET /six HTTP/1.1\" 200 1\n");
    assert_eq!(
        wait_lines(&log, 1),
        ["2001:db8::7 - - [x] \"GET /six HTTP/1.1\" 200 1"]
    );
    terminate(d);
}

/// A web line that arrives before its pen record waits for it (`-H`, 200 ms by default;
/// generous here for a noisy machine); a line whose record never comes is written
/// unchanged when its wait ends, without waiting for TERM, or at TERM.
#[test]
fn early_web_line_waits_for_its_record() {
    let dir = temp_dir("early_web_line_waits_for_its_record");
    let log = dir.join("out.log");
    let (d, addr) = start_penlogd("127.0.0.1", &["-b", "-l", s(&log), "-H", "10000"]);
    let pen = udp_from("127.0.0.1");
    let web = udp_from("127.0.0.2");
    send(&web, addr, b"x \"GET /early HTTP/1.1\" 200\n");
    let c = wait_received(&d, 1);
    assert_eq!((c["lines"], c["waiting"]), (1, 1));
    send(&pen, addr, b"+ 10.0.0.7 127.0.0.2 GET /early HTTP/1.1\n");
    assert_eq!(
        wait_lines(&log, 1),
        ["10.0.0.7 \"GET /early HTTP/1.1\" 200"]
    );
    // TERM writes a line still waiting.
    send(&web, addr, b"x \"GET /pending HTTP/1.1\" 200\n");
    wait_received(&d, 3);
    let c = terminate(d);
    assert_eq!((c["matched"], c["unmatched"], c["waiting"]), (1, 1, 0));
    assert_eq!(lines(&log)[1], "x \"GET /pending HTTP/1.1\" 200");

    let log = dir.join("short.log");
    let (d, addr) = start_penlogd("127.0.0.1", &["-b", "-l", s(&log), "-H", "50"]);
    send(&web, addr, b"x \"GET /never HTTP/1.1\" 200\n");
    assert_eq!(wait_lines(&log, 1), ["x \"GET /never HTTP/1.1\" 200"]);
    let c = penlogd_report(&d);
    assert_eq!((c["lines"], c["unmatched"], c["waiting"]), (1, 1, 0));
}

#[test]
fn hup_after_mv_reopens_and_term_flushes() {
    let dir = temp_dir("hup_after_mv_reopens_and_term_flushes");
    let log = dir.join("out.log");
    let pidfile = dir.join("penlogd.pid");
    let (d, addr) = start_penlogd("127.0.0.1", &["-l", s(&log), "-p", s(&pidfile)]);
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        d.pid().to_string()
    );
    let web = udp_from("127.0.0.2");
    send(&web, addr, b"before\n");
    wait_lines(&log, 1);
    std::fs::rename(&log, dir.join("out.log.1")).unwrap();
    d.signal(libc::SIGHUP);
    wait_until("the reopened log", || log.exists());
    send(&web, addr, b"after\n");
    assert_eq!(wait_lines(&log, 1), ["after"]);
    assert_eq!(lines(&dir.join("out.log.1")), ["before"]);
    // TERM writes what is buffered: without -b a line may wait a few ms, so send the
    // last one right before TERM.
    send(&web, addr, b"last\n");
    wait_received(&d, 3);
    terminate(d);
    assert_eq!(lines(&log), ["after", "last"]);
    assert!(!pidfile.exists(), "pidfile not removed");
}

/// Datagrams still queued when TERM arrives are written, not thrown away with the socket.
#[test]
fn term_writes_queued_datagrams() {
    const N: usize = 20_000;
    let dir = temp_dir("term_writes_queued_datagrams");
    let log = dir.join("out.log");
    let (d, addr) = start_penlogd("127.0.0.1", &["-l", s(&log)]);
    let web = udp_from("127.0.0.2");
    web.connect(addr).unwrap();
    for i in 0..N {
        web.send(format!("line {i}\n").as_bytes()).unwrap();
    }
    let fin = terminate(d);
    assert_eq!(fin["dropped"], 0, "the receive buffer overflowed: {fin:?}");
    let written = lines(&log);
    assert_eq!(
        (written.len(), fin["received"]),
        (N, N as u64),
        "lines lost at TERM: {fin:?}"
    );
    assert_eq!(written.last().map(String::as_str), Some("line 19999"));
}

/// 100,000 record/line pairs as fast as one thread can send them: every line is written
/// (correctly attributed) or counted as dropped, and with the default buffer none is.
#[test]
fn burst_of_100k_pairs_is_accounted_for() {
    const N: usize = 100_000;
    let dir = temp_dir("burst_of_100k_pairs_is_accounted_for");
    let log = dir.join("out.log");
    let (d, addr) = start_penlogd("127.0.0.1", &["-l", s(&log), "-n", "1000"]);
    let pen = udp_from("127.0.0.1");
    let web = udp_from("127.0.0.2");
    pen.connect(addr).unwrap();
    web.connect(addr).unwrap();
    let (mut rec, mut line) = (Vec::with_capacity(100), Vec::with_capacity(100));
    for i in 0..N {
        rec.clear();
        line.clear();
        writeln!(
            rec,
            "+ 10.{}.{}.{} 127.0.0.2 GET /p/{i} HTTP/1.1",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        )
        .unwrap();
        writeln!(
            line,
            "127.0.0.2 - - [21/Nov/2026:04:00:00 +0000] \"GET /p/{i} HTTP/1.1\" 200 {i}"
        )
        .unwrap();
        pen.send(&rec).unwrap();
        web.send(&line).unwrap();
    }
    let sent = 2 * N as u64;
    let end = Instant::now() + DEADLINE * 3;
    let c = loop {
        let c = penlogd_report(&d);
        if c["received"] + c["dropped"] >= sent {
            break c;
        }
        assert!(Instant::now() < end, "penlogd is stuck: {c:?}");
        thread::sleep(Duration::from_millis(50));
    };
    let fin = terminate(d);
    let written = lines(&log);
    let mut wrong = 0;
    for l in &written {
        let (client, rest) = l.split_once(' ').unwrap();
        let i: usize = rest.rsplit(' ').next().unwrap().parse().unwrap();
        if client != format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255) {
            wrong += 1;
        }
    }
    let lost = N as u64 - written.len() as u64;
    assert!(
        lost <= fin["dropped"],
        "{lost} lines lost but only {} drops counted",
        fin["dropped"]
    );
    assert_eq!(wrong, 0, "misattributed lines");
    assert_eq!(
        c["dropped"], 0,
        "the default receive buffer dropped datagrams: {c:?}"
    );
    assert_eq!((fin["matched"], fin["lines"]), (N as u64, N as u64));
}

#[test]
fn bad_input_is_counted_and_survived() {
    let dir = temp_dir("bad_input_is_counted_and_survived");
    let log = dir.join("out.log");
    let (d, addr) = start_penlogd("127.0.0.1", &["-l", s(&log)]);
    let bad = udp_from("127.0.0.9");
    let mut seed = 0x2545_f491u32;
    let mut junk = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect()
    };
    let mut sent = 0;
    for n in [1, 3, 50, 700, 1023, 1024, 1025, 4000] {
        let mut j = junk(n);
        j[0] = b'+'; // as a would-be record
        send(&bad, addr, &j);
        j[0] = b'x'; // as a web line
        send(&bad, addr, &j);
        sent += 2;
    }
    send(&bad, addr, b"");
    send(&bad, addr, b"+");
    send(&bad, addr, b"+ this looks like a web line\n");
    send(&bad, addr, b"+ not-an-address 127.0.0.9 GET / HTTP/1.1\n");
    send(&bad, addr, b"+ 2001:db8::1 ::1 GET /v6 HTTP/1.1\n"); // killed the original
    send(&bad, addr, b"no newline at the end");
    let big = format!("{}\n", "L".repeat(65_000));
    send(&bad, addr, big.as_bytes());
    sent += 7;
    wait_received(&d, sent);
    // Still joining correctly afterwards.
    send(
        &udp_from("127.0.0.1"),
        addr,
        b"+ 10.0.0.1 127.0.0.2 GET /ok HTTP/1.1\n",
    );
    send(
        &udp_from("127.0.0.2"),
        addr,
        b"web \"GET /ok HTTP/1.1\" 200\n",
    );
    wait_until("the good line", || {
        lines(&log)
            .iter()
            .any(|l| l == "10.0.0.1 \"GET /ok HTTP/1.1\" 200")
    });
    let c = terminate(d);
    assert_eq!(c["empty"], 1);
    assert!(c["bad"] >= 4, "{c:?}");
    assert_eq!(c["records"], 2, "{c:?}");
    let out = lines(&log);
    assert!(out.iter().any(|l| l == "no newline at the end"));
    assert!(out.iter().any(|l| l.len() == 65_000));
}

#[test]
fn window_and_source_filters() {
    let dir = temp_dir("window_and_source_filters");
    let log = dir.join("out.log");
    let (d, addr) = start_penlogd(
        "127.0.0.1",
        &[
            "-b",
            "-l",
            s(&log),
            "-w",
            "1",
            "--pen-from",
            "127.0.0.1",
            "--web-from",
            "127.0.0.2/32",
        ],
    );
    let pen = udp_from("127.0.0.1");
    let web = udp_from("127.0.0.2");
    // A forged record from elsewhere is refused, and so is a line from an unknown server.
    send(
        &udp_from("127.0.0.66"),
        addr,
        b"+ 6.6.6.6 127.0.0.2 GET /f HTTP/1.1\n",
    );
    send(&pen, addr, b"+ 10.0.0.1 127.0.0.2 GET /f HTTP/1.1\n");
    send(&udp_from("127.0.0.3"), addr, b"x \"GET /f HTTP/1.1\" 200\n");
    send(&web, addr, b"x \"GET /f HTTP/1.1\" 200\n");
    assert_eq!(wait_lines(&log, 1), ["10.0.0.1 \"GET /f HTTP/1.1\" 200"]);
    // A record older than the window (1 s) is never used.
    send(&pen, addr, b"+ 10.0.0.2 127.0.0.2 GET /old HTTP/1.1\n");
    wait_received(&d, 5);
    thread::sleep(Duration::from_millis(1300)); // the age under test, not a readiness wait
    send(&web, addr, b"x \"GET /old HTTP/1.1\" 200\n");
    assert_eq!(wait_lines(&log, 2)[1], "x \"GET /old HTTP/1.1\" 200");
    let c = terminate(d);
    assert_eq!((c["refused"], c["expired"], c["matched"]), (2, 1, 1));
}

#[test]
fn rotates_by_size_and_gzips() {
    let dir = temp_dir("rotates_by_size_and_gzips");
    let log = dir.join("out.log");
    let (d, addr) = start_penlogd("127.0.0.1", &["-b", "-l", s(&log), "-r", "1K"]);
    let web = udp_from("127.0.0.2");
    let line = format!("{}\n", "r".repeat(99));
    for i in 0..30 {
        send(&web, addr, line.as_bytes());
        wait_received(&d, i + 1);
    }
    terminate(d);
    let mut total = lines(&log).len();
    let mut gz = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "gz") {
            gz += 1;
            let mut text = String::new();
            flate_cat(&p, &mut text);
            total += text.lines().count();
        }
    }
    assert!(gz >= 2, "expected rotated .gz files in {}", dir.display());
    assert_eq!(total, 30);
}

/// Decompresses with the system's gzip (the e2e crate has no flate2).
fn flate_cat(p: &Path, out: &mut String) {
    let o = Command::new("gzip")
        .args(["-dc", s(p)])
        .output()
        .expect("gzip");
    assert!(o.status.success());
    out.push_str(&String::from_utf8_lossy(&o.stdout));
}

#[test]
fn merge_mode_joins_files_and_gz() {
    let dir = temp_dir("merge_mode_joins_files_and_gz");
    let pen = dir.join("pen.log");
    std::fs::write(
        &pen,
        "10.0.0.1 1000000000 192.168.0.2 GET /x HTTP/1.0\n\
         10.0.0.2 1000000100 192.168.0.2 GET /x HTTP/1.0\n\
         10.0.0.9 1000000100 192.168.0.3 GET /x HTTP/1.0\n",
    )
    .unwrap();
    let web2 = dir.join("web2.log");
    std::fs::write(
        &web2,
        "192.168.0.2 - - [09/Sep/2001:03:46:45 +0200] \"GET /x HTTP/1.0\" 200 1\n\
         192.168.0.2 - - [09/Sep/2001:01:48:20 +0000] \"GET /x HTTP/1.0\" 200 1 \"-\" \"UA\"\n",
    )
    .unwrap();
    let web3 = dir.join("web3.log");
    std::fs::write(
        &web3,
        "192.168.0.3 - - [09/Sep/2001:01:48:19 +0000] \"GET /x HTTP/1.0\" 200 1\n",
    )
    .unwrap();
    let st = Command::new("gzip").arg(s(&web3)).status().expect("gzip");
    assert!(st.success());
    let out = dir.join("merged.log");
    let (code, _, err) = util::run(
        "penlogd",
        &[
            "--merge",
            s(&pen),
            "-l",
            s(&out),
            &format!("192.168.0.2:{}", s(&web2)),
            &format!("192.168.0.3:{}.gz", s(&web3)),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        lines(&out),
        [
            "10.0.0.1 - - [09/Sep/2001:03:46:45 +0200] \"GET /x HTTP/1.0\" 200 1",
            "10.0.0.9 - - [09/Sep/2001:01:48:19 +0000] \"GET /x HTTP/1.0\" 200 1",
            "10.0.0.2 - - [09/Sep/2001:01:48:20 +0000] \"GET /x HTTP/1.0\" 200 1 \"-\" \"UA\"",
        ]
    );
}

// ---------------------------------------------------------------------------------------
// A real Apache httpd behind the real pen.
// ---------------------------------------------------------------------------------------

const APACHE: &str = "/usr/sbin/apache2";
const MODULES: &str = "/usr/lib/apache2/modules";

/// An Apache started in the foreground with its own config; stopped (TERM, then KILL)
/// and reaped on drop, which also ends its piped penlogs.
struct Apache {
    child: Child,
    dir: PathBuf,
}

impl Apache {
    /// Two vhosts, 127.0.0.2:P2 (common format) and 127.0.0.3:P3 (combined), each logging
    /// through penlog to penlogd at `logd`, sent from its own address.
    fn start(dir: &Path, logd: SocketAddr) -> (Apache, SocketAddr, SocketAddr) {
        let docs = dir.join("htdocs");
        std::fs::create_dir_all(&docs).unwrap();
        for name in ["a.html", "b.html", "same.html"] {
            std::fs::write(docs.join(name), "ok\n").unwrap();
        }
        let penlog = util::bin("penlog");
        for _ in 0..5 {
            let p2 = util::free_port();
            let p3 = util::free_port();
            let logger = |ip: &str, fmt: &str| {
                format!(
                    "CustomLog \"|{} {} {} {ip}\" {fmt}",
                    penlog.display(),
                    logd.ip(),
                    logd.port()
                )
            };
            let conf = format!(
                "ServerRoot \"{root}\"\n\
                 ServerName localhost\n\
                 PidFile \"{root}/httpd.pid\"\n\
                 ErrorLog \"{root}/error.log\"\n\
                 LogLevel warn\n\
                 LoadModule mpm_event_module {MODULES}/mod_mpm_event.so\n\
                 LoadModule authz_core_module {MODULES}/mod_authz_core.so\n\
                 LoadModule dir_module {MODULES}/mod_dir.so\n\
                 LoadModule mime_module {MODULES}/mod_mime.so\n\
                 User www-data\n\
                 Group www-data\n\
                 StartServers 1\n\
                 ServerLimit 1\n\
                 ThreadsPerChild 8\n\
                 MaxRequestWorkers 8\n\
                 TypesConfig /etc/mime.types\n\
                 DocumentRoot \"{docs}\"\n\
                 <Directory \"{docs}\">\n  Require all granted\n</Directory>\n\
                 LogFormat \"%h %l %u %t \\\"%r\\\" %>s %b\" common\n\
                 LogFormat \"%h %l %u %t \\\"%r\\\" %>s %b \\\"%{{Referer}}i\\\" \\\"%{{User-Agent}}i\\\"\" combined\n\
                 Listen 127.0.0.2:{p2}\n\
                 Listen 127.0.0.3:{p3}\n\
                 <VirtualHost 127.0.0.2:{p2}>\n  {l2}\n</VirtualHost>\n\
                 <VirtualHost 127.0.0.3:{p3}>\n  {l3}\n</VirtualHost>\n",
                root = dir.display(),
                docs = docs.display(),
                l2 = logger("127.0.0.2", "common"),
                l3 = logger("127.0.0.3", "combined"),
            );
            let conf_path = dir.join("httpd.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let child = Command::new(APACHE)
                .args(["-f", s(&conf_path), "-DFOREGROUND"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start apache2 (apt-get install apache2)");
            let mut a = Apache {
                child,
                dir: dir.to_path_buf(),
            };
            let (a2, a3) = (
                SocketAddr::from(([127, 0, 0, 2], p2)),
                SocketAddr::from(([127, 0, 0, 3], p3)),
            );
            let end = Instant::now() + DEADLINE;
            loop {
                if [a2, a3].iter().all(|x| {
                    std::net::TcpStream::connect_timeout(x, Duration::from_millis(200)).is_ok()
                }) {
                    return (a, a2, a3);
                }
                if let Some(st) = a.child.try_wait().unwrap() {
                    let mut err = String::new();
                    if let Some(mut e) = a.child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                    if err.contains("in use") || log.contains("in use") {
                        break; // port race: try other ports
                    }
                    panic!("apache2 exited with {st}:\n{err}\n{log}");
                }
                assert!(
                    Instant::now() < end,
                    "apache2 did not listen on {a2} and {a3}"
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not find free ports for apache2");
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("apache2 in {} needed KILL", self.dir.display());
    }
}

/// One HTTP/1.0 request through pen from `client`; returns the status line.
fn get(client: &str, pen: SocketAddr, path: &str) -> String {
    let mut c = util::connect_from(client, pen);
    write!(
        c,
        "GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: e2e\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    let _ = c.read_to_string(&mut reply);
    reply.lines().next().unwrap_or_default().to_string()
}

#[test]
fn apache_behind_pen_logs_real_clients() {
    assert!(
        Path::new(APACHE).exists(),
        "{APACHE} missing: apt-get install apache2 (.ci/run does)"
    );
    let dir = temp_dir("apache_behind_pen_logs_real_clients");
    let log = dir.join("access.log");
    let (d, logd) = start_penlogd(
        "127.0.0.1",
        &[
            "-l",
            s(&log),
            "--web-from",
            "127.0.0.2",
            "--web-from",
            "127.0.0.3",
        ],
    );
    let (apache, a2, a3) = Apache::start(&dir, logd);
    let logtarget = logd.to_string();
    let (pen, pen_addr) = util::start_pen(&[
        "-f",
        "-r",
        "-l",
        &logtarget,
        "127.0.0.1:{port}",
        &a2.to_string(),
        &a3.to_string(),
    ]);
    // Clients from 127.0.0.2 and .3; round robin spreads them over both vhosts.
    let mut want = Vec::new();
    for round in 0..3 {
        for (client, path) in [
            ("127.0.0.2", "/a.html"),
            ("127.0.0.3", "/b.html"),
            ("127.0.0.2", "/same.html"),
            ("127.0.0.3", "/same.html"),
        ] {
            let status = get(client, pen_addr, path);
            assert!(status.contains(" 200 "), "{client} {path}: {status:?}");
            want.push((client.to_string(), path.to_string(), round));
        }
    }
    let got = wait_lines(&log, want.len());
    assert_eq!(got.len(), want.len(), "{got:#?}");
    let mut pairs: Vec<(String, String)> = got.iter().map(|l| client_and_path(l)).collect();
    let mut expected: Vec<(String, String)> = want
        .iter()
        .map(|(c, p, _)| (c.clone(), p.clone()))
        .collect();
    pairs.sort();
    expected.sort();
    assert_eq!(pairs, expected, "lines:\n{}", got.join("\n"));
    assert!(
        got.iter().all(|l| !l.starts_with("127.0.0.1 ")),
        "pen's address leaked:\n{}",
        got.join("\n")
    );
    // Both formats arrived (the .3 vhost logs combined).
    assert!(got.iter().any(|l| l.ends_with("\"-\" \"e2e\"")), "{got:#?}");

    // Rotation by mv + HUP, then more requests.
    std::fs::rename(&log, dir.join("access.log.1")).unwrap();
    d.signal(libc::SIGHUP);
    wait_until("the reopened access log", || log.exists());
    assert!(get("127.0.0.3", pen_addr, "/a.html").contains(" 200 "));
    assert!(get("127.0.0.2", pen_addr, "/b.html").contains(" 200 "));
    let after: Vec<(String, String)> = wait_lines(&log, 2)
        .iter()
        .map(|l| client_and_path(l))
        .collect();
    let mut after_sorted = after.clone();
    after_sorted.sort();
    assert_eq!(
        after_sorted,
        [
            ("127.0.0.2".into(), "/b.html".into()),
            ("127.0.0.3".into(), "/a.html".into())
        ]
    );
    drop(pen);
    drop(apache);
    let c = terminate(d);
    assert_eq!(c["unmatched"], 0, "{c:?}");
}

/// (client, path) of a consolidated line.
fn client_and_path(line: &str) -> (String, String) {
    let client = line.split(' ').next().unwrap_or_default().to_string();
    let path = line
        .split('"')
        .nth(1)
        .and_then(|r| r.split(' ').nth(1))
        .unwrap_or_default()
        .to_string();
    (client, path)
}

#[test]
fn chroot_and_user_with_groups() {
    let dir = temp_dir("chroot_and_user_with_groups");
    let (d, addr) = start_penlogd(
        "127.0.0.1",
        &[
            "-j",
            s(&dir),
            "-u",
            "nobody",
            "-l",
            "/out.log",
            "-p",
            "/pid",
        ],
    );
    // Both paths were opened inside the chroot, as root, before the privilege drop.
    assert_eq!(
        std::fs::read_to_string(dir.join("pid")).unwrap(),
        d.pid().to_string()
    );
    send(&udp_from("127.0.0.2"), addr, b"jailed\n");
    assert_eq!(wait_lines(&dir.join("out.log"), 1), ["jailed"]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        field("Uid:").split_whitespace().nth(1),
        Some("65534"),
        "{status}"
    );
    assert_eq!(
        field("Gid:").split_whitespace().nth(1),
        Some("65534"),
        "{status}"
    );
    assert!(
        !field("Groups:").split_whitespace().any(|g| g == "0"),
        "root's groups kept"
    );
    terminate(d);
}
