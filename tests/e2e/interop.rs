//! Mixed deployments: the original C pen suite working with ours, in every direction a
//! user can mix them on loopback.
//! - the original pen's log records and the original penlog's lines reach our penlogd;
//! - our penctl drives the original pen, and the original penctl drives ours, with the
//!   same replies, the HTML status page included;
//! - a config file that either pen writes is read by the other without losing a setting;
//! - the original mergelogs reads our pen's local log;
//! - both pens send the same clients to the same servers (tracking, hash, round robin),
//!   so swapping one for the other moves no client.
//!
//! The originals are Debian's `pen` package (0.34.1; `.ci/run` installs it). Our pen and
//! penlog feeding the *original* penlogd is not tested here: it binds 0.0.0.0, and these
//! tests use loopback addresses only. Our records' bytes are pinned to the original's
//! captures by common's logrec tests instead.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::util::{
    as_user, connect_from, penctl, run_program, start_pen, start_pen_with, start_penlogd,
    tcp_listeners, temp_dir, wait_for_file, wait_lines, wait_received, wait_until, which_from,
    NameServer, Proc, DEADLINE,
};

/// The original program `name` from Debian's `pen` package.
fn original(name: &str) -> String {
    let path = format!("/usr/bin/{name}");
    assert!(
        Path::new(&path).exists(),
        "{path} missing: apt-get install pen, the original C suite (.ci/run does)"
    );
    path
}

/// Starts the original pen with `args` (`{port}` as in [`start_pen_with`]) on 127.0.0.1.
fn start_original_pen(args: &[&str]) -> (Proc, SocketAddr) {
    let pen = original("pen");
    start_pen_with(
        |argv| Proc::start_program(&pen, argv),
        "127.0.0.1".parse().unwrap(),
        args,
    )
}

/// Runs one control command with the original penctl; asserts exit 0.
fn original_penctl(ctl: &str, cmd: &str) -> String {
    let words: Vec<&str> = std::iter::once(ctl).chain(cmd.split(' ')).collect();
    let prog = original("penctl");
    let (rc, out, err) = run_program(Command::new(&prog), &prog, &words, b"");
    assert_eq!(rc, 0, "original penctl {cmd}: {err}");
    out
}

/// Which pen to start.
#[derive(Clone, Copy)]
enum Pen {
    Ours,
    Original,
}

/// Starts `which` pen in the foreground with a control port on 127.0.0.1 (and `-u nobody`
/// as root, which both pens need before they open one), then `args`; waits until the
/// control port listens and returns it.
fn pen_with_ctl(which: Pen, args: &[&str]) -> (Proc, String) {
    let ctl = format!("127.0.0.1:{}", crate::util::free_port());
    let mut argv = vec!["-f", "-C", &ctl];
    argv.extend(as_user());
    argv.extend_from_slice(args);
    let (pen, _) = match which {
        Pen::Ours => start_pen(&argv),
        Pen::Original => start_original_pen(&argv),
    };
    let ctl_addr: SocketAddr = ctl.parse().unwrap();
    wait_until("the control port", || {
        tcp_listeners(pen.pid()).contains(&ctl_addr)
    });
    (pen, ctl)
}

/// Sends `request` through pen from the client address `from` to a [`NameServer`] called
/// "web" and reads its greeting and the echo of the request's first line, so that pen has
/// relayed (and logged) the request by the time it returns.
fn request_from(from: &str, pen: SocketAddr, request: &str) {
    let mut s = connect_from(from, pen);
    s.write_all(request.as_bytes()).unwrap();
    let mut r = BufReader::new(&s);
    let mut got = String::new();
    for _ in 0..2 {
        r.read_line(&mut got).unwrap();
    }
    let first = request.split_inclusive('\n').next().unwrap_or_default();
    assert_eq!(
        got,
        format!("web\n{first}"),
        "greeting and echo through pen"
    );
}

/// `GET /a.html` from 127.0.0.10 and `GET /b.html` from 127.0.0.11, through pen.
fn two_clients(pen: SocketAddr) {
    for (from, path) in [("127.0.0.10", "/a.html"), ("127.0.0.11", "/b.html")] {
        request_from(
            from,
            pen,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"),
        );
    }
}

