//! Which ingress hooks a device gets, and why: a pure function of the device's kind, the XDP
//! mode `attach --xdp-mode` forced (if any) and the rule set. The effects (attaching and
//! detaching XDP, marking tc-only interfaces) live in `hooks/apply.rs`.
//!
//! Every device gets tc ingress and egress. XDP is the question:
//! - A physical NIC keeps XDP (native where the driver has it): it runs before the kernel
//!   allocates an skb, so drops cost least there, and idle it costs next to nothing.
//! - On a veth (or any other virtual device) an XDP program is not free at all: the kernel
//!   turns off TSO/GSO on the veth's peer, so TCP across the pair is segmented in software
//!   (measured: half the throughput, with a program that only passes). tc ingress applies
//!   every rule there instead, and XDP is added only while a live rule needs a per-frame
//!   drop at ingress on that device (XDP drops wire frames cheapest), then removed again.
//! - `--xdp-mode native|generic` forces XDP for as long as the device is attached.
pub mod apply;
pub mod socket;

use serde::{Deserialize, Serialize};

use crate::{
    control::state::RuleEntry,
    spec::{Kind, RuleSpec},
};

/// What kind of device an interface is, as far as hook choice cares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "class", content = "kind")]
pub enum DeviceKind {
    /// A device with an IFLA_INFO_KIND (`veth`, `bridge`, `vlan`, `macvlan`, `tun`, ...) or a
    /// loopback: no hardware receive path for XDP to run in.
    Virtual(String),
    /// No IFLA_INFO_KIND: a NIC driven by its hardware driver.
    Physical,
    /// The kind could not be read (the reason): treated as physical, as before hooks were
    /// chosen.
    Unknown(String),
}

impl DeviceKind {
    /// From the link's IFLA_INFO_KIND and loopback flag.
    pub fn from_link(info_kind: Option<&str>, loopback: bool) -> Self {
        match info_kind {
            Some(k) if !k.is_empty() => Self::Virtual(k.to_owned()),
            _ if loopback => Self::Virtual("loopback".into()),
            _ => Self::Physical,
        }
    }

    pub fn is_virtual(&self) -> bool {
        matches!(self, Self::Virtual(_))
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Virtual(k) => write!(f, "virtual ({k})"),
            Self::Physical => f.write_str("physical"),
            Self::Unknown(_) => f.write_str("unknown"),
        }
    }
}

/// An XDP mode `attach --xdp-mode` demanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForcedXdp {
    Native,
    Generic,
}

impl ForcedXdp {
    pub fn from_mode(m: aya::programs::XdpMode) -> Self {
        if m == aya::programs::XdpMode::Skb {
            Self::Generic
        } else {
            Self::Native
        }
    }

    pub fn mode(self) -> aya::programs::XdpMode {
        match self {
            Self::Native => aya::programs::XdpMode::Driver,
            Self::Generic => aya::programs::XdpMode::Skb,
        }
    }
}

/// Why a device has XDP or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "reason", content = "detail")]
pub enum Why {
    /// `--xdp-mode` forced it, for as long as the device is attached.
    Forced(ForcedXdp),
    /// A physical NIC (or one of unknown kind): XDP stays attached.
    Physical,
    /// A virtual device where no live rule needs an XDP drop: tc ingress applies every rule.
    VirtualIdle,
    /// A virtual device where this live rule (or partition) can drop at ingress.
    VirtualDrop(String),
}

/// The hooks one device should have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    /// A netfault XDP program on the device's ingress.
    pub xdp: bool,
    /// XDP was demanded in this mode (no fallback to another mode or to tc).
    pub forced: Option<ForcedXdp>,
    /// XDP stays while the device is attached, whatever the rules (forced, or physical).
    pub permanent: bool,
    pub why: Why,
}

impl Choice {
    /// One line for people: what was chosen and why.
    pub fn explain(&self, device: &DeviceKind) -> String {
        match &self.why {
            Why::Forced(m) => format!(
                "XDP {} forced by --xdp-mode, kept while attached",
                match m {
                    ForcedXdp::Native => "native",
                    ForcedXdp::Generic => "generic",
                }
            ),
            Why::Physical => match device {
                DeviceKind::Unknown(e) => {
                    format!("device kind unknown ({e}): XDP kept attached as on a physical NIC")
                }
                _ => "physical device: XDP kept attached (it runs before the skb exists)".into(),
            },
            Why::VirtualIdle => format!(
                "{device} device: tc ingress applies every rule; no live drop rule needs XDP \
                 here (XDP on a veth makes its peer segment TCP in software)"
            ),
            Why::VirtualDrop(rule) => format!(
                "{device} device: XDP added for '{rule}', a drop or a per-packet probability that \
                 can match ingress here (removed again once no such rule is live)"
            ),
        }
    }
}

