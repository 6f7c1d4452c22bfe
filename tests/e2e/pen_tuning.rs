//! Tuning whose effect is on pen's CPU use rather than on the traffic: `busy_poll`, and
//! how its window adapts.

use std::io::{Read, Write};
use std::net::TcpStream;
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

/// The window adapts: when events come further apart than `busy_poll` allows, pen stops
/// polling and sleeps between them (a fixed 1 ms window after each event would keep it
/// busy about half of the time here).
#[test]
fn busy_poll_sleeps_through_gaps_longer_than_its_window() {
    let a = NameServer::start("A");
    let (pen, addr) = start_pen(&["-f", "-O", "busy_poll 1000", "127.0.0.1:{port}", &a.spec()]);
    let (name, mut s) = hello_from("127.0.0.2", addr);
    assert_eq!(name, "A");
    let cpu = cpu_while_trickling(&pen, &mut s);
    assert!(
        cpu <= 0.15,
        "busy_poll 1000 with 2 ms gaps: pen used {cpu:.2} s of CPU in 1 s"
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
