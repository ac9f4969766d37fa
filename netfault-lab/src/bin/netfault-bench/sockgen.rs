//! Part 2's generator where the kernel refuses BPF_PROG_RUN live frames: an AF_PACKET socket
//! on the sending veth that sends one prebuilt frame over and over with sendmmsg, past the qdisc
//! (PACKET_QDISC_BYPASS), so each frame costs the sender a syscall share, an skb and a copy,
//! and goes straight into the receiving veth's ring.
//!
//! Whether such a sender or the receiver on the other CPU is the limit depends on the machine,
//! so the rate compares nothing: what compares the hooks is the receiver's CPU time per frame
//! (droprate.rs measures it from the receiving veth's NAPI thread).
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::sys;

/// Frames per sendmmsg call: NAPI's budget, as the live-frames generator's batch.
const BATCH: usize = 64;

/// What one run sent.
pub struct Sent {
    pub elapsed: Duration,
    /// Frames the veth took into its peer's ring.
    pub accepted: u64,
    /// sendmmsg calls that stopped short: the ring was full (ENOBUFS) at least once in them.
    pub refusals: u64,
}

/// A raw packet socket bound to one interface of the calling thread's namespace, protocol 0:
/// it sends and receives nothing.
pub struct PacketSocket(OwnedFd);

impl PacketSocket {
    pub fn open(ifindex: u32) -> Result<Self> {
        // SAFETY: plain socket call; the fd is owned right away.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("AF_PACKET socket");
        }
        // SAFETY: fd is a fresh descriptor we own.
        let sock = Self(unsafe { OwnedFd::from_raw_fd(fd) });
        let one: libc::c_int = 1;
        // SAFETY: an int option of the right size.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error()).context("PACKET_QDISC_BYPASS");
        }
        // SAFETY: a zeroed sockaddr_ll is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: a sockaddr_ll of its own size.
        let r = unsafe {
            libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error()).context("bind the AF_PACKET socket");
        }
        Ok(sock)
    }

    /// Sends `frame` for `dur` (checked after every call), at most `max` frames.
    pub fn blast(&self, frame: &[u8], dur: Duration, max: u64) -> Result<Sent> {
        let mut iov = libc::iovec {
            iov_base: frame.as_ptr().cast_mut().cast(),
            iov_len: frame.len(),
        };
        let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
            .map(|_| {
                // SAFETY: a zeroed mmsghdr is valid (no name, no control).
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = &mut iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let (mut accepted, mut refusals) = (0u64, 0u64);
        let t0 = Instant::now();
        while t0.elapsed() < dur && accepted + refusals < max {
            // SAFETY: BATCH headers, each pointing at the live iovec over `frame`, which the
            // kernel only reads.
            let n =
                unsafe { libc::sendmmsg(self.0.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::ENOBUFS | libc::EAGAIN) => refusals += 1,
                    Some(libc::EINTR) => sys::check_stop()?,
                    _ => return Err(e).context("sendmmsg on the AF_PACKET socket"),
                }
            } else {
                accepted += n as u64;
                if (n as usize) < BATCH {
                    refusals += 1;
                }
            }
        }
        Ok(Sent {
            elapsed: t0.elapsed(),
            accepted,
            refusals,
        })
    }
}
