//! Rule-set files (TOML) for `netfault apply`. Pure: text in, validated specs out.
//!
//! ```toml
//! [[rule]]
//! name = "r1"
//! dir = "ingress"            # ingress | egress | both (default)
//! src = ["192.0.2.0/24"]     # also dst: lists of addresses or CIDRs
//! proto = "udp"              # tcp | udp | icmp | any (default)
//! sport = "1000-2000"        # also dport: a port, "P" or "LO-HI"
//! drop = "30%"               # also duplicate: "30%", 0.3
//! delay = "50ms"             # also jitter = "10ms"
//! distribution = "normal"    # uniform (default) | normal | pareto | paretonormal
//! reorder = false            # let jittered packets overtake each other
//! rate = "10mbit"            # pace matched traffic
//! burst = 4                  # with drop: lose in runs averaging 4 (Gilbert-Elliott)
//! gemodel = "1%,25%,100%,0%" # or netem's p,r,1-h,1-k instead of drop and burst
//! burst_scope = "flow"       # flow (default) | rule: one chain per flow or for the rule
//! conn = "new"               # new | established: TCP only (needs proto = "tcp")
//! cgroup = "svc/a"           # only sockets of this cgroup v2 subtree (path absolute or
//!                            # relative to the cgroup2 mount)
//! ttl = "1m"                 # or "none"; default 10m
//!
//! [[partition]]
//! name = "p1"
//! a = ["192.0.2.1"]
//! b = ["192.0.2.2", "192.0.2.3"]
//! oneway = false
//! conn = "new"               # cut only TCP connections being opened
//! cgroup = "svc/a"           # cut only the traffic of this cgroup's sockets
//! ```
//!
//! Every key but `name` is optional. Unknown keys and empty address lists are refused with the
//! key's path (`rule[1].srcc`). A rule that would hit every packet (no match field, or only
//! 0.0.0.0/0 and ::/0) is refused unless it says `all = true`.
use toml::{Table, Value};

use crate::spec::{
    CgroupMatch, Kind, PortRange, RuleSpec, SpecError, Ttl, actions, parse_net,
    toml_util::{boolean, check_keys, err, string},
    validate_name,
};

const RULE_KEYS: &[&str] = &[
    "name", "dir", "src", "dst", "proto", "sport", "dport", "iface", "ttl", "priority", "all",
    "conn", "cgroup",
];
const PARTITION_KEYS: &[&str] = &[
    "name",
    "a",
    "b",
    "oneway",
    "ttl",
    "conn",
    "reject",
    "reject_rate",
    "cgroup",
];

