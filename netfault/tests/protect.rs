//! The operator is never cut off: the SSH connection of whoever installs a partition, loopback,
//! and `protect add` entries pass before any rule.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    thread,
    time::Duration,
};

const BIN: &str = env!("CARGO_BIN_EXE_netfault");

/// Two namespaces joined by a veth pair (192.0.2.1 <-> 192.0.2.2), removed on drop.
struct Pair {
    a: String,
    b: String,
}

impl Pair {
    fn new(tag: &str) -> Pair {
        let id = std::process::id();
        let (a, b) = (format!("nf-pr-{tag}a-{id}"), format!("nf-pr-{tag}b-{id}"));
        for ns in [&a, &b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&[
            "ip", "-n", &a, "link", "add", "pa", "type", "veth", "peer", "name", "pb", "netns", &b,
        ]);
        sh(&["ip", "-n", &a, "addr", "add", "192.0.2.1/24", "dev", "pa"]);
        sh(&["ip", "-n", &b, "addr", "add", "192.0.2.2/24", "dev", "pb"]);
        sh(&["ip", "-n", &a, "link", "set", "pa", "up"]);
        sh(&["ip", "-n", &b, "link", "set", "pb", "up"]);
        Pair { a, b }
    }

    fn nf(&self, ns: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let out = Command::new(BIN)
            .arg("--netns")
            .arg(ns)
            .args(args)
            .envs(env.iter().copied())
            .env_remove(if env.is_empty() {
                "SSH_CONNECTION"
            } else {
                "NF_UNUSED"
            })
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new(BIN).args(["--netns", ns, "detach"]).output();
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?}");
}

/// Runs `f` on a thread inside namespace `ns` (sockets made there stay there).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    thread::spawn(move || {
        netfault::control::netns::enter(&ns).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn bound_client(local: SocketAddr, peer: SocketAddr) -> std::io::Result<TcpStream> {
    // A fixed source port, so the 4-tuple is known in advance, as SSH_CONNECTION gives it.
    let s = socket2_like_connect(local, peer)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// bind() then connect() with std only: connect from a listener-less bound socket via libc.
fn socket2_like_connect(local: SocketAddr, peer: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let (SocketAddr::V4(l), SocketAddr::V4(p)) = (local, peer) else {
        panic!("v4 only")
    };
    let sin = |a: std::net::SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: plain socket calls on a fd we own (handed to TcpStream, which closes it).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const i32).cast(),
            4,
        );
        let la = sin(l);
        let pa = sin(p);
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        if libc::bind(fd, (&la as *const libc::sockaddr_in).cast(), len) != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        // A bounded connect: SO_SNDTIMEO limits the SYN retries.
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        if libc::connect(fd, (&pa as *const libc::sockaddr_in).cast(), len) != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

/// One ICMP echo from namespace `ns`, waiting at most a second: true if it came back.
fn pings(ns: &str, dst: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", dst])
        .output()
        .unwrap()
        .status
        .success()
}

fn echo_once(s: &mut TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).is_err() {
        return false;
    }
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).is_ok() && buf == msg
}

#[test]
fn ssh_connection_survives_a_partition_that_covers_it() {
    let p = Pair::new("ssh");
    p.nf(&p.a, &["attach", "pa"], &[]);
    p.nf(&p.b, &["attach", "pb"], &[]);
    // An echo server on B, port 2222, standing in for sshd; bounded to a few connections.
    let listener = in_ns(&p.b, || TcpListener::bind("192.0.2.2:2222").unwrap());
    listener.set_nonblocking(false).unwrap();
    let server = thread::spawn(move || {
        for _ in 0..2 {
            let Ok((mut c, _)) = listener.accept() else {
                return;
            };
            thread::spawn(move || {
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 64];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let ssh_local: SocketAddr = "192.0.2.1:50022".parse().unwrap();
    let server_addr: SocketAddr = "192.0.2.2:2222".parse().unwrap();
    let mut conn = in_ns(&p.a, move || bound_client(ssh_local, server_addr).unwrap());
    assert!(
        echo_once(&mut conn, b"before"),
        "control: the connection works"
    );

    // The operator, logged in over that connection, partitions A from B on both hosts.
    let env = [("SSH_CONNECTION", "192.0.2.1 50022 192.0.2.2 2222")];
    for ns in [&p.a, &p.b] {
        let out = p.nf(
            ns,
            &["partition", "192.0.2.1", "192.0.2.2", "--name", "cut"],
            &env,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("covers protected traffic"),
            "no warning: {err}"
        );
    }
    assert!(
        echo_once(&mut conn, b"during"),
        "the protected connection was cut"
    );
    // Everything else between A and B is cut: a new connection from another port fails.
    let other: SocketAddr = "192.0.2.1:50023".parse().unwrap();
    let fresh = in_ns(&p.a, move || bound_client(other, server_addr));
    assert!(
        fresh.is_err(),
        "an unprotected connection got through the partition"
    );
    assert!(!pings(&p.a, "192.0.2.2"), "ICMP got through the partition");
    let list = p.nf(&p.b, &["protect", "list", "--json"], &[]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let ssh = v["protected"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["label"] == "ssh:192.0.2.1:50022")
        .expect("ssh protection listed");
    assert!(
        ssh["packets"].as_u64().unwrap() >= 2,
        "protection counters: {ssh}"
    );
    drop(conn);
    drop(server);
}

#[test]
fn no_protect_means_no_protection_and_protect_add_protects() {
    let p = Pair::new("np");
    p.nf(&p.b, &["attach", "pb"], &[]);
    let env = [("SSH_CONNECTION", "192.0.2.1 50022 192.0.2.2 2222")];
    p.nf(
        &p.b,
        &[
            "partition",
            "192.0.2.1",
            "192.0.2.2",
            "--name",
            "cut",
            "--no-protect",
        ],
        &env,
    );
    let list = p.nf(&p.b, &["protect", "list", "--json"], &[]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let labels: Vec<_> = v["protected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["label"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(labels, ["loopback"]);
    let ping = || pings(&p.a, "192.0.2.2");
    assert!(!ping());
    p.nf(&p.b, &["protect", "add", "192.0.2.1"], &[]);
    assert!(ping(), "protect add did not win over the partition");
    p.nf(&p.b, &["protect", "del", "192.0.2.1"], &[]);
    assert!(!ping());
}