/// Does this live entry need XDP at ingress on `iface`? Drops are applied there (per wire frame,
/// and cheapest). A probabilistic duplicate (or a drop together with a duplicate or a shape)
/// is applied at tc ingress, but on a veth tc sees the peer's GSO aggregates unless an XDP
/// program makes the peer segment: XDP then stays to give tc wire frames (with GRO off,
/// features.rs), so the probability is drawn per wire packet.
pub fn needs_xdp(spec: &RuleSpec, iface: &str) -> bool {
    let probabilistic = |p: f64| p > 0.0 && p < 1.0;
    let needs = match spec.kind {
        Kind::Protect => false,
        // A rejecting partition is applied at tc, which builds the replies.
        Kind::Partition => spec.act.reject.is_none(),
        // A rejecting rule is applied at tc too; XDP only stays to give tc wire frames when
        // the rule draws.
        Kind::Rule => {
            (spec.act.loses()
                && spec.act.reject.is_none()
                && spec.act.duplicate.0 == 0.0
                && !spec.act.needs_fq()
                && !spec.act.corrupts())
                || spec.act.random_loss()
                || probabilistic(spec.act.duplicate.0)
                // Corruption is applied at tc; XDP stays to give it wire frames on a veth.
                || spec.act.corrupts()
        }
    };
    // A cgroup rule is applied at tc, which alone can find a packet's socket (XDP then passes
    // everything: CFG_CGROUP_INGRESS).
    needs
        && spec.cgroup.is_none()
        && spec.dir.includes(true)
        && spec.iface.as_deref().is_none_or(|i| i == iface)
}

