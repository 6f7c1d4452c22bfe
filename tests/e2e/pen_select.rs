//! Server selection through the real pen binary (pen.md §2, §4; control.md §6): which
//! backend each client lands on under tracking, round robin, hash, stubborn, weight, prio,
//! soft/hard limits, failover and blacklisting, the emergency and abuse servers, ACLs,
//! tracking expiry and client-table eviction.
//!
//! Backends are [`NameServer`]s named A, B, C (indices 0, 1, 2) that greet each connection
//! with their name, so the first line a client reads through pen says where it landed.
//! Clients connect from 127.0.0.2, .3, … so that pen tells them apart.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering::SeqCst;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::util::{self, connect_from, dead_addr, hello_from, which_from, NameServer, Proc};

// ---- harness ----

/// Backends A, B and C.
fn abc() -> [NameServer; 3] {
    ["A", "B", "C"].map(NameServer::start)
}

/// Server specs: each backend's address plus `extra` (`":MAX:HARD:WEIGHT:PRIO"` fields).
fn specs(servers: &[(&NameServer, &str)]) -> Vec<String> {
    servers
        .iter()
        .map(|(s, extra)| format!("{}{extra}", s.spec()))
        .collect()
}

/// Plain specs for the given backends.
fn plain(servers: &[&NameServer]) -> Vec<String> {
    servers.iter().map(|s| s.spec()).collect()
}

/// Starts `pen -f OPTS 127.0.0.1:PORT SERVERS` and waits until it listens (without a probe
/// connection, which would move the round-robin cursor: see `util::start_pen`).
fn pen(opts: &[&str], servers: &[String]) -> (Proc, SocketAddr) {
    let mut args = vec!["-f"];
    args.extend_from_slice(opts);
    args.push("127.0.0.1:{port}");
    args.extend(servers.iter().map(String::as_str));
    util::start_pen(&args)
}

/// One connection from each of `froms` in turn, each closed after the greeting: the
/// backend names, "" where pen closed the connection without a byte.
fn lands(pen: SocketAddr, froms: &[&str]) -> Vec<String> {
    froms.iter().map(|from| which_from(from, pen)).collect()
}

/// Like [`lands`], but keeps every connection open (they count against limits and
/// weights as long as they are held).
fn hold(pen: SocketAddr, froms: &[&str]) -> (Vec<String>, Vec<TcpStream>) {
    froms.iter().map(|from| hello_from(from, pen)).unzip()
}

/// One connection from `from`: the backend name and the client's source port.
fn which_with_port(from: &str, pen: SocketAddr) -> (String, u16) {
    let s = connect_from(from, pen);
    let port = s.local_addr().unwrap().port();
    let mut line = String::new();
    let _ = BufReader::new(s.try_clone().unwrap()).read_line(&mut line);
    let _ = s.shutdown(Shutdown::Both);
    (line.trim_end().to_string(), port)
}

/// pen.md §4.4 hash on a little-endian host: the address bytes as a little-endian u32,
/// XORed under `-r` with the byte-swapped port, modulo the number of servers.
fn hash_index(ip: Ipv4Addr, port: Option<u16>, n: u32) -> usize {
    let mut h = u32::from_le_bytes(ip.octets());
    if let Some(p) = port {
        h ^= u32::from(p.swap_bytes());
    }
    (h % n) as usize
}

