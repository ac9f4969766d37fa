//! ethtool over generic netlink: link speed (LINKMODES_GET, through the ethtool crate) and
//! offload features (FEATURES_GET/SET, raw: the crate reads features but cannot write them,
//! and its reader drops bit 0, tx-scatter-gather).
use std::collections::BTreeSet;

use ethtool::{EthtoolAttr, EthtoolError, EthtoolLinkModeAttr};
use futures_util::StreamExt;
use netlink_packet_core::{
    DecodeError, Emitable, NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
    ParseableParametrized,
};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};

use super::{
    block_on,
    error::{Ctx, Fail, Result},
    nla,
};

// include/uapi/linux/ethtool_netlink.h (generic netlink family "ethtool", version 1).
const ETHTOOL_GENL_VERSION: u8 = 1;
const ETHTOOL_MSG_FEATURES_GET: u8 = 11;
const ETHTOOL_MSG_FEATURES_SET: u8 = 12;
const ETHTOOL_A_HEADER_DEV_NAME: u16 = 2;
const ETHTOOL_A_FEATURES_HEADER: u16 = 1;
const ETHTOOL_A_FEATURES_HW: u16 = 2;
const ETHTOOL_A_FEATURES_WANTED: u16 = 3;
const ETHTOOL_A_FEATURES_ACTIVE: u16 = 4;
const ETHTOOL_A_FEATURES_NOCHANGE: u16 = 5;
const ETHTOOL_A_BITSET_NOMASK: u16 = 1;
const ETHTOOL_A_BITSET_BITS: u16 = 3;
const ETHTOOL_A_BITSET_BITS_BIT: u16 = 1;
const ETHTOOL_A_BITSET_BIT_NAME: u16 = 2;
const ETHTOOL_A_BITSET_BIT_VALUE: u16 = 3;

/// SPEED_UNKNOWN is (u32)-1; drivers also report 0, and the legacy u16 field's all-ones.
fn speed_known(mbit: u32) -> bool {
    mbit != 0 && mbit != u32::MAX && mbit != u32::from(u16::MAX)
}

fn ethtool_fail(e: EthtoolError) -> Fail {
    match e {
        EthtoolError::NetlinkError(m) => match m.code {
            Some(c) => Fail::Errno(-c.get()),
            None => Fail::Protocol("unexpected ACK".into()),
        },
        other => Fail::Protocol(other.to_string()),
    }
}

/// The link's speed in bits/s; None where the device reports none (unknown speed, or no
/// ethtool link settings at all: EOPNOTSUPP). veth reports 10 Gbit/s.
pub fn link_speed_bits(name: &str) -> Result<Option<u64>> {
    let ctx = Ctx::new("read link speed", name);
    let got = block_on(|| async {
        let (conn, mut handle, _) = ethtool::new_connection().map_err(Fail::Socket)?;
        let task = tokio::spawn(conn);
        let speed = async {
            let mut answers = handle
                .link_mode()
                .get(Some(name))
                .execute()
                .await
                .map_err(ethtool_fail)?;
            let mut speed = None;
            while let Some(m) = answers.next().await {
                for a in m.map_err(ethtool_fail)?.payload.nlas {
                    if let EthtoolAttr::LinkMode(EthtoolLinkModeAttr::Speed(s)) = a {
                        speed = Some(s);
                    }
                }
            }
            Ok(speed)
        }
        .await;
        task.abort();
        speed
    });
    match got {
        Ok(mbit) => Ok(mbit
            .filter(|m| speed_known(*m))
            .map(|m| u64::from(m) * 1_000_000)),
        Err(Fail::Errno(e)) if e == libc::EOPNOTSUPP => Ok(None),
        Err(e) => Err(ctx.err(e)),
    }
}

/// A raw ethtool genetlink message: command and attribute bytes.
#[derive(Debug, Clone)]
struct RawEthtool {
    cmd: u8,
    attrs: Vec<u8>,
}

