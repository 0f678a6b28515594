//! The metrics drop-in `systemd/epochwal.service.d/metrics.conf`: it opens
//! exactly what serving `/metrics` needs (TCP/IP sockets, the host network,
//! loopback only, bind() of the default metrics port only) and nothing
//! else, and the exposure score stays at or below the replication
//! drop-in's (`systemd-analyze security --offline=yes --root=`).
//!
//! Prints a notice and passes when `systemd-analyze` is not installed.

mod common;

use common::unit_analysis::{exposure, failing, finding, root_with_unit, security};

#[test]
fn the_dropin_opens_the_metrics_port_and_nothing_else() {
    let base = root_with_unit(&[]);
    let Some(before) = security(base.path()) else {
        return;
    };
    let metrics = security(root_with_unit(&["metrics.conf"]).path()).unwrap();
    let replicate = security(root_with_unit(&["replicate.conf"]).path()).unwrap();
    let (b, m, r) = (exposure(&before), exposure(&metrics), exposure(&replicate));
    eprintln!("exposure: base unit {b}, with metrics.conf {m}, with replicate.conf {r}");
    assert!(
        m <= r,
        "metrics.conf exposes more than replicate.conf:\n{metrics}"
    );
    assert!(m > b, "the drop-in must change what the analysis sees");
    // An allow list of loopback only, not an open network.
    assert!(
        finding(&metrics, "IPAddressDeny=").contains("only localhost"),
        "{metrics}"
    );
    assert!(finding(&metrics, "RestrictAddressFamilies=~AF_PACKET").contains('✓'));
    assert!(finding(&metrics, "RestrictAddressFamilies=~AF_NETLINK").contains('✓'));
    for s in failing(&metrics)
        .into_iter()
        .filter(|s| !failing(&before).contains(s))
    {
        assert!(
            s.starts_with("RestrictAddressFamilies=~AF_(INET")
                || s.starts_with("PrivateNetwork=")
                || s.starts_with("IPAddressDeny="),
            "the drop-in opened more than the metrics port: {s}\n{metrics}"
        );
    }
    // bind() is limited to the default port of [metrics].
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("systemd/epochwal.service.d/metrics.conf"),
    )
    .unwrap();
    let port = epochwal::observe::default_listen().port();
    let settings: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    assert!(
        settings.contains(&format!("SocketBindAllow=tcp:{port}").as_str()),
        "{text}"
    );
    assert!(settings.contains(&"SocketBindDeny=any"), "{text}");
    assert!(settings.contains(&"IPAddressAllow=localhost"), "{text}");
}