fn nets(path: &str, v: &Value) -> Result<Vec<ipnet::IpNet>, SpecError> {
    let list = match v {
        Value::Array(a) => a.clone(),
        Value::String(_) => vec![v.clone()],
        _ => return Err(err(path, "expected a list of addresses or CIDRs")),
    };
    if list.is_empty() {
        return Err(err(
            path,
            "empty address list (leave the key out to match any address)",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, e)| {
            let p = format!("{path}[{i}]");
            parse_net(string(&p, e)?).map_err(|m| err(&p, m))
        })
        .collect()
}

pub(crate) fn ports(path: &str, v: &Value) -> Result<PortRange, SpecError> {
    match v {
        Value::Integer(i) => format!("{i}").parse().map_err(|m: String| err(path, m)),
        Value::String(s) => s.parse().map_err(|m: String| err(path, m)),
        _ => Err(err(path, "expected a port number or \"LO-HI\"")),
    }
}

/// `check_keys` for a rule: its own keys and every action's.
fn check_rule_keys(path: &str, t: &Table) -> Result<(), SpecError> {
    let all: Vec<&str> = RULE_KEYS.iter().chain(actions::KEYS).copied().collect();
    check_keys(path, t, &all)
}

fn ttl(path: &str, t: &Table) -> Result<Ttl, SpecError> {
    match t.get("ttl") {
        None => Ok(Ttl::default()),
        Some(v) => string(&format!("{path}.ttl"), v)?
            .parse()
            .map_err(|m: String| err(&format!("{path}.ttl"), m)),
    }
}

fn name(path: &str, t: &Table) -> Result<String, SpecError> {
    let p = format!("{path}.name");
    let v = t
        .get("name")
        .ok_or_else(|| err(&p, "missing (every entry needs a name)"))?;
    let n = string(&p, v)?.to_string();
    validate_name(&p, &n)?;
    Ok(n)
}

fn rule(path: &str, t: &Table) -> Result<(RuleSpec, Ttl), SpecError> {
    check_rule_keys(path, t)?;
    let at = |k: &str| format!("{path}.{k}");
    let mut r = RuleSpec::new(name(path, t)?, Kind::Rule);
    for (k, v) in t {
        let p = at(k);
        match k.as_str() {
            "dir" => r.dir = string(&p, v)?.parse().map_err(|m: String| err(&p, m))?,
            "src" => r.src = nets(&p, v)?,
            "dst" => r.dst = nets(&p, v)?,
            "proto" => r.proto = string(&p, v)?.parse().map_err(|m: String| err(&p, m))?,
            "sport" => r.sport = ports(&p, v)?,
            "dport" => r.dport = ports(&p, v)?,
            "iface" => r.iface = Some(string(&p, v)?.to_string()),
            "conn" => r.conn = string(&p, v)?.parse().map_err(|m: String| err(&p, m))?,
            "cgroup" => r.cgroup = Some(CgroupMatch::resolve(&p, string(&p, v)?)?),
            "priority" => {
                r.priority = v
                    .as_integer()
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| err(&p, "expected a whole number 0 to 4294967295"))?
            }
            "all" => {
                boolean(&p, v)?;
            }
            _ => {
                r.act.set_key(&p, k, v)?;
            }
        }
    }
    let all = t.get("all").and_then(Value::as_bool).unwrap_or(false);
    if r.matches_everything() && !all {
        return Err(err(
            path,
            "matches every packet; add a match field, or say `all = true` if that is what you want",
        ));
    }
    // Field names from validate() are the CLI's; map them to this file's paths.
    r.validate().map_err(|e| {
        let key = e
            .field
            .trim_start_matches("--")
            .to_lowercase()
            .replace('-', "_");
        let key = if key == "name" { "name".into() } else { key };
        SpecError::new(at(&key), e.msg)
    })?;
    Ok((r, ttl(path, t)?))
}

fn partition(path: &str, t: &Table) -> Result<(RuleSpec, Ttl), SpecError> {
    check_keys(path, t, PARTITION_KEYS)?;
    let at = |k: &str| format!("{path}.{k}");
    let side = |k: &str| -> Result<Vec<ipnet::IpNet>, SpecError> {
        nets(&at(k), t.get(k).ok_or_else(|| err(&at(k), "missing"))?)
    };
    let oneway = match t.get("oneway") {
        None => false,
        Some(v) => boolean(&at("oneway"), v)?,
    };
    let reject = super::reject::partition_keys(t, at)?;
    let conn = match t.get("conn") {
        None => Default::default(),
        Some(v) => string(&at("conn"), v)?
            .parse()
            .map_err(|m: String| err(&at("conn"), m))?,
    };
    let cgroup = match t.get("cgroup") {
        None => None,
        Some(v) => Some(CgroupMatch::resolve(
            &at("cgroup"),
            string(&at("cgroup"), v)?,
        )?),
    };
    let mut r = RuleSpec {
        src: side("a")?,
        dst: side("b")?,
        oneway,
        conn,
        cgroup,
        ..RuleSpec::new(name(path, t)?, Kind::Partition)
    };
    (r.act.reject, r.act.reject_rate) = (reject.reject, reject.reject_rate);
    Ok((r, ttl(path, t)?))
}

