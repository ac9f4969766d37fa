//! The one frame every measurement uses: Ethernet + IPv4 + UDP, 60 bytes (the Ethernet minimum
//! without FCS), so per-packet costs are not diluted by copying payload.
use std::net::Ipv4Addr;

pub const FRAME_LEN: usize = 60;
const ETH_HLEN: usize = 14;
const IP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
pub const SPORT: u16 = 40_000;
/// The discard port: nothing should answer if a frame ever got through.
pub const DPORT: u16 = 9;

/// Internet checksum (RFC 1071) of `data`, starting from a partial sum.
fn checksum(mut sum: u32, data: &[u8]) -> u16 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A UDP/IPv4 frame from `src` to `dst`, with valid IP and UDP checksums.
pub fn udp4(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (FRAME_LEN - ETH_HLEN) as u16;
    let ip = &mut f[ETH_HLEN..ETH_HLEN + IP_HLEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(0, ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp_len = ip_len - IP_HLEN as u16;
    let l4 = ETH_HLEN + IP_HLEN;
    f[l4..l4 + 2].copy_from_slice(&SPORT.to_be_bytes());
    f[l4 + 2..l4 + 4].copy_from_slice(&DPORT.to_be_bytes());
    f[l4 + 4..l4 + 6].copy_from_slice(&udp_len.to_be_bytes());
    for (i, b) in f[l4 + UDP_HLEN..].iter_mut().enumerate() {
        *b = b'n' + (i % 16) as u8;
    }
    // Pseudo-header: addresses, protocol, UDP length.
    let mut pseudo = 17u32 + u32::from(udp_len);
    for w in [src.octets(), dst.octets()] {
        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]))
            + u32::from(u16::from_be_bytes([w[2], w[3]]));
    }
    let c = match checksum(pseudo, &f[l4..]) {
        0 => 0xffff, // 0 means "no checksum" in UDP
        c => c,
    };
    f[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify() {
        let f = udp4(
            [2; 6],
            [4; 6],
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(198, 51, 100, 1),
        );
        assert_eq!(f.len(), FRAME_LEN);
        // A header with its checksum in place sums to zero.
        assert_eq!(checksum(0, &f[ETH_HLEN..ETH_HLEN + IP_HLEN]), 0);
        let mut pseudo = 17u32 + (FRAME_LEN - ETH_HLEN - IP_HLEN) as u32;
        pseudo += 0xc000 + 0x0201 + 0xc633 + 0x6401;
        assert_eq!(checksum(pseudo, &f[ETH_HLEN + IP_HLEN..]), 0);
    }
}
