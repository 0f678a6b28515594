//! The replication drop-in `systemd/epochwal.service.d/replicate.conf`: with
//! it in place systemd loads the unit, the sandbox opens exactly the network
//! replication needs (AF_INET/AF_INET6 besides AF_UNIX, no private network
//! namespace, no IP deny list) and nothing else, and the exposure stays at
//! most 1.5 (`systemd-analyze security --offline=yes --root=`, which reads
//! drop-ins from the root's /etc/systemd/system).
//!
//! Prints a notice and passes when `systemd-analyze` is not installed.

mod common;

use common::unit_analysis::{exposure, failing, finding, root_with_unit, security};

const MAX_EXPOSURE: f64 = 1.5;

#[test]
fn the_dropin_opens_the_network_and_nothing_else() {
    let base = root_with_unit(&[]);
    let Some(before) = security(base.path()) else {
        return;
    };
    let with = root_with_unit(&["replicate.conf"]);
    let after = security(with.path()).unwrap();
    let (b, a) = (exposure(&before), exposure(&after));
    eprintln!("exposure without the drop-in {b}, with it {a}");
    assert!(a <= MAX_EXPOSURE, "{after}");
    assert!(a > b, "the drop-in must change what the analysis sees");
    // Opened: Internet sockets, the host network, no IP deny list.
    assert!(finding(&after, "RestrictAddressFamilies=~AF_(INET|INET6)").contains('✗'));
    assert!(finding(&after, "PrivateNetwork=").contains('✗'));
    // Still closed: packet and netlink sockets, and every other hardening
    // line the base unit passes except the network ones.
    assert!(finding(&after, "RestrictAddressFamilies=~AF_PACKET").contains('✓'));
    assert!(finding(&after, "RestrictAddressFamilies=~AF_NETLINK").contains('✓'));
    let newly: Vec<String> = failing(&after)
        .into_iter()
        .filter(|s| !failing(&before).contains(s))
        .collect();
    for s in &newly {
        assert!(
            s.starts_with("RestrictAddressFamilies=~AF_(INET")
                || s.starts_with("PrivateNetwork=")
                || s.starts_with("IPAddressDeny="),
            "the drop-in opened more than the network: {s}\n{after}"
        );
    }
}
