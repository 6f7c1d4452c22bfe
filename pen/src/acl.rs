//! Access control lists (control.md §6): the ten numbered lists, adding and clearing
//! entries, and the exact first-match evaluation of the original.
//!
//! Entries are normalised when added (address & mask, or the IPv6 prefix), which fixes
//! the original's never-matching unmasked entries (pen.md §13.2 #30, control.md §6.4).
//! A list index outside 0..=9 is rejected when adding and denies when matching, where the
//! original read past its table for index 10 (same defect).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::clients::Peer;
use crate::command::{AclAction, AclMatch, AclRule};

/// How many ACL lists there are (indices 0..=9), as in the original.
pub const ACL_LISTS: usize = 10;

/// The ten ACL lists. List 0 screens clients, the control port and every server unless
/// configured otherwise (control.md §6.3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acls {
    lists: [Vec<AclRule>; ACL_LISTS],
}

/// A rejected `acl` command; `Display` is one line naming the problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclError(pub String);

impl fmt::Display for AclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AclError {}

impl Acls {
    /// Ten empty lists; an empty list permits everyone.
    pub fn new() -> Acls {
        Acls::default()
    }

    /// Appends `rule` to `list`, normalising its address so that host bits outside the
    /// mask or prefix are cleared (fixes pen.md §13.2 #30). Rejects a list outside 0..=9
    /// and an IPv6 prefix longer than 128 (control.md §6.4).
    pub fn add(&mut self, list: u8, rule: AclRule) -> Result<(), AclError> {
        let Some(entries) = self.lists.get_mut(usize::from(list)) else {
            return Err(AclError(format!("acl {list} out of range (0..9)")));
        };
        let matcher = match rule.matcher {
            AclMatch::V4 { addr, mask } => AclMatch::V4 {
                addr: addr & mask,
                mask,
            },
            AclMatch::V6 { addr, len } => {
                if len > 128 {
                    return Err(AclError(format!(
                        "acl {list}: ipv6 prefix length {len} out of range (0..128)"
                    )));
                }
                let bits = u128::from(addr) & prefix_mask(len);
                AclMatch::V6 {
                    addr: Ipv6Addr::from(bits),
                    len,
                }
            }
            country @ AclMatch::Country(_) => country,
        };
        entries.push(AclRule {
            action: rule.action,
            matcher,
        });
        Ok(())
    }

    /// Empties `list` (`no acl N`); an index outside 0..=9 is ignored.
    pub fn clear(&mut self, list: u8) {
        if let Some(entries) = self.lists.get_mut(usize::from(list)) {
            entries.clear();
        }
    }

    /// The entries of `list` in insertion order (for `write`); empty when out of range.
    pub fn rules(&self, list: u8) -> &[AclRule] {
        self.lists.get(usize::from(list)).map_or(&[], Vec::as_slice)
    }

    /// Whether `list` lets `peer` through, exactly as control.md §6.2: walk the entries in
    /// order, the first entry of the peer's family that matches decides; entries of the
    /// other family (and country entries, which never match without GeoIP) are skipped but
    /// still set the default, which is the opposite of the **last** entry's action. An
    /// empty list permits. Unix-socket peers are always permitted. IPv4-mapped IPv6 peers
    /// are IPv6, so IPv4 entries ignore them. A list outside 0..=9 denies (the original
    /// denied for >10 and read out of bounds for 10: pen.md §13.2 #30).
    pub fn permits(&self, list: u8, peer: &Peer) -> bool {
        let Some(entries) = self.lists.get(usize::from(list)) else {
            return false;
        };
        let ip = match peer {
            Peer::Unix => return true,
            Peer::Ip(sa) => sa.ip(),
        };
        let mut last = AclAction::Deny; // an empty list: "opposite of deny" = permit
        for rule in entries {
            last = rule.action;
            if matches(&rule.matcher, ip) {
                return rule.action == AclAction::Permit;
            }
        }
        last == AclAction::Deny
    }
}

/// Whether one entry matches a client address of either family (control.md §6.2 step 2).
fn matches(matcher: &AclMatch, ip: IpAddr) -> bool {
    match (matcher, ip) {
        (AclMatch::V4 { addr, mask }, IpAddr::V4(client)) => client & *mask == *addr & *mask,
        (AclMatch::V6 { addr, len }, IpAddr::V6(client)) => {
            let mask = prefix_mask(*len);
            u128::from(client) & mask == u128::from(*addr) & mask
        }
        // No GeoIP in this build: country entries never match (control.md §6.1).
        _ => false,
    }
}

/// The 128-bit mask of an IPv6 prefix of `len` bits (lengths above 128 saturate; `add`
/// rejects them before they get here).
fn prefix_mask(len: u8) -> u128 {
    match len {
        0 => 0,
        1..=127 => u128::MAX << (128 - u32::from(len)),
        _ => u128::MAX,
    }
}