#[test]
fn the_original_pen_and_penlog_feed_our_penlogd() {
    let dir = temp_dir("the_original_pen_and_penlog_feed_our_penlogd");
    let out = dir.join("access.log");
    let (d, logd) = start_penlogd("127.0.0.1", &["-l", out.to_str().unwrap()]);
    let web = NameServer::start_on("127.0.0.2:0", "web");
    let log = logd.to_string();
    let (_pen, addr) = start_original_pen(&["-f", "-l", &log, "127.0.0.1:{port}", &web.spec()]);

    two_clients(addr);
    wait_received(&d, 2);

    // The web server's own lines show pen's address; the original penlog sends them from
    // the web server's address.
    let web_log = "\
127.0.0.1 - - [21/Nov/2026:04:44:32 +0000] \"GET /a.html HTTP/1.1\" 200 2\n\
127.0.0.1 - - [21/Nov/2026:04:44:32 +0000] \"GET /b.html HTTP/1.1\" 404 9\n";
    let penlog = original("penlog");
    let port = logd.port().to_string();
    let (rc, _, err) = run_program(
        Command::new(&penlog),
        &penlog,
        &["127.0.0.1", &port, "127.0.0.2"],
        web_log.as_bytes(),
    );
    assert_eq!(rc, 0, "original penlog: {err}");

    assert_eq!(
        wait_lines(&out, 2),
        [
            "127.0.0.10 - - [21/Nov/2026:04:44:32 +0000] \"GET /a.html HTTP/1.1\" 200 2",
            "127.0.0.11 - - [21/Nov/2026:04:44:32 +0000] \"GET /b.html HTTP/1.1\" 404 9",
        ]
    );
}

#[test]
fn penctl_works_across_implementations() {
    let web = NameServer::start("web");
    let spec = web.spec();
    let dir = temp_dir("penctl_works_across_implementations");
    // Both pens run as nobody when started as root, and write their status pages then.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let page = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let (theirs_page, ours_page) = (page("theirs.html"), page("ours.html"));
    let (_theirs, their_ctl) = pen_with_ctl(
        Pen::Original,
        &["-w", &theirs_page, "127.0.0.1:{port}", &spec],
    );
    let (_ours, our_ctl) = pen_with_ctl(Pen::Ours, &["-w", &ours_page, "127.0.0.1:{port}", &spec]);

    // Our penctl talks to the original pen, the original penctl to ours; the replies,
    // settings and queries alike, are the same.
    for cmd in [
        "mode",
        "roundrobin",
        "weight",
        "mode",
        "blacklist 9",
        "blacklist",
        "timeout 4",
        "timeout",
        "tracking 30",
        "tracking",
        "server 0 max 5",
        "server 0 weight 3",
        "servers",
        "acl 1 permit 127.0.0.1",
        "client_acl 1",
        "client_acl",
        "idle_timeout 5",
        "conn_max",
        "clients_max",
        "recent",
        "status",
    ] {
        // The status page's clock line may tick between the two.
        let untimed = |page: String| -> String {
            page.lines()
                .filter(|l| !l.starts_with("Time "))
                .map(|l| format!("{l}\n"))
                .collect()
        };
        let from_ours = untimed(penctl(&their_ctl, cmd));
        let from_theirs = untimed(original_penctl(&our_ctl, cmd));
        assert_eq!(from_ours, from_theirs, "{cmd}");
    }
    assert!(
        std::fs::read_to_string(&ours_page).is_ok_and(|p| p.contains("<h1>Pen status page</h1>")),
        "status wrote {ours_page}"
    );
    assert_eq!(
        penctl(&their_ctl, "servers"),
        format!(
            "0 addr 127.0.0.1 port {} conn 0 max 5 hard 0 weight 3 prio 0 sx 0 rx 0\n",
            web.addr.port()
        ),
        "the settings took effect"
    );
}

/// A config file's lines without the two header comments (time, restart command).
fn body(path: &Path) -> Vec<String> {
    wait_for_file(path);
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().skip(2).map(str::to_string).collect()
}

