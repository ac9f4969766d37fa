//! The pieces the `netfault cluster` tests and the demo share: nodes n1.. named in host order,
//! the cluster file's `[[node]]` tables for them, the reachability matrix measured on the wire
//! (UDP from every node to every other), the matrix a grudge implies, and a bounded run of
//! `netfault cluster`.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, ensure};

use crate::lab::{Host, UdpBurst, output_within, run_in};

/// What `netfault cluster partition --json` prints: each node and the nodes it drops.
pub type Grudge = BTreeMap<String, BTreeSet<String>>;

/// m[(j, x)]: whether node j reaches node x (0-based, j != x).
pub type Matrix = BTreeMap<(usize, usize), bool>;

/// Node i's name (0-based): n1, n2, ...
pub fn node_name(i: usize) -> String {
    format!("n{}", i + 1)
}

/// Every ordered pair of distinct nodes among `n`.
fn pairs(n: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n)
        .flat_map(move |j| (0..n).map(move |x| (j, x)))
        .filter(|(j, x)| j != x)
}

/// The cluster file's `[[node]]` tables n1.. for `hosts`: name, both addresses and the
/// interface, then whatever `more(i, host, lines)` adds or changes (the transport).
pub fn cluster_text(
    hosts: &[Host],
    mut more: impl FnMut(usize, &Host, &mut Vec<String>),
) -> String {
    let mut s = String::new();
    for (i, h) in hosts.iter().enumerate() {
        let mut lines = vec![
            format!("name = \"{}\"", node_name(i)),
            format!("addrs = [\"{}\", \"{}\"]", h.v4, h.v6),
            format!("iface = [\"{}\"]", h.iface),
        ];
        more(i, h, &mut lines);
        s.push_str("[[node]]\n");
        for l in lines {
            s.push_str(&l);
            s.push('\n');
        }
        s.push('\n');
    }
    s
}

/// [`cluster_text`] over the netns transport: each node is its host's namespace.
pub fn netns_cluster_text(hosts: &[Host]) -> String {
    cluster_text(hosts, |_, h, lines| {
        lines.push(format!("netns = \"{}\"", h.ns));
    })
}

/// reach[(j, x, v6)]: whether UDP from node j arrives at node x, for every ordered pair and
/// each family in `families`. 20 datagrams per burst, all bursts at once, each to a port of its
/// own (4100 + 100·v6 + 10·j + x).
pub fn reach(hosts: &[Host], families: &[bool]) -> Result<BTreeMap<(usize, usize, bool), bool>> {
    let mut burst = UdpBurst::new(20).rate(2000);
    burst.quiet = Duration::from_millis(150);
    let probes: Vec<(usize, usize, bool)> = pairs(hosts.len())
        .flat_map(|(j, x)| families.iter().map(move |&v6| (j, x, v6)))
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .iter()
            .map(|&(j, x, v6)| {
                let (from, to) = (&hosts[j], &hosts[x]);
                let port = 4100 + 100 * u16::from(v6) + 10 * j as u16 + x as u16;
                s.spawn(move || -> Result<_> {
                    let r = burst.run(&from.ns, &to.ns, to.sock(v6, port))?;
                    Ok(((j, x, v6), r.received() > 0))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a probe panicked")))
            })
            .collect()
    })
}

/// Whether every probe of [`reach`] (both families, every pair) is `want`. For polling across a
/// transition, when one family may already pass while the other does not: no agreement asked.
pub fn all_reach(hosts: &[Host], want: bool) -> Result<bool> {
    Ok(reach(hosts, &[false, true])?.values().all(|r| *r == want))
}

/// The matrix on the wire, both families measured and required to agree (the faults of these
/// tests drop everything or nothing, so one datagram arriving means reachable).
pub fn matrix(hosts: &[Host]) -> Result<Matrix> {
    let mut out = Matrix::new();
    for ((j, x, v6), ok) in reach(hosts, &[false, true])? {
        if let Some(p) = out.insert((j, x), ok) {
            ensure!(
                p == ok,
                "{} -> {}: v4 and v6 disagree (v6 {v6}: {ok})",
                node_name(j),
                node_name(x)
            );
        }
    }
    Ok(out)
}

/// Every pair of `n` nodes reachable but those in `cut` (0-based (from, to)).
pub fn want(n: usize, cut: &[(usize, usize)]) -> Matrix {
    pairs(n).map(|p| (p, !cut.contains(&p))).collect()
}

/// Every pair of `n` nodes reachable.
pub fn full(n: usize) -> Matrix {
    want(n, &[])
}

/// The matrix `grudge` implies for `n` nodes: j reaches x unless x drops j. Every node must
/// be a key of the grudge.
pub fn expected(grudge: &Grudge, n: usize) -> Result<Matrix> {
    pairs(n)
        .map(|(j, x)| {
            let drops = grudge
                .get(&node_name(x))
                .with_context(|| format!("the grudge has no {}: {grudge:?}", node_name(x)))?;
            Ok(((j, x), !drops.contains(&node_name(j))))
        })
        .collect()
}

/// The entries of partition `name` that node `i` (0-based) holds under `grudge`: one per peer it
/// drops and family, `NAME.from-PEER.v4` and `.v6`, sorted.
pub fn share(grudge: &Grudge, i: usize, name: &str) -> Vec<String> {
    let mut s: Vec<String> = grudge
        .get(&node_name(i))
        .into_iter()
        .flatten()
        .flat_map(|p| [format!("{name}.from-{p}.v4"), format!("{name}.from-{p}.v6")])
        .collect();
    s.sort();
    s
}

/// The pairs where `got` is not what `want` says, as `n1->n2 want true`.
pub fn diff(got: &Matrix, want: &Matrix) -> Vec<String> {
    want.iter()
        .filter(|(k, w)| got.get(k) != Some(w))
        .map(|((j, x), w)| format!("{}->{} want {w}", node_name(*j), node_name(*x)))
        .collect()
}

/// `netfault cluster --cluster FILE args...` with the binary `bin`: stdin closed, stdout and
/// stderr piped, not taken for an SSH session's (no `SSH_CONNECTION`).
pub fn cluster_command(bin: &Path, file: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.env_remove("SSH_CONNECTION")
        .arg("cluster")
        .arg("--cluster")
        .arg(file)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Starts `cmd` in namespace `ns` (`None`: this process's own).
pub fn spawn_in(ns: Option<&str>, cmd: &mut Command) -> Result<Child> {
    match ns {
        Some(ns) => run_in(ns, || cmd.spawn())?.context("spawn"),
        None => cmd.spawn().context("spawn"),
    }
}

/// [`cluster_command`] run to its end from namespace `ns`; an error if it outlives `limit`
/// (then it is killed).
pub fn run_cluster(
    ns: Option<&str>,
    bin: &Path,
    file: &Path,
    args: &[&str],
    limit: Duration,
) -> Result<Output> {
    let mut child = spawn_in(ns, &mut cluster_command(bin, file, args))?;
    output_within(&mut child, limit).with_context(|| format!("netfault cluster {args:?}"))
}