/// An IPv4 entry for `addr` under `mask`, for callers building rules by hand.
pub fn v4(action: AclAction, addr: Ipv4Addr, mask: Ipv4Addr) -> AclRule {
    AclRule {
        action,
        matcher: AclMatch::V4 { addr, mask },
    }
}

/// An IPv6 entry for `addr/len`, for callers building rules by hand.
pub fn v6(action: AclAction, addr: Ipv6Addr, len: u8) -> AclRule {
    AclRule {
        action,
        matcher: AclMatch::V6 { addr, len },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    use AclAction::{Deny, Permit};

    const HOST: Ipv4Addr = Ipv4Addr::BROADCAST;

    fn ip4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn peer(s: &str) -> Peer {
        let ip: IpAddr = s.parse().unwrap();
        Peer::Ip(SocketAddr::new(ip, 40000))
    }

    fn list(rules: Vec<AclRule>) -> Acls {
        let mut acls = Acls::new();
        for r in rules {
            acls.add(0, r).unwrap();
        }
        acls
    }

    /// ACL 0 verdicts for 127.0.0.1, .2 and .3.
    fn verdicts(acls: &Acls) -> [bool; 3] {
        ["127.0.0.1", "127.0.0.2", "127.0.0.3"].map(|a| acls.permits(0, &peer(a)))
    }

    fn country(action: AclAction, cc: &str) -> AclRule {
        AclRule {
            action,
            matcher: AclMatch::Country(cc.to_string()),
        }
    }

    #[test]
    fn captured_ipv4_table() {
        // control.md §6.2, captured with clients from 127.0.0.1/.2/.3.
        const OK: bool = true;
        const NO: bool = false;
        let cases: Vec<(Vec<AclRule>, [bool; 3])> = vec![
            (vec![v4(Deny, ip4("0.0.0.0"), ip4("0.0.0.0"))], [NO, NO, NO]),
            (vec![], [OK, OK, OK]),
            (vec![v4(Permit, ip4("127.0.0.2"), HOST)], [NO, OK, NO]),
            (vec![v4(Deny, ip4("127.0.0.2"), HOST)], [OK, NO, OK]),
            (
                vec![
                    v4(Permit, ip4("127.0.0.0"), ip4("255.0.0.0")),
                    v4(Deny, ip4("127.0.0.2"), HOST),
                ],
                [OK, OK, OK],
            ),
            (
                vec![
                    v4(Deny, ip4("127.0.0.2"), HOST),
                    v4(Permit, ip4("127.0.0.3"), HOST),
                ],
                [NO, NO, OK],
            ),
            (vec![v6(Permit, "::1".parse().unwrap(), 128)], [NO, NO, NO]),
            (vec![v6(Deny, "::1".parse().unwrap(), 128)], [OK, OK, OK]),
            (vec![country(Permit, "SE")], [NO, NO, NO]),
        ];
        for (rules, want) in cases {
            let acls = list(rules.clone());
            assert_eq!(verdicts(&acls), want, "{rules:?}");
        }
    }

    #[test]
    fn unmasked_entry_is_normalised() {
        // The original stored `permit 127.0.0.2 255.0.0.0` unmasked, so it never matched
        // and denied everyone; normalising it fixes pen.md §13.2 #30.
        let acls = list(vec![v4(Permit, ip4("127.0.0.2"), ip4("255.0.0.0"))]);
        assert_eq!(
            acls.rules(0)[0],
            v4(Permit, ip4("127.0.0.0"), ip4("255.0.0.0"))
        );
        assert_eq!(verdicts(&acls), [true, true, true]);
        assert!(!acls.permits(0, &peer("10.0.0.1")));
    }

    #[test]
    fn captured_ipv6_table() {
        // control.md §6.2, IPv6 listener on ::1, client ::1.
        let one: Ipv6Addr = "::1".parse().unwrap();
        let any = Ipv6Addr::UNSPECIFIED;
        let client = peer("::1");
        assert!(Acls::new().permits(0, &client));
        assert!(list(vec![v6(Permit, one, 128)]).permits(0, &client));
        assert!(!list(vec![v6(Deny, any, 0)]).permits(0, &client));
        assert!(list(vec![v6(Permit, any, 64)]).permits(0, &client));
        assert!(list(vec![v4(Deny, ip4("127.0.0.1"), HOST)]).permits(0, &client));
    }

    #[test]
    fn unmasked_ipv6_entry_is_normalised() {
        // `permit ::1/64` never matched in the original (§13.2 #30); stored as ::/64 now.
        let acls = list(vec![v6(Permit, "::1".parse().unwrap(), 64)]);
        assert_eq!(acls.rules(0)[0], v6(Permit, Ipv6Addr::UNSPECIFIED, 64));
        assert!(acls.permits(0, &peer("::1")));
        assert!(!acls.permits(0, &peer("1::1")));
    }

    #[test]
    fn ipv6_prefix_boundaries() {
        let net: Ipv6Addr = "2001:db8::".parse().unwrap();
        let acls = list(vec![v6(Permit, net, 33)]);
        assert!(acls.permits(0, &peer("2001:db8:7fff::1")));
        assert!(!acls.permits(0, &peer("2001:db8:8000::1")));
        let acls = list(vec![v6(Permit, "2001:db8::1".parse().unwrap(), 127)]);
        assert!(acls.permits(0, &peer("2001:db8::")));
        assert!(!acls.permits(0, &peer("2001:db8::2")));
    }

    #[test]
    fn other_family_sets_the_default() {
        // The last entry decides the default even when it can never match this family.
        let acls = list(vec![
            v4(Deny, ip4("127.0.0.2"), HOST),
            v6(Permit, "::1".parse().unwrap(), 128),
        ]);
        assert_eq!(verdicts(&acls), [false, false, false]);
        let acls = list(vec![
            v4(Permit, ip4("127.0.0.2"), HOST),
            country(Deny, "SE"),
        ]);
        assert_eq!(verdicts(&acls), [true, true, true]);
    }

    #[test]
    fn first_match_wins() {
        let acls = list(vec![
            v4(Deny, ip4("127.0.0.2"), HOST),
            v4(Permit, ip4("127.0.0.0"), ip4("255.0.0.0")),
        ]);
        assert_eq!(verdicts(&acls), [true, false, true]);
    }

    #[test]
    fn mapped_ipv6_clients_ignore_ipv4_entries() {
        let acls = list(vec![v4(Deny, ip4("127.0.0.1"), HOST)]);
        assert!(!acls.permits(0, &peer("127.0.0.1")));
        assert!(acls.permits(0, &peer("::ffff:127.0.0.1")));
        let acls = list(vec![v6(Deny, "::ffff:127.0.0.1".parse().unwrap(), 128)]);
        assert!(!acls.permits(0, &peer("::ffff:127.0.0.1")));
        assert!(acls.permits(0, &peer("127.0.0.1")));
    }

    #[test]
    fn unix_peers_are_always_permitted() {
        let acls = list(vec![v4(Deny, ip4("0.0.0.0"), ip4("0.0.0.0"))]);
        assert!(acls.permits(0, &Peer::Unix));
    }

    #[test]
    fn list_bounds() {
        let mut acls = Acls::new();
        let rule = v4(Deny, ip4("127.0.0.1"), HOST);
        let err = acls.add(10, rule.clone()).unwrap_err();
        assert_eq!(err.to_string(), "acl 10 out of range (0..9)");
        acls.add(9, rule.clone()).unwrap();
        assert_eq!(acls.rules(9), &[rule][..]);
        assert!(acls.rules(10).is_empty());
        // Index 10 and beyond deny everyone (the original read out of bounds for 10).
        assert!(!acls.permits(10, &peer("127.0.0.1")));
        assert!(!acls.permits(255, &peer("127.0.0.1")));
        assert!(!acls.permits(10, &Peer::Unix));
        acls.clear(10); // ignored
        assert!(!acls.permits(9, &peer("127.0.0.1")));
        acls.clear(9);
        assert!(acls.permits(9, &peer("127.0.0.1")));
    }

    #[test]
    fn ipv6_prefix_over_128_is_rejected() {
        let mut acls = Acls::new();
        let err = acls
            .add(3, v6(Permit, Ipv6Addr::LOCALHOST, 129))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "acl 3: ipv6 prefix length 129 out of range (0..128)"
        );
        assert!(acls.rules(3).is_empty());
        acls.add(3, v6(Permit, Ipv6Addr::LOCALHOST, 128)).unwrap();
        acls.add(3, v6(Permit, Ipv6Addr::LOCALHOST, 0)).unwrap();
        assert_eq!(acls.rules(3)[1], v6(Permit, Ipv6Addr::UNSPECIFIED, 0));
    }

    #[test]
    fn lists_are_independent() {
        let mut acls = Acls::new();
        acls.add(1, v4(Deny, ip4("127.0.0.1"), HOST)).unwrap();
        assert!(acls.permits(0, &peer("127.0.0.1")));
        assert!(!acls.permits(1, &peer("127.0.0.1")));
        assert!(acls.permits(1, &peer("127.0.0.2")));
    }

    #[test]
    fn country_entries_are_kept() {
        let mut acls = Acls::new();
        acls.add(2, country(Deny, "SE")).unwrap();
        assert_eq!(acls.rules(2), &[country(Deny, "SE")][..]);
        // Never matches, so the default is the opposite of deny.
        assert!(acls.permits(2, &peer("127.0.0.1")));
    }
}