#[test]
fn config_files_cross_over() {
    let dir = temp_dir("config_files_cross_over");
    // Both pens run as nobody when started as root, and write their files then.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let file = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let (a, b) = (NameServer::start("a"), NameServer::start("b"));

    // The original, set up away from its defaults, writes its configuration...
    let (a_spec, b_spec) = (format!("{}:10:20:3", a.spec()), b.spec());
    let (_theirs, ctl) = pen_with_ctl(
        Pen::Original,
        &[
            "-r",
            "-W",
            "-b",
            "7",
            "-t",
            "4",
            "-H",
            "-O",
            "acl 3 permit 127.0.0.0 255.0.0.0",
            "-O",
            "acl 3 deny ::1/128",
            "-O",
            "server 1 acl 3",
            "-O",
            "tcp_fastclose up",
            "-O",
            "prio",
            "127.0.0.1:{port}",
            &a_spec,
            &b_spec,
        ],
    );
    original_penctl(&ctl, &format!("write {}", file("theirs.cfg")));
    let theirs_body = body(Path::new(&file("theirs.cfg")));
    assert!(
        theirs_body.contains(&"roundrobin".to_string()),
        "{theirs_body:?}"
    );

    // ... which our pen reads and writes back with the same lines first ...
    let (_ours, ctl) = pen_with_ctl(Pen::Ours, &["-F", &file("theirs.cfg"), "127.0.0.1:{port}"]);
    penctl(&ctl, &format!("write {}", file("ours.cfg")));
    let ours_body = body(Path::new(&file("ours.cfg")));
    assert_eq!(
        ours_body.get(..theirs_body.len()),
        Some(&theirs_body[..]),
        "ours starts with the original's lines"
    );

    // ... and the original reads ours back to the state it started from.
    let (mut again, ctl) = pen_with_ctl(
        Pen::Original,
        &["-F", &file("ours.cfg"), "127.0.0.1:{port}"],
    );
    original_penctl(&ctl, &format!("write {}", file("again.cfg")));
    assert_eq!(body(Path::new(&file("again.cfg"))), theirs_body);
    // It knows every command in our file except multi_accept, which came with 0.35. (It
    // says so on stdout, which it flushes when it exits.)
    again.signal(libc::SIGTERM);
    again.wait_status(DEADLINE);
    let ignored: Vec<String> = again
        .output()
        .lines()
        .filter(|l| l.contains("ignoring command"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        ignored,
        ["do_cmd: ignoring command starting with 'multi_accept'"],
        "{}",
        again.output()
    );
}

#[test]
fn the_original_mergelogs_reads_our_local_log() {
    let dir = temp_dir("the_original_mergelogs_reads_our_local_log");
    let pen_log = dir.join("pen.log");
    let web = NameServer::start_on("127.0.0.2:0", "web");
    let (mut pen, addr) = start_pen(&[
        "-f",
        "-l",
        pen_log.to_str().unwrap(),
        "127.0.0.1:{port}",
        &web.spec(),
    ]);
    two_clients(addr);
    pen.signal(libc::SIGTERM);
    assert_eq!(pen.wait_exit(DEADLINE), Some(0), "{}", pen.output());

    // The web server's log for the same requests, at the times pen logged them.
    let recs = wait_lines(&pen_log, 2);
    let mut web_log = String::new();
    for rec in &recs {
        let f: Vec<&str> = rec.splitn(4, ' ').collect();
        let secs: i64 = f[1].parse().unwrap_or_else(|_| panic!("{rec}"));
        let when = chrono::DateTime::from_timestamp(secs, 0).unwrap();
        web_log += &format!(
            "127.0.0.1 - - [{}] \"{}\" 200 2\n",
            when.format("%d/%b/%Y:%H:%M:%S +0000"),
            f[3]
        );
    }
    let web_file = dir.join("web.log");
    std::fs::write(&web_file, web_log).unwrap();

    let mergelogs = original("mergelogs");
    let mut cmd = Command::new(&mergelogs);
    cmd.env("TZ", "UTC");
    let pair = format!("127.0.0.2:{}", web_file.display());
    let (rc, out, err) = run_program(
        cmd,
        &mergelogs,
        &["-p", pen_log.to_str().unwrap(), &pair],
        b"",
    );
    assert_eq!(rc, 0, "mergelogs: {err}");
    // Only the clients and requests: the original mergelogs gets the hour wrong for some
    // lines (its mktime with an unset tm_isdst, logging.md §6).
    let got: Vec<(&str, &str)> = out
        .lines()
        .map(|l| {
            let req = l.split('"').nth(1).unwrap_or_default();
            (l.split(' ').next().unwrap_or_default(), req)
        })
        .collect();
    assert_eq!(
        got,
        [
            ("127.0.0.10", "GET /a.html HTTP/1.1"),
            ("127.0.0.11", "GET /b.html HTTP/1.1"),
        ],
        "{out}"
    );
}

#[test]
fn servers_are_picked_as_the_original_picks_them() {
    let backends = ["A", "B", "C"].map(NameServer::start);
    let specs: Vec<String> = backends.iter().map(NameServer::spec).collect();
    for mode in [None, Some("-h"), Some("-r")] {
        let mut args: Vec<&str> = vec!["-f"];
        args.extend(mode);
        args.push("127.0.0.1:{port}");
        args.extend(specs.iter().map(String::as_str));
        let (_theirs, theirs) = start_original_pen(&args);
        let (_ours, ours) = start_pen(&args);
        // Twelve clients, twice each: tracking, the hash of the address, or the cursor.
        let picks = |pen: SocketAddr| -> Vec<String> {
            (2..14)
                .flat_map(|n| [n, n])
                .map(|n| which_from(&format!("127.0.0.{n}"), pen))
                .collect()
        };
        let want = picks(theirs);
        assert!(want.iter().all(|p| !p.is_empty()), "{mode:?}: {want:?}");
        assert_eq!(picks(ours), want, "{mode:?}");
    }
}
