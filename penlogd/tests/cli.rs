//! penlogd's command line: exit codes, one-line errors, daemonising with a readiness
//! report, and the merge mode's file handling.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn penlogd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_penlogd"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run penlogd")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("penlogd-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn usage_errors_exit_1_on_stderr() {
    for args in [
        &[][..],
        &["0"],
        &["106536"],
        &["notaport"],
        &["1", "2"],
        &["-n", "0", "9"],
        &["-q", "9"],
        &["-r", "1M", "9"],
        &["-w", "99999999999999999", "9"],
        &["-H", "60001", "9"],
        &["-H", "-1", "9"],
    ] {
        let o = penlogd(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?}: usage must not go to stdout");
        assert!(!stderr(&o).is_empty(), "{args:?}");
    }
}

#[test]
fn huge_window_is_refused_clearly() {
    for args in [
        &["-w", "99999999999999999", "9"][..],
        &["--merge", "p", "--jitter", "315360001", "s:f"],
    ] {
        let o = penlogd(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&o).contains("too large (at most 315360000 seconds"),
            "{}",
            stderr(&o)
        );
    }
}

/// The daemon's options are refused in merge mode, and `--offset` outside it, instead of
/// being silently ignored.
#[test]
fn options_of_the_other_mode_are_refused() {
    for (args, names) in [
        (&["--merge", "p", "-f", "s:f"][..], ["--merge", "-f"]),
        (&["--merge", "p", "-H", "5", "s:f"], ["--merge", "--hold"]),
        (&["-n", "5", "--merge", "p", "s:f"], ["-n", "--merge"]),
        (
            &["--merge", "p", "-S", "127.0.0.1", "s:f"],
            ["--merge", "--web-from"],
        ),
        (&["--merge", "p", "--daily", "s:f"], ["--merge", "--daily"]),
        (&["--offset", "3", "9"], ["--offset", "--merge"]),
    ] {
        let o = penlogd(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let first = stderr(&o).lines().next().unwrap_or_default().to_string();
        for name in names {
            assert!(first.contains(name), "{args:?}: {first}");
        }
    }
}

#[test]
fn help_exits_0() {
    let o = penlogd(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("--merge"));
}

#[test]
fn startup_errors_are_one_line() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let free = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    for (args, want) in [
        (
            vec!["-f", "-L", "127.0.0.1", &port],
            format!("penlogd: can't bind 127.0.0.1:{port}:"),
        ),
        (
            vec![
                "-f",
                "-L",
                "127.0.0.1",
                "-l",
                "/nonexistent/dir/x.log",
                &free,
            ],
            "penlogd: can't open '/nonexistent/dir/x.log':".into(),
        ),
        (
            vec!["-f", "-L", "127.0.0.1", "-u", "no-such-user-x", &free],
            "penlogd: unknown user 'no-such-user-x'".into(),
        ),
        (
            vec!["-f", "-j", "/nonexistent/jail", "-L", "127.0.0.1", &free],
            "penlogd: can't chroot to '/nonexistent/jail'".into(),
        ),
        // Without -f the parent waits for the child's verdict and reports it.
        (
            vec!["-L", "127.0.0.1", "-l", "/nonexistent/dir/x.log", &free],
            "penlogd: can't open '/nonexistent/dir/x.log':".into(),
        ),
    ] {
        let o = penlogd(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.starts_with(&want), "{args:?}: {e}");
        assert_eq!(e.lines().count(), 1, "{args:?}: {e}");
    }
}

#[test]
fn daemonises_writes_pidfile_and_removes_it_on_term() {
    let dir = temp("daemon");
    let pidfile = dir.join("penlogd.pid");
    let log = dir.join("out.log");
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let o = penlogd(&[
        "-L",
        "127.0.0.1",
        "-p",
        pidfile.to_str().unwrap(),
        "-l",
        log.to_str().unwrap(),
        &port,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().parse().unwrap();
    let tx = UdpSocket::bind("127.0.0.2:0").unwrap();
    tx.send_to(b"a line\n", format!("127.0.0.1:{port}"))
        .unwrap();
    wait_for("the line", || {
        std::fs::read_to_string(&log).unwrap_or_default() == "a line\n"
    });
    // SAFETY: signalling the daemon we started, by the pid it wrote.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_for("pidfile removal", || !pidfile.exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn merge_errors() {
    let o = penlogd(&[
        "--merge",
        "/nonexistent/pen.log",
        "10.0.0.1:/nonexistent/web.log",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "penlogd: can't open '/nonexistent/pen.log': No such file or directory (os error 2)\n"
    );
    let o = penlogd(&["--merge", "p", "nocolon"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("bad server 'nocolon'"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn merge_refuses_an_input_as_output() {
    let dir = temp("merge-in-out");
    let pen = dir.join("pen.log");
    let web = dir.join("web.log");
    let link = dir.join("link.log");
    let pen_text = "10.0.0.1 1000000000 s GET / HTTP/1.0\n";
    let web_text = "x - - [09/Sep/2001:01:46:40 +0000] \"GET / HTTP/1.0\" 200 1\n";
    std::fs::write(&pen, pen_text).unwrap();
    std::fs::write(&web, web_text).unwrap();
    std::os::unix::fs::symlink(&web, &link).unwrap();
    let server = format!("s:{}", web.display());
    for (out, what) in [(&pen, &pen), (&web, &web), (&link, &web)] {
        let o = penlogd(&[
            "--merge",
            pen.to_str().unwrap(),
            "-l",
            out.to_str().unwrap(),
            &server,
        ]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert_eq!(
            stderr(&o),
            format!(
                "penlogd: output '{}' is the input '{}'; refusing to overwrite it\n",
                out.display(),
                what.display()
            )
        );
    }
    assert_eq!(std::fs::read_to_string(&pen).unwrap(), pen_text);
    assert_eq!(std::fs::read_to_string(&web).unwrap(), web_text);
    let out = dir.join("out.log");
    let o = penlogd(&[
        "--merge",
        pen.to_str().unwrap(),
        "-l",
        out.to_str().unwrap(),
        &server,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .starts_with("10.0.0.1 - - "));
    std::fs::remove_dir_all(dir).unwrap();
}
