//! Pass entries that keep the operator's own traffic flowing whatever the rules say.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::spec::{Kind, PortRange, Proto, RuleSpec};

pub const LOOPBACK: &str = "loopback";

fn pass(name: String) -> RuleSpec {
    RuleSpec::new(name, Kind::Protect)
}

pub fn label(net: &IpNet, port: Option<u16>) -> String {
    let host = if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    };
    match (port, net) {
        (None, _) => host,
        (Some(p), IpNet::V4(_)) => format!("{host}:{p}"),
        (Some(p), IpNet::V6(_)) => format!("[{host}]:{p}"),
    }
}

/// The SSH connection's 4-tuple, both directions.
pub fn ssh(label: &str, client: IpAddr, cport: u16, server: IpAddr, sport: u16) -> Vec<RuleSpec> {
    let one = |i: usize, s: IpAddr, sp: u16, d: IpAddr, dp: u16| {
        let mut r = pass(format!("{label}/{i}"));
        r.proto = Proto::Tcp;
        r.src = vec![IpNet::from(s)];
        r.sport = PortRange { lo: sp, hi: sp };
        r.dst = vec![IpNet::from(d)];
        r.dport = PortRange { lo: dp, hi: dp };
        r
    };
    vec![
        one(0, client, cport, server, sport),
        one(1, server, sport, client, cport),
    ]
}

/// Traffic to or from `net` (and `port`, TCP or UDP, when given).
pub fn endpoint(label: &str, net: IpNet, port: Option<u16>) -> Vec<RuleSpec> {
    let mut out = Vec::new();
    let protos: &[Proto] = if port.is_some() {
        &[Proto::Tcp, Proto::Udp]
    } else {
        &[Proto::Any]
    };
    for &proto in protos {
        for to in [false, true] {
            let mut r = pass(format!("{label}/{}", out.len()));
            r.proto = proto;
            let ports = port.map_or(PortRange::ALL, |p| PortRange { lo: p, hi: p });
            if to {
                r.dst = vec![net];
                r.dport = ports;
            } else {
                r.src = vec![net];
                r.sport = ports;
            }
            out.push(r);
        }
    }
    out
}

pub fn loopback() -> Vec<RuleSpec> {
    const LO4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8);
    const LO6: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128);
    let mut v = endpoint(LOOPBACK, IpNet::V4(LO4), None);
    for mut r in endpoint(LOOPBACK, IpNet::V6(LO6), None) {
        r.name = format!("{LOOPBACK}/{}", v.len());
        v.push(r);
    }
    v
}

/// The label of the SSH connection from `client`:`cport` (as `protect list` shows it).
pub fn ssh_label(client: IpAddr, cport: u16) -> String {
    format!("ssh:{client}:{cport}")
}