/// The hooks device `iface` of kind `device` should have with the entries `rules` live at
/// `now` (CLOCK_MONOTONIC ns), `forced` being the mode `attach --xdp-mode` demanded. Rules in
/// evaluation order, so the one named is the first that needs XDP.
pub fn choose<'a>(
    device: &DeviceKind,
    forced: Option<ForcedXdp>,
    iface: &str,
    rules: impl IntoIterator<Item = &'a RuleEntry>,
    now: u64,
) -> Choice {
    if let Some(m) = forced {
        return Choice {
            xdp: true,
            forced: Some(m),
            permanent: true,
            why: Why::Forced(m),
        };
    }
    if !device.is_virtual() {
        return Choice {
            xdp: true,
            forced: None,
            permanent: true,
            why: Why::Physical,
        };
    }
    match rules
        .into_iter()
        .find(|r| r.live(now) && needs_xdp(&r.spec, iface))
    {
        Some(r) => Choice {
            xdp: true,
            forced: None,
            permanent: false,
            why: Why::VirtualDrop(r.spec.name.clone()),
        },
        None => Choice {
            xdp: false,
            forced: None,
            permanent: false,
            why: Why::VirtualIdle,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Direction, Prob, Shape};

    fn entry(name: &str, kind: Kind, f: impl FnOnce(&mut RuleSpec)) -> RuleEntry {
        let mut spec = RuleSpec::new(name, kind);
        f(&mut spec);
        RuleEntry {
            spec,
            slot: 0,
            seq: 0,
            expires_mono_ns: 0,
            hold_until_mono_ns: 0,
        }
    }

    fn drop_rule(name: &str, dir: Direction, p: f64) -> RuleEntry {
        entry(name, Kind::Rule, |s| {
            s.dir = dir;
            s.act.drop = Prob(p);
        })
    }

    fn veth() -> DeviceKind {
        DeviceKind::from_link(Some("veth"), false)
    }

    #[test]
    fn device_kinds_come_from_the_link_kind() {
        assert_eq!(veth(), DeviceKind::Virtual("veth".into()));
        assert_eq!(DeviceKind::from_link(None, false), DeviceKind::Physical);
        assert_eq!(DeviceKind::from_link(Some(""), false), DeviceKind::Physical);
        assert_eq!(
            DeviceKind::from_link(None, true),
            DeviceKind::Virtual("loopback".into())
        );
    }

    #[test]
    fn a_physical_nic_keeps_xdp_whatever_the_rules() {
        for dev in [DeviceKind::Physical, DeviceKind::Unknown("EPERM".into())] {
            let c = choose(&dev, None, "eth0", &[], 0);
            assert!(c.xdp && c.permanent, "{c:?}");
            assert_eq!(c.why, Why::Physical);
        }
    }

    #[test]
    fn a_forced_mode_wins_on_every_device() {
        for dev in [veth(), DeviceKind::Physical] {
            let c = choose(&dev, Some(ForcedXdp::Generic), "eth0", &[], 0);
            assert!(c.xdp && c.permanent, "{c:?}");
            assert_eq!(c.forced, Some(ForcedXdp::Generic));
            assert_eq!(c.why, Why::Forced(ForcedXdp::Generic));
        }
    }

    #[test]
    fn a_veth_gets_xdp_only_for_a_live_ingress_drop() {
        let idle = |rules: &[RuleEntry]| {
            let c = choose(&veth(), None, "eth0", rules, 100);
            assert!(!c.xdp && !c.permanent, "{c:?}");
            assert_eq!(c.why, Why::VirtualIdle);
        };
        idle(&[]);
        // Protections never drop; egress drops happen at tc egress anyway; p=0 never fires.
        idle(&[entry("loopback/v4", Kind::Protect, |_| {})]);
        idle(&[drop_rule("out", Direction::Egress, 1.0)]);
        idle(&[drop_rule("never", Direction::Ingress, 0.0)]);
        // Every packet duplicated: no probability to draw per wire frame; tc applies it whole.
        idle(&[entry("dup-all", Kind::Rule, |s| {
            s.act.duplicate = Prob(1.0)
        })]);
        // Bound to another interface.
        idle(&[entry("there", Kind::Rule, |s| {
            s.act.drop = Prob(1.0);
            s.iface = Some("eth1".into());
        })]);
        // Expired at `now` (100): the data path passes it already.
        let mut old = drop_rule("old", Direction::Ingress, 1.0);
        old.expires_mono_ns = 100;
        idle(&[old]);

        let wants = |rules: &[RuleEntry], name: &str| {
            let c = choose(&veth(), None, "eth0", rules, 100);
            assert!(c.xdp && !c.permanent, "{c:?}");
            assert_eq!(c.why, Why::VirtualDrop(name.into()));
        };
        // tc ingress applies a rule that duplicates or shapes, but a probability there must be
        // drawn per wire frame: XDP stays so the veth's peer sends wire frames.
        wants(
            &[entry("dup", Kind::Rule, |s| {
                s.act.drop = Prob(0.5);
                s.act.duplicate = Prob(0.5);
            })],
            "dup",
        );
        wants(
            &[entry("slow", Kind::Rule, |s| {
                s.act.drop = Prob(0.5);
                s.act.shape = Shape {
                    delay: Some(std::time::Duration::from_millis(5)),
                    ..Default::default()
                };
            })],
            "slow",
        );
        wants(
            &[entry("dup10", Kind::Rule, |s| s.act.duplicate = Prob(0.1))],
            "dup10",
        );
        wants(&[drop_rule("in", Direction::Ingress, 0.01)], "in");
        wants(&[drop_rule("both", Direction::Both, 1.0)], "both");
        let mut live = drop_rule("live", Direction::Ingress, 1.0);
        live.expires_mono_ns = 101;
        wants(&[live], "live");
        wants(
            &[entry("here", Kind::Rule, |s| {
                s.act.drop = Prob(1.0);
                s.iface = Some("eth0".into());
            })],
            "here",
        );
        // A partition drops both ways unless it is one-way; either way its ingress side.
        wants(&[entry("cut", Kind::Partition, |_| {})], "cut");
        // The first that needs it is named.
        wants(
            &[
                drop_rule("out", Direction::Egress, 1.0),
                drop_rule("first", Direction::Ingress, 1.0),
                drop_rule("second", Direction::Ingress, 1.0),
            ],
            "first",
        );
    }

    #[test]
    fn the_explanation_says_what_and_why() {
        let c = choose(&veth(), None, "eth0", &[], 0);
        let t = c.explain(&veth());
        assert!(
            t.contains("virtual (veth)") && t.contains("tc ingress"),
            "{t}"
        );
        let c = choose(
            &veth(),
            None,
            "eth0",
            &[drop_rule("r1", Direction::Ingress, 1.0)],
            0,
        );
        assert!(c.explain(&veth()).contains("'r1'"));
    }
}