/// Wall-clock seconds: pen's blacklist and tracking times count these.
fn wall() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Sleeps until the wall clock reads at least `second`. A real time wait: blacklist and
/// tracking expiry have no other observable readiness condition.
fn wait_wall(second: u64) {
    while wall() < second {
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until nothing accepts on `addr` any more (a backend that was stopped).
fn wait_closed(addr: SocketAddr) {
    util::wait_until(&format!("{addr} to refuse connections"), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
    });
}

// ---- tracking and round robin (§4.2–4.4, §4.11) ----

#[test]
fn tracking_sticks_each_client_to_its_first_server() {
    // §4.11 row 1: round robin starts at index 1, and each address keeps its server.
    let [a, b, c] = abc();
    let (_pen, addr) = pen(&[], &plain(&[&a, &b, &c]));
    let got = lands(
        addr,
        &[
            "127.0.0.2",
            "127.0.0.2",
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.3",
            "127.0.0.3",
            "127.0.0.4",
            "127.0.0.4",
            "127.0.0.2",
        ],
    );
    assert_eq!(got, ["B", "B", "B", "C", "C", "C", "A", "A", "B"]);
}

#[test]
fn roundrobin_ignores_the_remembered_server() {
    // §4.11 row 2: -r, five connections from one address → B C A B C.
    let [a, b, c] = abc();
    let (_pen, addr) = pen(&["-r"], &plain(&[&a, &b, &c]));
    let got = lands(addr, &["127.0.0.2"; 5]);
    assert_eq!(got, ["B", "C", "A", "B", "C"]);
}

// ---- hash (§4.4) ----

#[test]
fn hash_picks_by_little_endian_address() {
    let [a, b, c] = abc();
    let names = ["A", "B", "C"];
    let (_pen, addr) = pen(&["-h"], &plain(&[&a, &b, &c]));
    // Verified values (§4.4): .1→2, .2→0, .3→1, .4→2, .5→0; a round robin would give
    // B C A B C instead. Each address twice: the hash, then stickiness, agree.
    let cases = [(1, "C"), (2, "A"), (3, "B"), (4, "C"), (5, "A")];
    for (host, want) in cases {
        let ip = util::lo(host);
        assert_eq!(names[hash_index(ip, None, 3)], want, "formula for {ip}");
        let from = ip.to_string();
        assert_eq!(lands(addr, &[&from, &from]), [want, want], "client {ip}");
    }
}

#[test]
fn hash_with_roundrobin_takes_in_the_source_port() {
    let [a, b, c] = abc();
    let names = ["A", "B", "C"];
    let (_pen, addr) = pen(&["-h", "-r"], &plain(&[&a, &b, &c]));
    // One address, ports chosen by the kernel: each landing must match the formula with
    // that port, and the address must reach more than one server.
    let mut seen = HashSet::new();
    for _ in 0..30 {
        let (got, port) = which_with_port("127.0.0.2", addr);
        let want = names[hash_index(util::lo(2), Some(port), 3)];
        assert_eq!(got, want, "127.0.0.2 from port {port}");
        seen.insert(got);
        if seen.len() == 3 {
            break;
        }
    }
    assert!(
        seen.len() >= 2,
        "one address should reach several servers: {seen:?}"
    );
}

// ---- stubborn (§4.7, §4.11 row 4) ----

#[test]
fn stubborn_closes_instead_of_failing_over() {
    // §4.11 row 4: -s -e E, servers A and B with B dead: the first client goes to B by
    // round robin and is closed; later clients go to A (B is blacklisted); E is unused.
    let a = NameServer::start("A");
    let e = NameServer::start("E");
    let dead = dead_addr().to_string();
    let (_pen, addr) = pen(&["-s", "-e", &e.spec()], &[a.spec(), dead]);
    let got = lands(addr, &["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    assert_eq!(got, ["", "A", "A"]);
    assert_eq!(e.accepted.load(SeqCst), 0);
}

#[test]
fn stubborn_client_whose_server_died_is_closed() {
    // The client is sticky to B; B stops. Without -s it would fail over to C.
    let [a, b, c] = abc();
    let (_pen, addr) = pen(&["-s"], &plain(&[&a, &b, &c]));
    assert_eq!(lands(addr, &["127.0.0.2"]), ["B"]);
    let b_addr = b.addr;
    drop(b);
    wait_closed(b_addr);
    assert_eq!(lands(addr, &["127.0.0.2"]), [""], "no failover under -s");
    // A new client goes on by round robin past B, which is now blacklisted.
    assert_eq!(lands(addr, &["127.0.0.3"]), ["C"]);
}

// ---- weight and prio (§4.4) ----

#[test]
fn weight_spreads_held_connections_by_capacity() {
    // Weights 1 and 3 (5th spec field), 8 held connections from 8 addresses (the same
    // address would stick): least 256·c/weight, ties to the lowest index.
    let a = NameServer::start("A");
    let b = NameServer::start("B");
    let (_pen, addr) = pen(&["-W"], &specs(&[(&a, ":0:0:1"), (&b, ":0:0:3")]));
    let froms: Vec<String> = (2..10).map(|n| util::lo(n).to_string()).collect();
    let froms: Vec<&str> = froms.iter().map(String::as_str).collect();
    let (got, _held) = hold(addr, &froms);
    assert_eq!(got, ["A", "B", "B", "B", "A", "B", "B", "B"]);
}

#[test]
fn prio_lowest_value_wins() {
    // Prio 5, 2, 7: every new client goes to B (round robin would give B C A).
    let [a, b, c] = abc();
    let servers = specs(&[(&a, ":0:0:0:5"), (&b, ":0:0:0:2"), (&c, ":0:0:0:7")]);
    let (_pen, addr) = pen(&["-O", "prio"], &servers);
    let got = lands(addr, &["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    assert_eq!(got, ["B", "B", "B"]);
}

#[test]
fn prio_full_winner_fails_over_in_index_order() {
    // §4.4 prio note: prio 0 (max 1), 9, 1. While A is full, new clients go to index 1
    // (prio 9), not to the prio-1 server at index 2.
    let [a, b, c] = abc();
    let servers = specs(&[(&a, ":1:0:0:0"), (&b, ":0:0:0:9"), (&c, ":0:0:0:1")]);
    let (_pen, addr) = pen(&["-O", "prio"], &servers);
    let (got, _held) = hold(addr, &["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    assert_eq!(got, ["A", "B", "B"]);
}

// ---- soft and hard limits (§4.5) ----

#[test]
fn soft_and_hard_limits() {
    // §4.5 verified example: server 0 is `:1:2` with prio 0, server 1 has prio 1.
    let a = NameServer::start("A");
    let b = NameServer::start("B");
    let (_pen, addr) = pen(
        &["-O", "prio"],
        &specs(&[(&a, ":1:2:0:0"), (&b, ":0:0:0:1")]),
    );
    // 1st → A; 2nd → A (sticky and c=1 < hard=2); 3rd → B (c=2 ≥ hard).
    let (got, _held) = hold(addr, &["127.0.0.2"; 3]);
    assert_eq!(got, ["A", "A", "B"]);
    // A new client is not sticky to A, so the soft limit (c=2 ≥ max=1) sends it on.
    let (got, _held2) = hold(addr, &["127.0.0.3"]);
    assert_eq!(got, ["B"]);
}

#[test]
fn soft_limit_with_no_hard_limit() {
    // `:1:0`: the hard limit defaults to the soft one, so the 2nd connection moves on.
    let a = NameServer::start("A");
    let b = NameServer::start("B");
    let (_pen, addr) = pen(
        &["-O", "prio"],
        &specs(&[(&a, ":1:0:0:0"), (&b, ":0:0:0:1")]),
    );
    let (got, _held) = hold(addr, &["127.0.0.2"; 2]);
    assert_eq!(got, ["A", "B"]);
}

// ---- failover and blacklisting (§4.1, §4.7, §4.10, §4.11 row 3) ----

#[test]
fn failover_blacklists_the_dead_server_until_it_expires() {
    // Servers A, B (dead), C with -b 2.
    let a = NameServer::start("A");
    let c = NameServer::start("C");
    let dead = dead_addr().to_string();
    let (_pen, addr) = pen(&["-b", "2"], &[a.spec(), dead, c.spec()]);

    // .2: round robin picks B, whose connect fails: B is blacklisted and the client
    // fails over to the next index, C. The cursor stays on B.
    let before = wall();
    assert_eq!(lands(addr, &["127.0.0.2"]), ["C"]);
    let failed_by = wall();
    // Within the window round robin skips B: C A C A. Were B tried again (no
    // blacklist), .5 would fail over to C and leave the cursor on B, and .6 would go
    // to C, not A.
    let got = lands(addr, &["127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"]);
    assert!(
        wall() < before + 2,
        "this machine took the whole blacklist window; the result proves nothing"
    );
    assert_eq!(got, ["C", "A", "C", "A"]);

    // After expiry B is eligible again: .7 is sent to B, fails over to C, and moves the
    // cursor to B, so .8 goes to C and .9 to A. Were B still blacklisted: C A C.
    wait_wall(failed_by + 2);
    let got = lands(addr, &["127.0.0.7", "127.0.0.8", "127.0.0.9"]);
    assert_eq!(got, ["C", "C", "A"]);
}

// ---- emergency and abuse servers (§4.8, §4.9) ----

#[test]
fn emergency_server_serves_when_every_server_is_down() {
    // §4.11 row 5: -e E, both servers dead → E E E.
    let e = NameServer::start("E");
    let (d0, d1) = (dead_addr().to_string(), dead_addr().to_string());
    let (_pen, addr) = pen(&["-e", &e.spec()], &[d0, d1]);
    let got = lands(addr, &["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    assert_eq!(got, ["E", "E", "E"]);
}

#[test]
fn emergency_server_unused_while_a_server_is_up() {
    // A up, B dead: the first client fails over from B to A, later ones skip the
    // blacklisted B; E never sees a connection.
    let a = NameServer::start("A");
    let e = NameServer::start("E");
    let dead = dead_addr().to_string();
    let (_pen, addr) = pen(&["-e", &e.spec()], &[a.spec(), dead]);
    let got = lands(addr, &["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    assert_eq!(got, ["A", "A", "A"]);
    assert_eq!(e.accepted.load(SeqCst), 0);
}

/// The client ACL that denies 127.0.0.3 only.
const DENY_3: [&str; 4] = ["-O", "acl 1 deny 127.0.0.3", "-O", "client_acl 1"];

#[test]
fn denied_client_goes_to_the_abuse_server() {
    let [a, b, c] = abc();
    let x = NameServer::start("X");
    let x_spec = x.spec();
    let mut opts = vec!["-B", &x_spec];
    opts.extend(DENY_3);
    let (_pen, addr) = pen(&opts, &plain(&[&a, &b, &c]));
    let got = lands(addr, &["127.0.0.3", "127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    // The denied client does not move the round-robin cursor.
    assert_eq!(got, ["X", "B", "X", "C"]);
}

#[test]
fn denied_client_without_abuse_server_is_closed() {
    let [a, b, c] = abc();
    let (_pen, addr) = pen(&DENY_3, &plain(&[&a, &b, &c]));
    let got = lands(addr, &["127.0.0.3", "127.0.0.2"]);
    assert_eq!(got, ["", "B"]);
}

#[test]
fn denied_client_never_reaches_the_emergency_server() {
    // The original sent it to -e when -B was not set, an ACL bypass (§13.2 #8).
    let [a, b, c] = abc();
    let e = NameServer::start("E");
    let e_spec = e.spec();
    let mut opts = vec!["-e", &e_spec];
    opts.extend(DENY_3);
    let (_pen, addr) = pen(&opts, &plain(&[&a, &b, &c]));
    let got = lands(addr, &["127.0.0.3", "127.0.0.2", "127.0.0.3"]);
    assert_eq!(got, ["", "B", ""]);
    assert_eq!(e.accepted.load(SeqCst), 0);
}

// ---- ACLs (control.md §6) ----

/// Starts pen on A, B, C with `opts`, then connects once from each of `hosts` (127.0.0.N)
/// and checks which were let through. Permitted clients are all new, so they land by
/// round robin, B C A…; a denied one is closed and does not move the cursor.
fn acl_row(opts: &[&str], hosts: &[u8], permitted: &[bool], servers: &[String]) {
    let (_pen, addr) = pen(opts, servers);
    let mut rr = ["B", "C", "A"].iter().cycle();
    let want: Vec<&str> = permitted
        .iter()
        .map(|&ok| if ok { *rr.next().unwrap() } else { "" })
        .collect();
    let froms: Vec<String> = hosts.iter().map(|&n| util::lo(n).to_string()).collect();
    let froms: Vec<&str> = froms.iter().map(String::as_str).collect();
    assert_eq!(lands(addr, &froms), want, "pen {opts:?}, clients {froms:?}");
}

#[test]
fn client_acl_0_matches_the_captured_table() {
    // control.md §6.2, clients .1 .2 .3 through ACL 0, the default client_acl.
    let [a, b, c] = abc();
    let servers = plain(&[&a, &b, &c]);
    let (ok, no) = (true, false);
    let rows: &[(&[&str], [bool; 3])] = &[
        (&["acl 0 deny 0.0.0.0 0.0.0.0"], [no, no, no]),
        (&[], [ok, ok, ok]),
        (&["acl 0 permit 127.0.0.2"], [no, ok, no]),
        (&["acl 0 deny 127.0.0.2"], [ok, no, ok]),
        (
            &["acl 0 permit 127.0.0.0 255.0.0.0", "acl 0 deny 127.0.0.2"],
            [ok, ok, ok],
        ),
        (
            &["acl 0 deny 127.0.0.2", "acl 0 permit 127.0.0.3"],
            [no, no, ok],
        ),
        // IPv6 entries never match IPv4 clients but still set the default.
        (&["acl 0 permit ::1"], [no, no, no]),
        (&["acl 0 deny ::1"], [ok, ok, ok]),
        // The original never matched this unmasked entry (all DENIED); entries are now
        // normalised to 127.0.0.0/8 (control.md §6.4, pen.md §13.2 #30).
        (&["acl 0 permit 127.0.0.2 255.0.0.0"], [ok, ok, ok]),
    ];
    for (acl, permitted) in rows {
        let opts: Vec<&str> = acl.iter().flat_map(|line| ["-O", line]).collect();
        acl_row(&opts, &[1, 2, 3], permitted, &servers);
    }
}

#[test]
fn client_acl_accepts_ipv4_cidr() {
    // The original rejected `/len` for IPv4 (control.md §6.4). Were the /8 entry
    // dropped, the list would be just `deny 127.0.0.2` and .2 would be closed.
    let [a, b, c] = abc();
    let servers = plain(&[&a, &b, &c]);
    let opts = [
        "-O",
        "acl 1 permit 127.0.0.0/8",
        "-O",
        "acl 1 deny 127.0.0.2",
        "-O",
        "client_acl 1",
    ];
    acl_row(&opts, &[1, 2, 3], &[true, true, true], &servers);
    // 127.0.0.2/31 is .2 and .3; the rest fall to the opposite of `permit`.
    let opts = ["-O", "acl 1 permit 127.0.0.2/31", "-O", "client_acl 1"];
    acl_row(&opts, &[1, 2, 3, 4], &[false, true, true, false], &servers);
}

#[test]
fn server_acl_makes_a_client_skip_that_server() {
    // `server 1 acl 2` given with -O survives the positional servers (pen.md §2.2); ACL 2
    // denies .2, so .2 never lands on B. With -r every connection is a round-robin pick.
    let [a, b, c] = abc();
    let opts = ["-r", "-O", "acl 2 deny 127.0.0.2", "-O", "server 1 acl 2"];
    let (_pen, addr) = pen(&opts, &plain(&[&a, &b, &c]));
    let got = lands(
        addr,
        &[
            "127.0.0.3", // B
            "127.0.0.2", // C
            "127.0.0.2", // A
            "127.0.0.2", // B refused by its ACL (no blacklisting): fails over to C
            "127.0.0.3", // C
            "127.0.0.3", // A
            "127.0.0.3", // B: still fine for .3
        ],
    );
    assert_eq!(got, ["B", "C", "A", "C", "C", "A", "B"]);
}

// ---- client table: tracking time and eviction (§4.2) ----

#[test]
fn tracking_time_expires_a_returning_client() {
    // -T 1, the fixed behaviour (pen.md §13.2 #2): an entry older than 1 s is unknown.
    let [a, b, c] = abc();
    let (_pen, addr) = pen(&["-T", "1"], &plain(&[&a, &b, &c]));
    let got = lands(addr, &["127.0.0.2", "127.0.0.2", "127.0.0.3"]);
    assert_eq!(got, ["B", "B", "C"], "sticky within the tracking time");
    // Expired once `last + 1 < now` in whole seconds.
    let last = wall();
    wait_wall(last + 2);
    // New again: round robin after C gives A; the old entry would have said B.
    assert_eq!(lands(addr, &["127.0.0.2"]), ["A"]);
}

#[test]
fn full_client_table_evicts_the_least_recently_used() {
    // Two servers so that a returning new client lands elsewhere than its old server.
    let a = NameServer::start("A");
    let b = NameServer::start("B");
    let servers = plain(&[&a, &b]);
    let seq = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.2"];

    // -c 2: .4 evicts .2, which then comes back as new: round robin after B gives A.
    let (_pen, addr) = pen(&["-c", "2"], &servers);
    assert_eq!(lands(addr, &seq), ["B", "A", "B", "A"]);

    // With room for three, .2 is remembered and sticks to B.
    let (_pen3, addr) = pen(&["-c", "3"], &servers);
    assert_eq!(lands(addr, &seq), ["B", "A", "B", "B"]);

    // Least recently *used*: .2 is touched again, so .4 evicts .3 and .2 stays on B
    // (a new .2 would have gone to A).
    let (_pen_lru, addr) = pen(&["-c", "2"], &servers);
    let got = lands(
        addr,
        &[
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.2",
            "127.0.0.4",
            "127.0.0.2",
        ],
    );
    assert_eq!(got, ["B", "A", "B", "B", "B"]);
}
