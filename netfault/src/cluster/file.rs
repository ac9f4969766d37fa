//! The cluster file: which hosts take part, the addresses the others reach each by, the
//! interfaces to attach to, and how the coordinator reaches each (exactly one transport).
//!
//! ```toml
//! [[node]]
//! name = "n1"
//! addrs = ["192.0.2.1", "2001:db8::1"]   # what the other nodes reach it by (v4 and/or v6)
//! iface = ["eth1"]                  # where netfault attaches on it
//! netns = "lab-n1"                  # a namespace on this host; or, of a process here:
//!                                   # pid = 4242, or pidfile = "/run/n1.pid" (read at each use),
//!                                   # or container = "web" (Docker/Podman, looked up at each use)
//!
//! [[node]]
//! name = "n2"
//! addrs = ["192.0.2.2"]
//! iface = ["eth1"]
//! agent = "https://192.0.2.2:7070"   # or http://HOST:PORT
//! token_file = "/etc/netfault/n2.token"
//! ca_file = "/etc/netfault/ca.pem"  # https only, optional
//!
//! [[node]]
//! name = "n3"
//! addrs = ["192.0.2.3"]
//! iface = ["eth1", "eth2"]
//! ssh = "root@192.0.2.3"
//! ssh_options = ["-p", "2222"]      # optional, passed to ssh before the target
//! netfault = "/usr/local/bin/netfault"   # optional, the remote binary (default: on PATH)
//! pause_target = "pidfile:/run/etcd.pid"  # optional, any transport: the process `cluster
//!                                   # pause` stops, as its host names it: "pid:N",
//!                                   # "pidfile:PATH" (read at each pause), "cgroup:PATH"
//! ```
//!
//! Unknown keys, duplicate names or addresses, zero or two transports, a key of a transport the
//! node does not use (`token_file` without `agent`) and bad addresses are refused with the key
//! path (`node[2].agent`, `node[0].addrs[1]`).
use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use toml::{Table, Value};

use crate::spec::toml_util::{at, check_keys, err, parse_doc, string, strings, tables};
use crate::spec::{SpecError, validate_name};

/// A validated cluster file: at least one node, names and addresses unique.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// In file order: `halves` and `bridge` split by it.
    pub nodes: Vec<Node>,
}

/// One host of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// The addresses other nodes reach this one by; partitions drop packets from them.
    pub addrs: Vec<IpAddr>,
    /// Interfaces netfault attaches to on this node.
    pub ifaces: Vec<String>,
    pub transport: Transport,
    /// The node's process, for `cluster pause` and `pause` steps (`pause_target`), as the
    /// node's own host names it: the watchdog runs there.
    pub pause_target: Option<crate::pause::node::Place>,
}

/// How the coordinator reaches a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// A network namespace on the coordinator's own host (`/run/netns/NAME`): no network in
    /// between, so nothing to protect.
    Netns(String),
    /// The network namespace of a process on the coordinator's host (a container's).
    Pid(i32),
    /// As `Pid`, the PID read from this file at each operation (a restarted process keeps
    /// its node).
    PidFile(PathBuf),
    /// As `Pid`, a running Docker or Podman container's process, asked of its engine at each
    /// operation (a restarted container keeps its node).
    Container(String),
    /// A `netfault agent` over HTTP(S), authenticated by a bearer token.
    Agent {
        url: AgentUrl,
        token_file: PathBuf,
        /// CA bundle to verify the agent's certificate by (https only; default: system roots).
        ca_file: Option<PathBuf>,
    },
    /// `ssh [options] target netfault ...`.
    Ssh {
        /// `user@host` or `host`.
        target: String,
        /// Passed to ssh before the target, verbatim.
        options: Vec<String>,
        /// The remote binary; `None`: `netfault` on the remote PATH.
        netfault: Option<String>,
    },
}

