//! Tuning whose effect is on how pen waits for events rather than on the traffic:
//! `busy_poll` and `poll_nap`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

/// CPU seconds pen uses while a connection sends one byte every 2 ms for a second and
/// reads each back (the backend echoes), so pen has a little work every 2 ms.
fn cpu_while_trickling(pen: &Proc, s: &mut TcpStream) -> f64 {
    let cpu0 = cpu_seconds(pen.pid());
    let t0 = Instant::now();
    let mut byte = [0u8; 1];
    while t0.elapsed() < Duration::from_secs(1) {
        s.write_all(b"x").unwrap();
        s.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x");
        thread::sleep(Duration::from_millis(2));
    }
    cpu_seconds(pen.pid()) - cpu0
}

/// `busy_poll 10000`: after events pen keeps polling for 10 ms instead of sleeping, so a
/// byte every 2 ms keeps it on the CPU; `busy_poll 0`, set at run time, lets it sleep
/// between the bytes again.
#[test]
fn busy_poll_keeps_pen_polling_between_events_until_switched_off() {
    let a = NameServer::start("A");
    let (pen, addr, ctl) = pen_with_control(&["-O", "busy_poll 10000"], &[&a.spec()]);
    assert_eq!(penctl(&ctl, "busy_poll"), "10000\n");
    let (name, mut s) = hello_from("127.0.0.2", addr);
    assert_eq!(name, "A");
    let spinning = cpu_while_trickling(&pen, &mut s);
    assert_eq!(penctl(&ctl, "busy_poll 0"), "0\n");
    let sleeping = cpu_while_trickling(&pen, &mut s);
    // Generous bounds: the machine is shared, so a spinning pen may not get its whole
    // second, and the CPU clock ticks in 10 ms steps.
    assert!(
        spinning >= 0.25,
        "busy_poll 10000: pen used only {spinning:.2} s of CPU in 1 s"
    );
    assert!(
        sleeping <= 0.1,
        "busy_poll 0: pen used {sleeping:.2} s of CPU in 1 s"
    );
}

/// A window above 10 ms is refused, at startup with exit 1 and one line naming it.
#[test]
fn busy_poll_out_of_range_is_refused() {
    let (rc, _, err) = run(
        "pen",
        &["-f", "-O", "busy_poll 10001", "127.0.0.1:1", "127.0.0.1:2"],
    );
    assert_eq!(rc, 1);
    assert!(
        err.contains("busy_poll") && err.contains("10001") && err.lines().count() == 1,
        "{err}"
    );
}

/// What pen's thread is doing, from `/proc/PID/syscall`: the number of the system call it
/// is blocked in, or `None` while it runs.
fn current_syscall(pid: i32) -> Option<i64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    text.split(' ').next()?.trim().parse().ok()
}

/// Samples pen's system call for up to `limit`; counts the samples in which pen sleeps
/// outside `epoll_wait` (nanosleep) and in which it waits in `epoll_wait`. Stops early once
/// `enough` naps were seen.
fn sample_waits(pid: i32, limit: Duration, enough: usize) -> (usize, usize) {
    let (mut naps, mut polls) = (0, 0);
    let t0 = Instant::now();
    while t0.elapsed() < limit && naps < enough {
        match current_syscall(pid) {
            Some(n) if n == libc::SYS_nanosleep || n == libc::SYS_clock_nanosleep => naps += 1,
            Some(n) if n == libc::SYS_epoll_wait || n == libc::SYS_epoll_pwait => polls += 1,
            _ => {}
        }
    }
    (naps, polls)
}

/// Eight clients echo one byte at a time through pen until dropped, so pen's passes
/// often find several connections ready at once.
struct EchoLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl EchoLoad {
    fn start(pen: SocketAddr) -> EchoLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..8)
            .map(|_| {
                let (name, mut s) = hello_from("127.0.0.2", pen);
                assert_eq!(name, "A");
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut byte = [0u8; 1];
                    while !stop.load(Ordering::Relaxed) {
                        if s.write_all(b"x").is_err() || s.read_exact(&mut byte).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        EchoLoad { stop, threads }
    }
}

impl Drop for EchoLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// `poll_nap` (20 µs by default): under load pen naps between passes instead of blocking
/// in `epoll_wait`; `poll_nap 0`, set at run time, makes it block in `epoll_wait` only.
#[test]
fn poll_nap_sleeps_outside_epoll_under_load_until_switched_off() {
    let a = NameServer::start("A");
    let (pen, addr, ctl) = pen_with_control(&[], &[&a.spec()]);
    assert_eq!(penctl(&ctl, "poll_nap"), "20\n");
    let load = EchoLoad::start(addr);
    let (naps, _) = sample_waits(pen.pid(), Duration::from_secs(30), 3);
    assert!(naps >= 3, "pen under load was never seen napping");

    assert_eq!(penctl(&ctl, "poll_nap 0"), "0\n");
    let (naps, polls) = sample_waits(pen.pid(), Duration::from_secs(1), 1);
    drop(load);
    assert_eq!(naps, 0, "pen napped after poll_nap 0");
    assert!(polls > 0, "pen under load was never seen in epoll_wait");
}

/// A nap above 1 ms is refused, at startup with exit 1 and one line naming it.
#[test]
fn poll_nap_out_of_range_is_refused() {
    let (rc, _, err) = run(
        "pen",
        &["-f", "-O", "poll_nap 1001", "127.0.0.1:1", "127.0.0.1:2"],
    );
    assert_eq!(rc, 1);
    assert!(
        err.contains("poll_nap") && err.contains("1001") && err.lines().count() == 1,
        "{err}"
    );
}
