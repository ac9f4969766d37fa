//! Raw netlink attributes, for what the typed crates do not cover.
use netlink_packet_core::NLA_F_NESTED;

/// Attribute header length (`struct nlattr`).
const NLA_HDR: usize = 4;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends one attribute (header, payload, padding to 4 bytes) to `out`.
pub(crate) fn put(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = NLA_HDR + payload.len();
    // Attribute lengths are u16 by the ABI; nothing built here comes near that.
    let len16 = u16::try_from(len).unwrap_or(u16::MAX);
    out.extend_from_slice(&len16.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + align4(len) - len, 0);
}

/// Appends a nested attribute, flagged NLA_F_NESTED (strict policies, e.g. ethtool's, ask it).
pub(crate) fn put_nested(out: &mut Vec<u8>, kind: u16, inner: &[u8]) {
    put(out, kind | NLA_F_NESTED, inner);
}

pub(crate) fn put_u32(out: &mut Vec<u8>, kind: u16, v: u32) {
    put(out, kind, &v.to_ne_bytes());
}

/// A NUL-terminated string attribute (NLA_NUL_STRING policies refuse it without the NUL).
pub(crate) fn put_str(out: &mut Vec<u8>, kind: u16, s: &str) {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    put(out, kind, &b);
}

/// The attributes in `buf` as (type without flags, payload); stops at the first malformed one.
pub(crate) fn iter(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(rest.get(0..2)?.try_into().ok()?));
        let kind = u16::from_ne_bytes(rest.get(2..4)?.try_into().ok()?);
        let value = rest.get(NLA_HDR..len)?;
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        // Strip NLA_F_NESTED and NLA_F_NET_BYTEORDER.
        Some((kind & !(NLA_F_NESTED | 0x4000), value))
    })
}

/// The payload of the first attribute of type `kind` in `buf`.
pub(crate) fn find(buf: &[u8], kind: u16) -> Option<&[u8]> {
    iter(buf).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

pub(crate) fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// A string attribute's payload without its NUL.
pub(crate) fn str_of(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_read_back() {
        let mut b = Vec::new();
        put(&mut b, 7, &[1]);
        put_u32(&mut b, 9, 0x0102_0304);
        assert_eq!(b.len(), 8 + 8);
        assert_eq!(&b[..4], &[5, 0, 7, 0]);
        let got: Vec<_> = iter(&b).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (7, &[1u8][..]));
        assert_eq!(u32_at(find(&b, 9).unwrap(), 0), Some(0x0102_0304));
        assert_eq!(u32_at(&[1, 2, 3], 0), None);
    }
}