/// `http://HOST:PORT` or `https://HOST:PORT` (IPv6 hosts in brackets), nothing after the port
/// but an optional `/`: the agent's API paths are the transport's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUrl {
    pub https: bool,
    /// A name or an address literal (without brackets).
    pub host: String,
    pub port: u16,
}

impl AgentUrl {
    /// The host as an address, when it is a literal (a name is resolved by the transport).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for AgentUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for AgentUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            |why: &str| format!("'{s}': {why} (expected http://HOST:PORT or https://HOST:PORT)");
        let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("not an http or https URL"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, p) = r
                .split_once("]:")
                .ok_or_else(|| bad("needs [V6ADDR]:PORT"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("the bracketed host is not an IPv6 address"));
            }
            (h, p)
        } else {
            let (h, p) = rest.rsplit_once(':').ok_or_else(|| bad("needs a port"))?;
            // `2001:db8::1:80` could split anywhere: IPv6 hosts go in brackets.
            if h.contains(':') {
                return Err(bad("put an IPv6 host in brackets"));
            }
            (h, p)
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
        {
            return Err(bad("bad host"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| bad("the port must be 1 to 65535, with nothing after it"))?;
        Ok(AgentUrl {
            https,
            host: host.to_string(),
            port,
        })
    }
}

impl Transport {
    /// The host and port the coordinator connects to, if the transport goes over the network.
    /// SSH's port is 22 unless its options say `-p N`, `-oPort=N` or `-o Port=N`.
    pub fn endpoint(&self) -> Option<(&str, u16)> {
        match self {
            Transport::Netns(_)
            | Transport::Pid(_)
            | Transport::PidFile(_)
            | Transport::Container(_) => None,
            Transport::Agent { url, .. } => Some((url.host.as_str(), url.port)),
            Transport::Ssh {
                target, options, ..
            } => {
                let host = target.rsplit_once('@').map_or(target.as_str(), |(_, h)| h);
                Some((host, ssh_port(options)))
            }
        }
    }

    /// [`endpoint`](Self::endpoint) as a socket address, when its host is an address literal.
    pub fn literal_endpoint(&self) -> Option<SocketAddr> {
        let (h, p) = self.endpoint()?;
        Some(SocketAddr::new(h.parse().ok()?, p))
    }
}

/// The port ssh's options set: on ssh's command line the first `-p` or `-o Port` wins.
fn ssh_port(options: &[String]) -> u16 {
    let mut it = options.iter().map(String::as_str);
    while let Some(o) = it.next() {
        let v = if o == "-p" {
            it.next()
        } else if let Some(v) = o.strip_prefix("-p") {
            Some(v)
        } else if o == "-o" {
            it.next().and_then(port_option)
        } else {
            o.strip_prefix("-o").and_then(port_option)
        };
        if let Some(p) = v.and_then(|v| v.trim().parse().ok()) {
            return p;
        }
    }
    22
}

fn port_option(o: &str) -> Option<&str> {
    let (k, v) = o.split_once(['=', ' '])?;
    k.trim().eq_ignore_ascii_case("port").then_some(v)
}

const NODE_KEYS: &[&str] = &[
    "name",
    "addrs",
    "iface",
    "netns",
    "pid",
    "pidfile",
    "container",
    "agent",
    "token_file",
    "ca_file",
    "ssh",
    "ssh_options",
    "netfault",
    "pause_target",
];
const TRANSPORTS: &[&str] = &["netns", "pid", "pidfile", "container", "agent", "ssh"];
/// Keys that belong to one transport: refused on a node that uses another, so a typo in
/// `agent` does not silently leave a `token_file` unused.
const TRANSPORT_OF: &[(&str, &str)] = &[
    ("token_file", "agent"),
    ("ca_file", "agent"),
    ("ssh_options", "ssh"),
    ("netfault", "ssh"),
];

impl Cluster {
    /// Parses and validates a cluster file.
    pub fn parse(text: &str) -> Result<Cluster, SpecError> {
        let doc = parse_doc(text)?;
        check_keys("", &doc, &["node"])?;
        let entries = match doc.get("node") {
            None => vec![],
            Some(v) => tables("node", v)?,
        };
        if entries.is_empty() {
            return Err(err("node", "the cluster needs at least one [[node]]"));
        }
        let mut nodes = Vec::new();
        let mut names = HashMap::new();
        let mut addrs: HashMap<IpAddr, String> = HashMap::new();
        for (path, t) in &entries {
            let (node, addr_paths) = node(path, t)?;
            if let Some(first) = names.insert(node.name.clone(), path.clone()) {
                return Err(err(
                    &at(path, "name"),
                    format!("'{}' is the name of {first} already", node.name),
                ));
            }
            for (a, p) in node.addrs.iter().zip(&addr_paths) {
                if let Some(owner) = addrs.insert(*a, node.name.clone()) {
                    let whose = if owner == node.name {
                        "this node".to_string()
                    } else {
                        format!("node '{owner}'")
                    };
                    return Err(err(p, format!("{a} is an address of {whose} already")));
                }
            }
            nodes.push(node);
        }
        Ok(Cluster { nodes })
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Node names in file order.
    pub fn names(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    /// The node an address belongs to.
    pub fn owner(&self, addr: IpAddr) -> Option<&Node> {
        self.nodes.iter().find(|n| n.addrs.contains(&addr))
    }
}

/// One `[[node]]`, and the key path of each of its addresses (for the duplicate check).
fn node(path: &str, t: &Table) -> Result<(Node, Vec<String>), SpecError> {
    check_keys(path, t, NODE_KEYS)?;
    let p = |k: &str| at(path, k);
    let required =
        |k: &str| -> Result<&Value, SpecError> { t.get(k).ok_or_else(|| err(&p(k), "missing")) };
    let name = string(&p("name"), required("name")?)?.to_string();
    validate_name(&p("name"), &name)?;

    let mut addrs = Vec::new();
    let mut addr_paths = Vec::new();
    let list = strings(&p("addrs"), required("addrs")?)?;
    if list.is_empty() {
        return Err(err(
            &p("addrs"),
            "empty (give the addresses other nodes reach it by)",
        ));
    }
    for (ap, s) in list {
        let a = address(&ap, s)?;
        addrs.push(a);
        addr_paths.push(ap);
    }

    let mut ifaces: Vec<String> = Vec::new();
    let list = strings(&p("iface"), required("iface")?)?;
    if list.is_empty() {
        return Err(err(&p("iface"), "empty (give the interfaces to attach to)"));
    }
    for (ip, s) in list {
        check_ifname(&ip, s)?;
        if ifaces.iter().any(|i| i == s) {
            return Err(err(&ip, format!("'{s}' is listed twice")));
        }
        ifaces.push(s.to_string());
    }

    Ok((
        Node {
            name,
            addrs,
            ifaces,
            transport: transport(path, t)?,
            pause_target: t
                .get("pause_target")
                .map(|v| {
                    let k = p("pause_target");
                    crate::pause::node::Place::parse(&k, string(&k, v)?)
                })
                .transpose()?,
        },
        addr_paths,
    ))
}

/// An address other nodes can send to. Unspecified and multicast addresses name no host, and
/// loopback would never be cut: netfault passes loopback ahead of every rule.
fn address(path: &str, s: &str) -> Result<IpAddr, SpecError> {
    let a: IpAddr = s.trim().parse().map_err(|_| {
        err(
            path,
            format!("'{s}' is not an IP address (a node's addresses are hosts, not CIDRs)"),
        )
    })?;
    if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
        return Err(err(
            path,
            format!("{a} is not an address another node can reach this one by"),
        ));
    }
    // An IPv4-mapped IPv6 address is an IPv4 packet on the wire: the data path sees the v4 form.
    if let IpAddr::V6(v6) = a
        && v6.to_ipv4_mapped().is_some()
    {
        return Err(err(
            path,
            format!("{a} is IPv4-mapped; write the IPv4 address"),
        ));
    }
    Ok(a)
}

/// Linux interface names: 1 to 15 bytes, no '/', no whitespace, not `.` or `..`.
fn check_ifname(path: &str, s: &str) -> Result<(), SpecError> {
    if s.is_empty()
        || s.len() > 15
        || s == "."
        || s == ".."
        || s.chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(err(
            path,
            format!("'{s}' is not an interface name (1 to 15 characters, no '/', ':' or spaces)"),
        ));
    }
    Ok(())
}

fn transport(path: &str, t: &Table) -> Result<Transport, SpecError> {
    let p = |k: &str| at(path, k);
    // File order, so the error names the second transport as written.
    let given: Vec<&str> = t
        .keys()
        .map(String::as_str)
        .filter(|k| TRANSPORTS.contains(k))
        .collect();
    let kind = match given.as_slice() {
        [] => {
            return Err(err(
                path,
                "needs a transport: one of netns = \"NAME\", pid = PID, pidfile = \"PATH\", container = \"NAME\", agent = \"http(s)://HOST:PORT\", ssh = \"user@host\"",
            ));
        }
        [one] => *one,
        [first, second, ..] => {
            return Err(err(
                &p(second),
                format!("a node has exactly one transport, and this one has {first} already"),
            ));
        }
    };
    for &(k, owner) in TRANSPORT_OF {
        if t.contains_key(k) && owner != kind {
            return Err(err(
                &p(k),
                format!("only with {owner} (this node uses {kind})"),
            ));
        }
    }
    let path_of = |k: &str| -> Result<Option<PathBuf>, SpecError> {
        t.get(k)
            .map(|v| {
                let s = string(&p(k), v)?;
                if s.is_empty() || s.contains('\0') {
                    return Err(err(&p(k), "expected a file path"));
                }
                Ok(PathBuf::from(s))
            })
            .transpose()
    };
    let value = |k: &str| -> Result<&str, SpecError> {
        t.get(k)
            .ok_or_else(|| err(&p(k), "missing"))
            .and_then(|v| string(&p(k), v))
    };
    Ok(match kind {
        "netns" => {
            let n = value("netns")?;
            // As `--netns`: a name under /run/netns, so no path separators.
            if n.is_empty() || n.contains('/') || n == "." || n == ".." || n.contains('\0') {
                return Err(err(&p("netns"), format!("'{n}' is not a namespace name")));
            }
            Transport::Netns(n.to_string())
        }
        "pid" => {
            let v = t.get("pid").and_then(toml::Value::as_integer);
            match v.and_then(|v| i32::try_from(v).ok()).filter(|v| *v > 1) {
                Some(pid) => Transport::Pid(pid),
                None => {
                    return Err(err(
                        &p("pid"),
                        "expected a process id (a whole number above 1)",
                    ));
                }
            }
        }
        "pidfile" => {
            let f = PathBuf::from(value("pidfile")?);
            if !f.is_absolute() {
                return Err(err(&p("pidfile"), "expected an absolute path"));
            }
            Transport::PidFile(f)
        }
        "container" => {
            let c = value("container")?;
            if !crate::targets::engine::valid_name(c) {
                return Err(err(
                    &p("container"),
                    format!("'{c}' is not a container name or ID (letters, digits, '_', '.', '-')"),
                ));
            }
            Transport::Container(c.to_string())
        }
        "agent" => {
            let url: AgentUrl = value("agent")?
                .parse()
                .map_err(|m: String| err(&p("agent"), m))?;
            let token_file = path_of("token_file")?
                .ok_or_else(|| err(&p("token_file"), "missing (an agent needs a token file)"))?;
            let ca_file = path_of("ca_file")?;
            if ca_file.is_some() && !url.https {
                return Err(err(&p("ca_file"), "only with an https:// agent"));
            }
            Transport::Agent {
                url,
                token_file,
                ca_file,
            }
        }
        _ => {
            let target = value("ssh")?;
            check_ssh_target(&p("ssh"), target)?;
            let options = match t.get("ssh_options") {
                None => vec![],
                Some(v) => match v {
                    Value::Array(_) => strings(&p("ssh_options"), v)?
                        .into_iter()
                        .map(|(op, s)| {
                            if s.is_empty() || s.contains('\0') {
                                Err(err(&op, "empty option"))
                            } else {
                                Ok(s.to_string())
                            }
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err(err(&p("ssh_options"), "expected a list of strings")),
                },
            };
            let netfault = match t.get("netfault") {
                None => None,
                Some(v) => {
                    let s = string(&p("netfault"), v)?;
                    if s.is_empty() || s.chars().any(char::is_control) {
                        return Err(err(&p("netfault"), "expected the remote binary's path"));
                    }
                    Some(s.to_string())
                }
            };
            Transport::Ssh {
                target: target.to_string(),
                options,
                netfault,
            }
        }
    })
}

/// `user@host` or `host`. A target starting with '-' would be read by ssh as an option.
fn check_ssh_target(path: &str, s: &str) -> Result<(), SpecError> {
    let (user, host) = match s.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, s),
    };
    let bad = |c: char| c.is_whitespace() || c.is_control() || c == '@';
    if host.is_empty()
        || s.starts_with('-')
        || host.chars().any(bad)
        || user.is_some_and(|u| u.is_empty() || u.chars().any(bad))
    {
        return Err(err(path, format!("'{s}' is not an ssh target (user@host)")));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const EXAMPLE: &str = r#"
[[node]]
name = "n1"
addrs = ["192.0.2.1", "2001:db8::1"]
iface = ["eth1"]
netns = "lab-n1"

[[node]]
name = "n2"
addrs = ["192.0.2.2"]
iface = ["eth1"]
agent = "https://192.0.2.2:7070"
token_file = "/etc/netfault/n2.token"
ca_file = "/etc/netfault/ca.pem"

[[node]]
name = "n3"
addrs = ["192.0.2.3"]
iface = ["eth1", "eth2"]
ssh = "root@192.0.2.3"
ssh_options = ["-p", "2222"]
netfault = "/usr/local/bin/netfault"
"#;

    #[test]
    fn the_documented_example_parses() {
        let c = Cluster::parse(EXAMPLE).unwrap();
        assert_eq!(c.names(), ["n1", "n2", "n3"]);
        assert_eq!(c.nodes[0].addrs.len(), 2);
        assert_eq!(c.nodes[0].transport, Transport::Netns("lab-n1".into()));
        assert_eq!(c.nodes[0].transport.endpoint(), None);
        let local = |t: &str| {
            let text =
                format!("[[node]]\nname = \"n\"\naddrs = [\"192.0.2.9\"]\niface = [\"e\"]\n{t}\n");
            Cluster::parse(&text).unwrap().nodes[0].transport.clone()
        };
        assert_eq!(local("pid = 42"), Transport::Pid(42));
        assert_eq!(
            local("pidfile = \"/run/n.pid\""),
            Transport::PidFile("/run/n.pid".into())
        );
        assert_eq!(
            local("container = \"web-1\""),
            Transport::Container("web-1".into())
        );
        let Transport::Agent { url, ca_file, .. } = &c.nodes[1].transport else {
            panic!("{:?}", c.nodes[1].transport);
        };
        assert!(url.https);
        assert_eq!(url.to_string(), "https://192.0.2.2:7070");
        assert!(ca_file.is_some());
        assert_eq!(c.nodes[2].ifaces, ["eth1", "eth2"]);
        assert_eq!(
            c.nodes[2].transport.literal_endpoint(),
            Some("192.0.2.3:2222".parse().unwrap())
        );
        assert_eq!(c.owner("2001:db8::1".parse().unwrap()).unwrap().name, "n1");
        assert_eq!(c.nodes[0].pause_target, None);
        let text = "[[node]]\nname = \"n\"\naddrs = [\"192.0.2.9\"]\niface = [\"e\"]\nssh = \"h\"\npause_target = \"pidfile:/run/e.pid\"\n";
        assert_eq!(
            Cluster::parse(text).unwrap().nodes[0].pause_target,
            Some(crate::pause::node::Place::PidFile("/run/e.pid".into()))
        );
    }

    #[test]
    fn urls_and_ssh_ports() {
        let u: AgentUrl = "http://[2001:db8::2]:80/".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.https),
            ("2001:db8::2", 80, false)
        );
        assert_eq!(u.to_string(), "http://[2001:db8::2]:80");
        assert_eq!(u.ip(), Some("2001:db8::2".parse().unwrap()));
        let u: AgentUrl = "https://agent-3.lab:7070".parse().unwrap();
        assert_eq!(u.ip(), None);
        for bad in [
            "ftp://a:1",
            "http://a",
            "http://a:0",
            "http://a:70000",
            "http://a:80/api",
            "http://:80",
            "http://[zz]:80",
            "http://2001:db8::1:80x",
            "http://2001:db8::1:80",
            "http://us er:80",
        ] {
            assert!(bad.parse::<AgentUrl>().is_err(), "{bad}");
        }
        let o = |v: &[&str]| ssh_port(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(o(&[]), 22);
        assert_eq!(o(&["-p", "2200"]), 2200);
        assert_eq!(o(&["-p2201"]), 2201);
        assert_eq!(o(&["-o", "Port=2202"]), 2202);
        assert_eq!(o(&["-oPort 2203"]), 2203);
        assert_eq!(o(&["-o", "StrictHostKeyChecking=no", "-i", "k"]), 22);
    }

    #[test]
    fn malformed_files_name_the_key_path() {
        let n = |extra: &str| {
            format!(
                "[[node]]\nname = \"n1\"\naddrs = [\"192.0.2.1\"]\niface = [\"eth0\"]\n{extra}\n"
            )
        };
        let two = |a: &str, b: &str| {
            format!(
                "[[node]]\nname = \"n1\"\naddrs = [{a}]\niface = [\"eth0\"]\nnetns = \"x\"\n\
                 [[node]]\nname = \"n2\"\naddrs = [{b}]\niface = [\"eth0\"]\nnetns = \"y\"\n"
            )
        };
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "node"),
            ("node = 1".into(), "node"),
            ("nodes = []".into(), "nodes"),
            (n(""), "node[0]"),
            (n("netns = \"a\"\nsrcc = 1"), "node[0].srcc"),
            (n("netns = \"a\"\nagent = \"http://h:1\""), "node[0].agent"),
            (n("ssh = \"a@b\"\nnetns = \"a\""), "node[0].netns"),
            (n("netns = \"a\"\ntoken_file = \"t\""), "node[0].token_file"),
            (n("netns = \"a\"\nssh_options = [\"-v\"]"), "node[0].ssh_options"),
            (n("agent = \"https://h:1\"\ntoken_file = \"t\"\nnetfault = \"/x\""), "node[0].netfault"),
            (n("agent = \"http://h:1\""), "node[0].token_file"),
            (n("agent = \"http://h:1\"\ntoken_file = \"t\"\nca_file = \"c\""), "node[0].ca_file"),
            (n("agent = \"h:1\"\ntoken_file = \"t\""), "node[0].agent"),
            (n("netns = \"a/b\""), "node[0].netns"),
            (n("netns = 3"), "node[0].netns"),
            (n("pid = 1"), "node[0].pid"),
            (n("pid = \"42\""), "node[0].pid"),
            (n("pidfile = \"n1.pid\""), "node[0].pidfile"),
            (n("container = \"a/b\""), "node[0].container"),
            (n("container = 3"), "node[0].container"),
            (n("container = \"web\"\npid = 42"), "node[0].pid"),
            (n("pid = 42\nnetns = \"a\""), "node[0].netns"),
            (n("ssh = \"-oProxyCommand=x\""), "node[0].ssh"),
            (n("ssh = \"@host\""), "node[0].ssh"),
            (n("ssh = \"a b@host\""), "node[0].ssh"),
            (n("ssh = \"u@h\"\nssh_options = \"-v\""), "node[0].ssh_options"),
            (n("ssh = \"u@h\"\nssh_options = [\"\"]"), "node[0].ssh_options[0]"),
            ("[[node]]\nname = \"n1\"\naddrs = []\niface = [\"e\"]\nnetns = \"a\"".into(), "node[0].addrs"),
            ("[[node]]\nname = \"n1\"\niface = [\"e\"]\nnetns = \"a\"".into(), "node[0].addrs"),
            ("[[node]]\naddrs = [\"192.0.2.1\"]\niface = [\"e\"]\nnetns = \"a\"".into(), "node[0].name"),
            ("[[node]]\nname = \"n 1\"\naddrs = [\"192.0.2.1\"]\niface = [\"e\"]\nnetns = \"a\"".into(), "node[0].name"),
            ("[[node]]\nname = \"n1\"\naddrs = [\"192.0.2.1\"]\niface = []\nnetns = \"a\"".into(), "node[0].iface"),
            ("[[node]]\nname = \"n1\"\naddrs = [\"192.0.2.1\"]\niface = [\"e\", \"e\"]\nnetns = \"a\"".into(), "node[0].iface[1]"),
            ("[[node]]\nname = \"n1\"\naddrs = [\"192.0.2.1\"]\niface = [\"averyveryverylongname\"]\nnetns = \"a\"".into(), "node[0].iface[0]"),
            (two("\"192.0.2.1\", \"192.0.2.300\"", "\"192.0.2.2\""), "node[0].addrs[1]"),
            (two("\"192.0.2.1\", \"192.0.2.0/24\"", "\"192.0.2.2\""), "node[0].addrs[1]"),
            (two("\"192.0.2.1\", \"127.0.0.1\"", "\"192.0.2.2\""), "node[0].addrs[1]"),
            (two("\"0.0.0.0\"", "\"192.0.2.2\""), "node[0].addrs[0]"),
            (two("\"::ffff:192.0.2.9\"", "\"192.0.2.2\""), "node[0].addrs[0]"),
            (two("\"192.0.2.1\", \"192.0.2.1\"", "\"192.0.2.2\""), "node[0].addrs[1]"),
            (two("\"192.0.2.1\"", "\"192.0.2.3\", \"192.0.2.1\""), "node[1].addrs[1]"),
            (two("\"2001:db8::1\"", "\"2001:db8:0::1\""), "node[1].addrs[0]"),
            (two("1", "\"192.0.2.2\""), "node[0].addrs[0]"),
            (format!("{}{}", n("netns = \"a\""), "[[node]]\nname = \"n1\"\naddrs = [\"192.0.2.2\"]\niface = [\"e\"]\nnetns = \"b\""), "node[1].name"),
            ("[[node]\n".into(), "FILE"),
            (n("netns = \"a\"\npause_target = \"pid:x\""), "node[0].pause_target"),
            (n("netns = \"a\"\npause_target = \"container:\""), "node[0].pause_target"),
            (n("netns = \"a\"\npause_target = 7"), "node[0].pause_target"),
        ];
        for (text, path) in &cases {
            let e = Cluster::parse(text).expect_err(text);
            assert_eq!(e.field, *path, "{text}: {e}");
        }
    }

    #[test]
    fn a_lone_string_is_a_list_of_one() {
        let c = Cluster::parse(
            "[[node]]\nname = \"n1\"\naddrs = \"192.0.2.1\"\niface = \"eth0\"\nnetns = \"a\"\n",
        )
        .unwrap();
        assert_eq!(c.nodes[0].ifaces, ["eth0"]);
    }
}