/// Parses and validates a whole rule-set file.
pub fn parse(text: &str) -> Result<Vec<(RuleSpec, Ttl)>, SpecError> {
    let doc: Table = text
        .parse()
        .map_err(|e: toml::de::Error| err("FILE", e.message().to_string()))?;
    let mut out = Vec::new();
    for (k, v) in &doc {
        let entries = match (k.as_str(), v) {
            ("rule" | "partition", Value::Array(a)) => a,
            ("rule" | "partition", _) => {
                return Err(err(k, "expected [[rule]] or [[partition]] tables"));
            }
            _ => {
                return Err(err(k, "unknown key (expected [[rule]] or [[partition]])"));
            }
        };
        for (i, e) in entries.iter().enumerate() {
            let path = format!("{k}[{i}]");
            let t = e.as_table().ok_or_else(|| err(&path, "expected a table"))?;
            out.push(if k == "rule" {
                rule(&path, t)?
            } else {
                partition(&path, t)?
            });
        }
    }
    let mut names = std::collections::HashSet::new();
    for (r, _) in &out {
        if !names.insert(r.name.clone()) {
            return Err(err("name", format!("'{}' is used twice", r.name)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Direction;

    const EXAMPLE: &str = r#"
[[rule]]
name = "r1"
dir = "ingress"
src = ["192.0.2.0/24"]
proto = "udp"
sport = "1000-2000"
drop = "30%"
ttl = "1m"

[[partition]]
name = "p1"
a = ["192.0.2.1"]
b = ["192.0.2.2", "192.0.2.3"]
oneway = false
"#;

    #[test]
    fn reject_in_rules_and_partitions() {
        let text = r#"
[[rule]]
name = "r"
src = ["192.0.2.0/24"]
reject = true
reject_rate = "50/s"

[[partition]]
name = "p"
a = ["192.0.2.1"]
b = ["192.0.2.2"]
reject = "icmp-admin"
"#;
        let set = parse(text).unwrap();
        assert_eq!(set[0].0.act.reject, Some(crate::spec::RejectKind::TcpReset));
        assert_eq!(set[0].0.act.reject_rate.unwrap().per_sec, 50);
        assert_eq!(
            set[1].0.act.reject,
            Some(crate::spec::RejectKind::IcmpAdmin)
        );
        // The agent's plans carry entries as JSON: reject survives the trip.
        let json = serde_json::to_string(&set[1].0).unwrap();
        let back: RuleSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, set[1].0);
        let bad = "[[partition]]\nname = \"p\"\na = [\"192.0.2.1\"]\nb = [\"192.0.2.2\"]\nreject_rate = \"5/s\"";
        assert_eq!(parse(bad).unwrap_err().field, "partition[0].reject_rate");
        let bad = "[[partition]]\nname = \"p\"\na = [\"192.0.2.1\"]\nb = [\"192.0.2.2\"]\nreject = \"rst\"";
        assert_eq!(parse(bad).unwrap_err().field, "partition[0].reject");
    }

    #[test]
    fn the_documented_example_parses() {
        let v = parse(EXAMPLE).unwrap();
        assert_eq!(v.len(), 2);
        let (r, ttl) = &v[0];
        assert_eq!(r.dir, Direction::Ingress);
        assert_eq!(r.sport, PortRange { lo: 1000, hi: 2000 });
        assert_eq!(r.act.drop, crate::spec::Prob(0.3));
        assert_eq!(*ttl, Ttl::For(std::time::Duration::from_secs(60)));
        assert_eq!(v[1].0.kind, Kind::Partition);
        assert_eq!(v[1].0.dst.len(), 2);
        assert_eq!(v[1].1, Ttl::default());
    }

    #[test]
    fn only_name_is_required_besides_a_reason_to_match() {
        let v = parse("[[rule]]\nname = \"x\"\ndport = 53\nproto = \"udp\"\ndrop = 1\n").unwrap();
        assert_eq!(v[0].0.dport, PortRange { lo: 53, hi: 53 });
        let v = parse("[[rule]]\nname = \"x\"\nall = true\ndrop = 0.5\nttl = \"none\"\n").unwrap();
        assert_eq!(v[0].1, Ttl::Never);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn burst_and_conn_keys_and_their_errors() {
        let v = parse(
            "[[rule]]\nname = \"b\"\nproto = \"tcp\"\nconn = \"established\"\ndrop = \"5%\"\nburst = 4\nburst_scope = \"rule\"\n\
             [[partition]]\nname = \"p\"\na = [\"192.0.2.1\"]\nb = [\"192.0.2.2\"]\nconn = \"new\"\n",
        )
        .unwrap();
        let r = &v[0].0;
        assert_eq!(r.conn, crate::spec::Conn::Established);
        assert_eq!(r.act.burst, Some(4.0));
        assert_eq!(r.act.burst_scope, crate::spec::BurstScope::Rule);
        assert_eq!(v[1].0.conn, crate::spec::Conn::New);
        let field = |t: &str| parse(t).unwrap_err().field;
        assert_eq!(
            field("[[rule]]\nname = \"b\"\nproto = \"udp\"\nconn = \"new\"\ndrop = 1\n"),
            "rule[0].conn"
        );
        assert_eq!(
            field("[[rule]]\nname = \"b\"\nproto = \"tcp\"\ndrop = 0.1\nburst_scope = \"rule\"\n"),
            "rule[0].burst_scope"
        );
        assert_eq!(
            field("[[rule]]\nname = \"b\"\nproto = \"tcp\"\ndrop = 0.1\ngemodel = \"1%\"\n"),
            "rule[0].gemodel"
        );
        assert_eq!(
            field(
                "[[partition]]\nname = \"p\"\na = \"192.0.2.1\"\nb = \"192.0.2.2\"\nconn = \"old\"\n"
            ),
            "partition[0].conn"
        );
    }

    #[test]
    fn cgroup_keys_name_their_path() {
        let field = |t: &str| parse(t).unwrap_err().field;
        assert_eq!(
            field("[[rule]]\nname = \"c\"\ncgroup = \"/proc\"\ndrop = 1\n"),
            "rule[0].cgroup"
        );
        assert_eq!(
            field("[[rule]]\nname = \"c\"\ncgroup = 3\ndrop = 1\n"),
            "rule[0].cgroup"
        );
        assert_eq!(
            field(
                "[[partition]]\nname = \"p\"\na = \"192.0.2.1\"\nb = \"192.0.2.2\"\ncgroup = \"/proc\"\n"
            ),
            "partition[0].cgroup"
        );
    }

    #[test]
    fn malformed_files_name_the_key_path() {
        let cases: &[(&str, &str)] = &[
            (
                "[[rule]]\nname = \"x\"\nsrcc = [\"192.0.2.1\"]\ndrop = 1",
                "rule[0].srcc",
            ),
            ("[[rule]]\nname = \"x\"\nsrc = []\ndrop = 1", "rule[0].src"),
            (
                "[[partition]]\nname = \"p\"\na = []\nb = [\"192.0.2.1\"]",
                "partition[0].a",
            ),
            (
                "[[partition]]\nname = \"p\"\na = [\"192.0.2.1\"]",
                "partition[0].b",
            ),
            ("[[rule]]\ndrop = 1\nsrc = [\"192.0.2.1\"]", "rule[0].name"),
            ("[[rule]]\nname = \"x\"\ndrop = 1", "rule[0]"),
            (
                "[[rule]]\nname = \"x\"\nsrc = [\"0.0.0.0/0\", \"::/0\"]\ndrop = 1",
                "rule[0]",
            ),
            (
                "[[rule]]\nname = \"x\"\nsrc = [\"192.0.2.0/33\"]\ndrop = 1",
                "rule[0].src[0]",
            ),
            (
                "[[rule]]\nname = \"x\"\nproto = \"udp\"\ndport = 70000\ndrop = 1",
                "rule[0].dport",
            ),
            (
                "[[rule]]\nname = \"x\"\nproto = \"udp\"\nsport = \"9-1\"\ndrop = 1",
                "rule[0].sport",
            ),
            (
                "[[rule]]\nname = \"x\"\nproto = \"gre\"\ndrop = 1",
                "rule[0].proto",
            ),
            (
                "[[rule]]\nname = \"x\"\nall = true\ndrop = \"150%\"",
                "rule[0].drop",
            ),
            (
                "[[rule]]\nname = \"x\"\nall = true\ndrop = 1\nttl = \"soon\"",
                "rule[0].ttl",
            ),
            (
                "[[rule]]\nname = \"x\"\nall = true\ndrop = 1\ndir = \"up\"",
                "rule[0].dir",
            ),
            ("[[rule]]\nname = \"x\"\nall = true", "rule[0].action"),
            (
                "[[partition]]\nname = \"p\"\na = [\"192.0.2.1\"]\nb = [\"192.0.2.2\"]\noneway = 1",
                "partition[0].oneway",
            ),
            ("[[rules]]\nname = \"x\"", "rules"),
            ("rule = 5", "rule"),
            (
                "[[rule]]\nname = \"a b\"\nall = true\ndrop = 1",
                "rule[0].name",
            ),
            (
                "[[rule]]\nname = \"x\"\nall = true\ndrop = 1\n[[rule]]\nname = \"x\"\nall = true\ndrop = 1",
                "name",
            ),
            ("[[rule]\nname = ", "FILE"),
        ];
        for (text, path) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!(e.field, *path, "{text}: {e}");
        }
    }
}
