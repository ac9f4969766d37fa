//! A grace period for BPF programs: after it, no program that started before it is still running.
//!
//! The kernel waits for running programs (synchronize_rcu) on every update of a map-in-map, so a
//! one-slot ARRAY_OF_MAPS that nothing reads is the tool. The controller waits once after each
//! generation flip before it rewrites the generation it retired.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

pub struct Grace {
    outer: OwnedFd,
    inner: OwnedFd,
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<i64> {
    // SAFETY: attr is a zero-padded bpf_attr of the size we pass.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn put_u32(a: &mut [u8; 128], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(a: &mut [u8; 128], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

fn map_create(map_type: u32, inner_fd: Option<i32>) -> io::Result<OwnedFd> {
    // bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, map_flags, inner_map_fd.
    let mut a = [0u8; 128];
    put_u32(&mut a, 0, map_type);
    put_u32(&mut a, 4, 4);
    put_u32(&mut a, 8, 4);
    put_u32(&mut a, 12, 1);
    put_u32(&mut a, 20, inner_fd.unwrap_or(0) as u32);
    let fd = bpf(BPF_MAP_CREATE, &mut a)?;
    // SAFETY: the kernel returned a new fd we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl Grace {
    pub fn new() -> io::Result<Self> {
        let inner = map_create(BPF_MAP_TYPE_ARRAY, None)?;
        let outer = map_create(BPF_MAP_TYPE_ARRAY_OF_MAPS, Some(inner.as_raw_fd()))?;
        Ok(Self { outer, inner })
    }

    /// Returns once every BPF program running when it was called has finished.
    pub fn wait(&self) -> io::Result<()> {
        let key: u32 = 0;
        let value: u32 = self.inner.as_raw_fd() as u32;
        // bpf_attr for BPF_MAP_UPDATE_ELEM: map_fd, pad, key ptr, value ptr, flags.
        let mut a = [0u8; 128];
        put_u32(&mut a, 0, self.outer.as_raw_fd() as u32);
        put_u64(&mut a, 8, &key as *const u32 as u64);
        put_u64(&mut a, 16, &value as *const u32 as u64);
        bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn waits() {
        // Needs CAP_BPF; the test suite runs as root.
        let g = super::Grace::new().unwrap();
        let t = std::time::Instant::now();
        for _ in 0..3 {
            g.wait().unwrap();
        }
        eprintln!("3 grace periods: {:?}", t.elapsed());
    }
}
