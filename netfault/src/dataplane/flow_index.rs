//! The flow keys each generation holds, kept beside the state, so that rewriting a generation
//! deletes exactly its keys instead of walking the flow maps.
//!
//! Walking a BPF hash map visits every bucket: the flow maps have 2^19 (`MAX_FLOWS`), so a
//! walk costs milliseconds however few flows there are, and every change walked both maps
//! before its flip (issue #18: a fifth of a cluster partition's time to the wire). The index
//! of generation `g` is a file `flows-gG` in the state's run directory: the generation's
//! digest, then its IPv6 and IPv4 keys as written. It is used only while its digest is the
//! digest the config map records for `g`; every rewrite first sets that digest to 0
//! ("unknown"), so an index left by a crash, or by a writer that keeps none, is never trusted:
//! the walk is the fallback, always correct.
use std::{
    io,
    mem::size_of,
    path::{Path, PathBuf},
};

use netfault_common::{FlowKey, FlowKey4};

const MAGIC: &[u8; 8] = b"NFFLOWS1";
/// The most keys an index holds (about 3 MiB); a larger generation is walked.
pub const MAX_KEYS: usize = 65_536;

/// One generation's keys, and the digest they belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowIndex {
    pub digest: u64,
    pub v6: Vec<FlowKey>,
    pub v4: Vec<FlowKey4>,
}

/// The index file of generation `g` in `dir`.
pub fn path(dir: &Path, g: u32) -> PathBuf {
    dir.join(format!("flows-g{g}"))
}

/// Removes every index file (and a half-written one) from `dir`: with the state it describes.
pub fn remove_all(dir: &Path) {
    for g in 0..2 {
        let p = path(dir, g);
        let _ = std::fs::remove_file(p.with_extension("tmp"));
        let _ = std::fs::remove_file(p);
    }
}

fn bytes_of<K: aya::Pod>(k: &K) -> &[u8] {
    // SAFETY: a Pod key is plain bytes (repr(C), explicit padding), valid for its size.
    unsafe { std::slice::from_raw_parts((k as *const K).cast::<u8>(), size_of::<K>()) }
}

fn key_of<K: aya::Pod>(b: &[u8]) -> Option<K> {
    (b.len() == size_of::<K>())
        // SAFETY: exactly size_of::<K>() bytes, and any bytes are a valid Pod key.
        .then(|| unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<K>()) })
}

impl FlowIndex {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(
            24 + self.v6.len() * size_of::<FlowKey>() + self.v4.len() * size_of::<FlowKey4>(),
        );
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.digest.to_le_bytes());
        b.extend_from_slice(&(self.v6.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.v4.len() as u32).to_le_bytes());
        for k in &self.v6 {
            b.extend_from_slice(bytes_of(k));
        }
        for k in &self.v4 {
            b.extend_from_slice(bytes_of(k));
        }
        b
    }

    /// `None` for anything but a whole index of this build's key sizes.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.get(..8)? != MAGIC {
            return None;
        }
        let u32_at = |i: usize| -> Option<usize> {
            Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?) as usize)
        };
        let digest = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
        let (n6, n4) = (u32_at(16)?, u32_at(20)?);
        let (s6, s4) = (size_of::<FlowKey>(), size_of::<FlowKey4>());
        if n6.checked_add(n4)? > MAX_KEYS || b.len() != 24 + n6 * s6 + n4 * s4 {
            return None;
        }
        let (k6, k4) = b[24..].split_at(n6 * s6);
        Some(Self {
            digest,
            v6: k6.chunks(s6).map(key_of).collect::<Option<_>>()?,
            v4: k4.chunks(s4).map(key_of).collect::<Option<_>>()?,
        })
    }

    /// The index of generation `g` in `dir`, if there is a readable one.
    pub fn read(dir: &Path, g: u32) -> Option<Self> {
        Self::decode(&std::fs::read(path(dir, g)).ok()?)
    }

    /// Writes it as generation `g`'s (atomically: a reader sees the old file or the new), or
    /// removes the old one when it holds too many keys to keep.
    pub fn write(&self, dir: &Path, g: u32) -> io::Result<()> {
        let p = path(dir, g);
        if self.v6.len() + self.v4.len() > MAX_KEYS {
            return match std::fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, self.encode())?;
        std::fs::rename(&tmp, &p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> FlowIndex {
        let a = FlowKey {
            gen_: 1,
            dport: 9000,
            ..FlowKey::default()
        };
        let b = FlowKey4 {
            gen_: 1,
            sport: 53,
            ..FlowKey4::default()
        };
        FlowIndex {
            digest: 0xdead_beef_1234,
            v6: vec![a, FlowKey::default()],
            v4: vec![b],
        }
    }

    #[test]
    fn an_index_round_trips_and_anything_else_is_none() {
        let i = index();
        let b = i.encode();
        assert_eq!(FlowIndex::decode(&b), Some(i));
        // Cut short, one byte long, another magic, counts that do not match the length.
        for n in 0..b.len() {
            assert_eq!(FlowIndex::decode(&b[..n]), None, "{n} bytes");
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(FlowIndex::decode(&long), None);
        let mut magic = b.clone();
        magic[0] = b'X';
        assert_eq!(FlowIndex::decode(&magic), None);
        let mut count = b;
        count[16] = 3;
        assert_eq!(FlowIndex::decode(&count), None);
    }

    #[test]
    fn a_written_index_is_read_back_and_an_oversized_one_removes_it() {
        let dir = std::env::temp_dir().join(format!("nf-flow-index-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let i = index();
        i.write(&dir, 1).unwrap();
        assert_eq!(FlowIndex::read(&dir, 1), Some(i.clone()));
        assert_eq!(FlowIndex::read(&dir, 0), None);
        let big = FlowIndex {
            v6: vec![FlowKey::default(); MAX_KEYS + 1],
            ..i.clone()
        };
        big.write(&dir, 1).unwrap();
        assert_eq!(FlowIndex::read(&dir, 1), None);
        assert!(!path(&dir, 1).exists());
        i.write(&dir, 0).unwrap();
        remove_all(&dir);
        // Nothing else was there: the directory is empty again.
        std::fs::remove_dir(&dir).unwrap();
    }
}