impl GenlFamily for RawEthtool {
    fn family_name() -> &'static str {
        "ethtool"
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        ETHTOOL_GENL_VERSION
    }
}

impl Emitable for RawEthtool {
    fn buffer_len(&self) -> usize {
        self.attrs.len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        buffer[..self.attrs.len()].copy_from_slice(&self.attrs);
    }
}

impl ParseableParametrized<[u8], GenlHeader> for RawEthtool {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> std::result::Result<Self, DecodeError> {
        Ok(Self {
            cmd: header.cmd,
            attrs: buf.to_vec(),
        })
    }
}

/// One ethtool request; the attributes of each answer.
fn ethtool_raw(cmd: u8, attrs: Vec<u8>, flags: u16) -> std::result::Result<Vec<Vec<u8>>, Fail> {
    block_on(|| async move {
        let (conn, mut handle, _) = genetlink::new_connection().map_err(Fail::Socket)?;
        let task = tokio::spawn(conn);
        let out = async {
            let mut req =
                NetlinkMessage::from(GenlMessage::from_payload(RawEthtool { cmd, attrs }));
            req.header.flags = NLM_F_REQUEST | flags;
            let mut answers = handle
                .request(req)
                .await
                .map_err(|e| Fail::Protocol(format!("ethtool family: {e}")))?;
            let mut out = Vec::new();
            while let Some(m) = answers.next().await {
                match m
                    .map_err(|e| Fail::Protocol(format!("unreadable answer: {e}")))?
                    .payload
                {
                    NetlinkPayload::InnerMessage(g) => out.push(g.payload.attrs),
                    NetlinkPayload::Error(e) => {
                        if let Some(c) = e.code {
                            return Err(Fail::Errno(-c.get()));
                        }
                    }
                    _ => {}
                }
            }
            Ok(out)
        }
        .await;
        task.abort();
        out
    })
}

fn header(dev: &str) -> Vec<u8> {
    let mut h = Vec::new();
    nla::put_str(&mut h, ETHTOOL_A_HEADER_DEV_NAME, dev);
    let mut out = Vec::new();
    nla::put_nested(&mut out, ETHTOOL_A_FEATURES_HEADER, &h);
    out
}

/// The names of the bits set in a verbose bitset: with NOMASK every listed bit is set; with a
/// mask, those listed with ETHTOOL_A_BITSET_BIT_VALUE.
fn bitset_names(b: &[u8]) -> BTreeSet<String> {
    let nomask = nla::find(b, ETHTOOL_A_BITSET_NOMASK).is_some();
    let Some(bits) = nla::find(b, ETHTOOL_A_BITSET_BITS) else {
        return BTreeSet::new();
    };
    nla::iter(bits)
        .filter(|(k, _)| *k == ETHTOOL_A_BITSET_BITS_BIT)
        .filter_map(|(_, bit)| {
            let name = nla::find(bit, ETHTOOL_A_BITSET_BIT_NAME).map(nla::str_of)?;
            (nomask || nla::find(bit, ETHTOOL_A_BITSET_BIT_VALUE).is_some()).then_some(name)
        })
        .collect()
}

/// A device's offload features by ethtool's names ("tx-tcp-segmentation", ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    /// Features in effect.
    pub active: BTreeSet<String>,
    /// Features asked for (by the user or by default); the kernel grants what dependencies allow.
    pub wanted: BTreeSet<String>,
    /// Features the user may change.
    pub changeable: BTreeSet<String>,
    /// Features that cannot change on this device.
    pub fixed: BTreeSet<String>,
}

impl Features {
    pub fn is_active(&self, name: &str) -> bool {
        self.active.contains(name)
    }

    /// What to pass to [`set_features`] to put `names` back as they were: their *wanted*
    /// state, which is what setting changes (the active state follows from it).
    pub fn restore(&self, names: &[&str]) -> Vec<(String, bool)> {
        names
            .iter()
            .map(|n| ((*n).to_owned(), self.wanted.contains(*n)))
            .collect()
    }
}

