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
    use std::{
        sync::atomic::{AtomicBool, Ordering},
        time::{Duration, Instant},
    };

    use aya::{
        maps::Array,
        programs::{TestRun, TestRunOptions, Xdp},
    };

    /// Rounds of "a run is in progress: wait, then look".
    const ROUNDS: u32 = 12;

    /// (started, finished) runs of `lab_spin`, from its map.
    fn runs(m: &Array<&aya::maps::MapData, u64>) -> (u64, u64) {
        (m.get(&0, 0).unwrap(), m.get(&1, 0).unwrap())
    }

    /// The claim itself: a BPF program running when `wait` is called has finished when it
    /// returns. `lab_spin` (netfault-lab) counts its start, spins for milliseconds in bpf_loop
    /// and counts its end; one thread runs it back to back through BPF_PROG_TEST_RUN. Each
    /// round catches a run in progress (started > finished), calls `wait`, and asserts that
    /// this run, and so every run that had started, has finished. A `wait` that does not wait
    /// for running programs returns in microseconds, inside the same run: finished still lags.
    /// A control, with the same catch but no `wait`, shows the runs are long enough for that.
    #[test]
    fn waits_for_running_programs() {
        // Needs CAP_BPF; the test suite runs as root.
        let g = super::Grace::new().unwrap();
        let mut ebpf = aya::Ebpf::load(netfault_lab::BENCH_OBJECT).unwrap();
        let prog: &mut Xdp = ebpf.program_mut("lab_spin").unwrap().try_into().unwrap();
        prog.load().unwrap();
        let prog: &Xdp = ebpf.program("lab_spin").unwrap().try_into().unwrap();
        let map: Array<_, u64> = Array::try_from(ebpf.map("SPIN_RUNS").unwrap()).unwrap();
        let frame = [0u8; 64];
        let stop = AtomicBool::new(false);
        let deadline = Instant::now() + Duration::from_secs(60);
        // (started when caught, finished after the wait or the control's look)
        let mut waited = Vec::new();
        let mut control = Vec::new();
        std::thread::scope(|s| {
            let runner = s.spawn(|| {
                let mut n = 0u32;
                // Bounded: stopped by the main thread, else by count and time.
                while !stop.load(Ordering::Relaxed) && n < 10_000 && Instant::now() < deadline {
                    let r = prog
                        .test_run(TestRunOptions {
                            data_in: Some(&frame),
                            repeat: 1,
                            ..Default::default()
                        })
                        .unwrap();
                    assert_eq!(r.return_value, 2, "XDP_PASS");
                    n += 1;
                }
            });
            // Catches a run in progress: returns how many had started then.
            let catch = || -> u64 {
                loop {
                    assert!(Instant::now() < deadline, "never caught a run in progress");
                    let (started, finished) = runs(&map);
                    if started > finished {
                        return started;
                    }
                    std::hint::spin_loop();
                }
            };
            for _ in 0..ROUNDS {
                let started = catch();
                g.wait().unwrap();
                waited.push((started, runs(&map).1));
                let started = catch();
                control.push((started, runs(&map).1));
            }
            stop.store(true, Ordering::Relaxed);
            runner.join().unwrap();
        });
        let early: Vec<_> = waited.iter().filter(|(s, f)| f < s).collect();
        assert!(
            early.is_empty(),
            "wait returned while a program that started before it still ran \
             (started, finished): {early:?} of {waited:?}"
        );
        let caught = control.iter().filter(|(s, f)| f < s).count();
        assert!(
            caught * 2 > control.len(),
            "the control did not see runs in progress, so the test shows nothing: {control:?}"
        );
    }
}