/// The device's features (ETHTOOL_MSG_FEATURES_GET, verbose bitsets with names).
pub fn features(name: &str) -> Result<Features> {
    let ctx = Ctx::new("read features", name);
    let answers = ethtool_raw(ETHTOOL_MSG_FEATURES_GET, header(name), 0).map_err(|e| ctx.err(e))?;
    let a = answers
        .first()
        .ok_or_else(|| ctx.protocol("no FEATURES_GET reply"))?;
    let set = |kind| nla::find(a, kind).map(bitset_names).unwrap_or_default();
    Ok(Features {
        active: set(ETHTOOL_A_FEATURES_ACTIVE),
        wanted: set(ETHTOOL_A_FEATURES_WANTED),
        changeable: set(ETHTOOL_A_FEATURES_HW),
        fixed: set(ETHTOOL_A_FEATURES_NOCHANGE),
    })
}

/// The FEATURES_SET attributes: header, then WANTED as a list of named bits with a mask (only
/// the listed bits change), VALUE present for on.
fn set_message(dev: &str, changes: &[(&str, bool)]) -> Vec<u8> {
    let mut bits = Vec::new();
    for (name, on) in changes {
        let mut bit = Vec::new();
        nla::put_str(&mut bit, ETHTOOL_A_BITSET_BIT_NAME, name);
        if *on {
            nla::put(&mut bit, ETHTOOL_A_BITSET_BIT_VALUE, &[]);
        }
        nla::put_nested(&mut bits, ETHTOOL_A_BITSET_BITS_BIT, &bit);
    }
    let mut bitset = Vec::new();
    nla::put_nested(&mut bitset, ETHTOOL_A_BITSET_BITS, &bits);
    let mut out = header(dev);
    nla::put_nested(&mut out, ETHTOOL_A_FEATURES_WANTED, &bitset);
    out
}

/// Sets (on/off) the named features, leaving the others; returns the features as they were
/// before, so that [`Features::restore`] can put them back exactly. Features the device cannot
/// change are silently left by the kernel: read [`features`] after to see what took effect.
pub fn set_features(name: &str, changes: &[(&str, bool)]) -> Result<Features> {
    let before = features(name)?;
    let ctx = Ctx::new("set features", name);
    ethtool_raw(
        ETHTOOL_MSG_FEATURES_SET,
        set_message(name, changes),
        NLM_F_ACK,
    )
    .map_err(|e| ctx.err(e))?;
    Ok(before)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_message_layout() {
        let b = set_message("v0", &[("tx-tcp-segmentation", false), ("rx-gro", true)]);
        let hdr = nla::find(&b, ETHTOOL_A_FEATURES_HEADER).unwrap();
        assert_eq!(nla::find(hdr, ETHTOOL_A_HEADER_DEV_NAME).unwrap(), b"v0\0");
        // Nested attributes carry NLA_F_NESTED: ethtool's policies are strict.
        let hdr_len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        assert_eq!(u16::from_ne_bytes([b[2], b[3]]), 0x8001);
        assert_eq!(u16::from_ne_bytes([b[hdr_len + 2], b[hdr_len + 3]]), 0x8003);
        let wanted = nla::find(&b, ETHTOOL_A_FEATURES_WANTED).unwrap();
        assert!(nla::find(wanted, ETHTOOL_A_BITSET_NOMASK).is_none());
        // With a mask, the parser reads back exactly the bits set on.
        assert_eq!(bitset_names(wanted), BTreeSet::from(["rx-gro".to_owned()]));
        let bits = nla::find(wanted, ETHTOOL_A_BITSET_BITS).unwrap();
        assert_eq!(nla::iter(bits).count(), 2);
    }

    #[test]
    fn unknown_speeds() {
        assert!(!speed_known(0) && !speed_known(u32::MAX) && !speed_known(65535));
        assert!(speed_known(10_000));
    }
}
