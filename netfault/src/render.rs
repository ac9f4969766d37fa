//! Output of the read-only commands: rule list, stats, status, protect list. Everything goes
//! through a fallible writer: a closed pipe is an error to end on quietly, not a panic.
use std::{io::Write, time::Duration};

use serde_json::json;

use netfault::{
    observe::{read_state, stats as read_stats, ttl_left},
    spec::{Conn, Kind, PortRange, Proto},
};

/// The reply rate in force for a rejecting entry (the default when none was given).
fn reject_rate(s: &netfault::spec::RuleSpec) -> Option<String> {
    s.act.reject.map(|_| {
        s.act
            .reject_rate
            .unwrap_or(netfault::spec::reject::DEFAULT_REJECT_RATE)
            .to_string()
    })
}

fn fmt_left(left: Option<u64>, expired: bool) -> String {
    match (left, expired) {
        (_, true) => "expired".into(),
        (None, _) => "never".into(),
        (Some(ms), _) => {
            humantime::format_duration(Duration::from_millis(ms / 1000 * 1000)).to_string()
        }
    }
}

/// The end of an entry's hold (CLOCK_MONOTONIC ns, comparable with the data path's clock);
/// None without a hold.
fn hold_until(r: &netfault::control::state::RuleEntry) -> Option<u64> {
    (r.hold_until_mono_ns != 0).then_some(r.hold_until_mono_ns)
}

/// Milliseconds until an entry's hold ends (0: released); None without a hold.
fn hold_left(r: &netfault::control::state::RuleEntry, now: u64) -> Option<u64> {
    hold_until(r).map(|t| t.saturating_sub(now) / 1_000_000)
}

fn fmt_hold(left_ms: Option<u64>) -> String {
    match left_ms {
        Some(0) | None => "released".into(),
        Some(ms) => format!(
            "releases in {}",
            humantime::format_duration(Duration::from_millis(ms))
        ),
    }
}

fn nets(v: &[ipnet::IpNet]) -> Vec<String> {
    v.iter()
        .map(|n| {
            if n.prefix_len() == n.max_prefix_len() {
                n.addr().to_string()
            } else {
                n.to_string()
            }
        })
        .collect()
}

pub fn list(out: &mut impl Write, ns: Option<&str>, json_out: bool) -> anyhow::Result<()> {
    let (_, state) = read_state(ns)?;
    let now = netfault::control::monotonic_ns();
    let shown: Vec<_> = state
        .ordered()
        .into_iter()
        .filter(|r| r.spec.kind != Kind::Protect)
        .collect();
    let rows: Vec<_> = shown
        .iter()
        .map(|r| {
            let s = &r.spec;
            let (left, expired) = ttl_left(r, now);
            let port = |p: &PortRange| {
                if p.is_all() {
                    serde_json::Value::Null
                } else {
                    json!(p.to_string())
                }
            };
            match s.kind {
                Kind::Partition => json!({
                    "name": s.name, "kind": "partition", "a": nets(&s.src), "b": nets(&s.dst),
                    "oneway": s.oneway, "conn": s.conn, "expires_in_ms": left, "expired": expired,
                    "reject": s.act.reject, "reject_rate": reject_rate(s),
                    "cgroup": s.cgroup.as_ref().map(|c| c.to_string()),
                }),
                Kind::Rule | Kind::Protect => json!({
                    "name": s.name, "kind": "rule", "priority": s.priority, "dir": s.dir,
                    "src": nets(&s.src), "dst": nets(&s.dst), "proto": s.proto,
                    "sport": port(&s.sport), "dport": port(&s.dport), "iface": s.iface,
                    "drop": s.act.drop.0, "duplicate": s.act.duplicate.0,
                    "delay_us": s.act.shape.delay.map(|d| d.as_micros() as u64),
                    "jitter_us": s.act.shape.jitter.map(|d| d.as_micros() as u64),
                    "distribution": s.act.shape.jitter.map(|_| s.act.shape.distribution),
                    "reorder": s.act.shape.reorder,
                    "rate_bits": s.act.shape.rate.map(|r| r.bytes_per_sec * 8),
                    "conn": s.conn, "burst": s.act.burst,
                    "cgroup": s.cgroup.as_ref().map(|c| c.to_string()),
                    "gemodel": s.act.gemodel.map(|g| g.to_string()),
                    "burst_scope": s.act.chain().map(|_| s.act.burst_scope),
                    "reject": s.act.reject, "reject_rate": reject_rate(s),
                    "corrupt": s.act.corrupt.0,
                    "corrupt_checksum": s.act.corrupts()
                        .then(|| s.act.corrupt_checksum.unwrap_or_default()),
                    "hold_ms": s.act.hold.map(|d| d.as_millis() as u64),
                    "hold_left_ms": hold_left(r, now), "hold_until_mono_ns": hold_until(r),
                    "duplicate_delay_us": s.act.duplicate_delay.map(|d| d.as_micros() as u64),
                    "expires_in_ms": left, "expired": expired,
                }),
            }
        })
        .collect();
    if json_out {
        writeln!(out, "{}", json!({ "rules": rows }))?;
        return Ok(());
    }
    if rows.is_empty() {
        writeln!(out, "no rules")?;
    }
    for (r, v) in shown.iter().zip(&rows) {
        let s = &r.spec;
        let left = fmt_left(
            v["expires_in_ms"].as_u64(),
            v["expired"].as_bool().unwrap_or(false),
        );
        match s.kind {
            Kind::Partition => writeln!(
                out,
                "partition {:<16} {} {} {}{}{}{}  ttl {left}",
                s.name,
                nets(&s.src).join(","),
                if s.oneway { "-/->" } else { "<-/->" },
                nets(&s.dst).join(","),
                match s.conn {
                    Conn::Any => String::new(),
                    c => format!(" (tcp {c} only)"),
                },
                s.cgroup
                    .as_ref()
                    .map(|c| format!(" (cgroup {c} only)"))
                    .unwrap_or_default(),
                s.act
                    .reject
                    .map(|k| format!("  reject {k} {}", reject_rate(s).unwrap_or_default()))
                    .unwrap_or_default(),
            )?,
            Kind::Rule | Kind::Protect => {
                let mut m = vec![format!("dir {:?}", s.dir).to_lowercase()];
                if !s.src.is_empty() {
                    m.push(format!("src {}", nets(&s.src).join(",")));
                }
                if !s.dst.is_empty() {
                    m.push(format!("dst {}", nets(&s.dst).join(",")));
                }
                if s.proto != Proto::Any {
                    m.push(format!("proto {:?}", s.proto).to_lowercase());
                }
                if !s.sport.is_all() {
                    m.push(format!("sport {}", s.sport));
                }
                if !s.dport.is_all() {
                    m.push(format!("dport {}", s.dport));
                }
                if let Some(i) = &s.iface {
                    m.push(format!("iface {i}"));
                }
                if s.conn != Conn::Any {
                    m.push(format!("conn {}", s.conn));
                }
                if let Some(c) = &s.cgroup {
                    m.push(format!("cgroup {c}"));
                }
                let mut a = vec![];
                if s.act.drop.0 > 0.0 {
                    a.push(format!("drop {}", s.act.drop));
                }
                if let Some(b) = s.act.burst {
                    a.push(format!("burst {b}"));
                }
                if let Some(g) = s.act.gemodel {
                    a.push(format!("gemodel {g}"));
                }
                if s.act.chain().is_some() {
                    a.push(format!("burst-scope {}", s.act.burst_scope));
                }
                if s.act.duplicate.0 > 0.0 {
                    a.push(format!("duplicate {}", s.act.duplicate));
                }
                let hd = |d: std::time::Duration| humantime::format_duration(d).to_string();
                if let Some(d) = s.act.shape.delay {
                    let mut t = format!("delay {}", hd(d));
                    if let Some(j) = s.act.shape.jitter {
                        t += &format!(" ± {} {}", hd(j), s.act.shape.distribution);
                        if s.act.shape.reorder {
                            t += " reorder";
                        }
                    }
                    a.push(t);
                }
                if let Some(r) = s.act.shape.rate {
                    a.push(format!("rate {r}"));
                }
                if let Some(d) = s.act.duplicate_delay {
                    a.push(format!("duplicate-delay {}", hd(d)));
                }
                if let Some(h) = s.act.hold {
                    a.push(format!("hold {} ({})", hd(h), fmt_hold(hold_left(r, now))));
                }
                if let Some(k) = s.act.reject {
                    a.push(format!("reject {k} {}", reject_rate(s).unwrap_or_default()));
                }
                if s.act.corrupts() {
                    a.push(format!(
                        "corrupt {} checksum {}",
                        s.act.corrupt,
                        s.act.corrupt_checksum.unwrap_or_default()
                    ));
                }
                writeln!(
                    out,
                    "rule      {:<16} prio {:<5} {}  => {}  ttl {left}",
                    s.name,
                    s.priority,
                    m.join(" "),
                    a.join(", ")
                )?;
            }
        }
    }
    Ok(())
}

pub fn stats(out: &mut impl Write, ns: Option<&str>, json_out: bool) -> anyhow::Result<()> {
    let (paths, state) = read_state(ns)?;
    let rows: Vec<_> = read_stats(&paths, &state)?
        .into_iter()
        .filter(|r| r.kind != Kind::Protect)
        .collect();
    let lost = lost_interfaces(&state);
    let queues = queue_stats(&state);
    if json_out {
        writeln!(
            out,
            "{}",
            json!({ "rules": rows, "lost_interfaces": lost, "queues": queues })
        )?;
        return Ok(());
    }
    for i in &lost {
        writeln!(
            out,
            "interface {i} is gone (deleted while attached): `netfault attach {i}` once it is back"
        )?;
    }
    writeln!(
        out,
        "{:<18} {:<9} {:>10} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}  TTL",
        "NAME",
        "KIND",
        "MATCHED",
        "DROPPED",
        "BURSTS",
        "DUPLICATED",
        "DUP-LATE",
        "DELAYED",
        "HELD",
        "QUEUE-DROP",
        "REJECTED",
        "REJ-LIMIT",
        "CORRUPTED",
        "PASSED",
        "BYTES"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<18} {:<9} {:>10} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}  {}",
            r.name,
            format!("{:?}", r.kind).to_lowercase(),
            r.counters.matched,
            r.counters.dropped,
            r.counters.bursts,
            r.counters.duplicated,
            r.counters.dup_delayed,
            r.counters.delayed,
            r.counters.held,
            r.counters.queue_dropped,
            r.counters.rejected,
            r.counters.reject_limited,
            r.counters.corrupted,
            r.counters.passed,
            r.counters.bytes,
            fmt_left(r.expires_in_ms, r.expired)
        )?;
    }
    for q in &queues {
        writeln!(
            out,
            "queue {} (fq, limit {}): {} queued, {} dropped by the queue ({} over the flow limit, {} beyond the horizon)",
            q.device, q.limit, q.backlog_packets, q.dropped, q.flows_plimit, q.horizon_drops
        )?;
    }
    Ok(())
}

/// The fq qdiscs netfault installed: their own drops (limit, flow limit, horizon) are queue
/// drops, apart from what the rules inject.
fn queue_stats(state: &netfault::control::state::State) -> Vec<netfault::control::queues::FqStats> {
    netfault::control::shaping::queue_stats(&state.shaped)
}

/// Attached interfaces that no longer exist (or are a new interface under the same name).
fn lost_interfaces(state: &netfault::control::state::State) -> Vec<String> {
    state
        .attached
        .iter()
        .filter(|a| netfault::dataplane::ifindex(&a.iface) != Some(a.ifindex))
        .map(|a| a.iface.clone())
        .collect()
}

pub fn protect_list(out: &mut impl Write, ns: Option<&str>, json_out: bool) -> anyhow::Result<()> {
    let (paths, state) = read_state(ns)?;
    let stats = read_stats(&paths, &state)?;
    // One row per label; its entries' counters summed.
    let mut rows: Vec<(String, u64, u64)> = Vec::new();
    for st in stats.iter().filter(|r| r.kind == Kind::Protect) {
        let label = st.name.split('/').next().unwrap_or(&st.name).to_string();
        match rows.iter_mut().find(|r| r.0 == label) {
            Some(r) => {
                r.1 += st.counters.matched;
                r.2 += st.counters.bytes;
            }
            None => rows.push((label, st.counters.matched, st.counters.bytes)),
        }
    }
    if json_out {
        let v: Vec<_> = rows
            .iter()
            .map(|(l, p, b)| json!({"label": l, "packets": p, "bytes": b}))
            .collect();
        writeln!(out, "{}", json!({ "protected": v }))?;
        return Ok(());
    }
    writeln!(out, "{:<44} {:>12} {:>14}", "PROTECTED", "PACKETS", "BYTES")?;
    for (l, p, b) in rows {
        writeln!(out, "{l:<44} {p:>12} {b:>14}")?;
    }
    Ok(())
}

pub fn status(out: &mut impl Write, ns: Option<&str>, json_out: bool) -> anyhow::Result<()> {
    let (paths, state) = read_state(ns)?;
    let now = netfault::control::monotonic_ns();
    let ordered = state.ordered();
    // Per device: the hook choice as it stands now, and whether an XDP program sits idle.
    let choices: Vec<_> = state
        .attached
        .iter()
        .map(|a| netfault::control::hooks::apply::describe(a, &ordered, now))
        .collect();
    let ifaces: Vec<_> = state
        .attached
        .iter()
        .zip(&choices)
        .map(|(a, (c, idle))| {
            let now = netfault::dataplane::ifindex(&a.iface);
            let lost = now != Some(a.ifindex);
            json!({
                "iface": a.iface, "ifindex": a.ifindex, "lost": lost,
                "hooks": a.hooks.iter().map(|h| json!({"hook": h.hook, "kind": h.kind, "prog_id": h.prog_id})).collect::<Vec<_>>(),
                "device": a.device_kind(),
                "xdp": {
                    "attached": a.xdp_hook().is_some(),
                    "wanted": c.xdp,
                    "permanent": c.permanent,
                    "why": c.why,
                    "idle": idle,
                    "explain": c.explain(&a.device_kind()),
                },
            })
        })
        .collect();
    let label = |n: &str| n.split('/').next().unwrap_or(n).to_string();
    let mut protected: Vec<String> = state
        .rules
        .iter()
        .filter(|r| r.spec.kind == Kind::Protect)
        .map(|r| label(&r.spec.name))
        .collect();
    protected.dedup();
    let rules: Vec<_> = state
        .ordered()
        .into_iter()
        .filter(|r| r.spec.kind != Kind::Protect)
        .map(|r| {
            let (left, expired) = ttl_left(r, now);
            json!({"name": r.spec.name, "kind": r.spec.kind, "expires_in_ms": left, "expired": expired,
                   "hold_left_ms": hold_left(r, now), "hold_until_mono_ns": hold_until(r)})
        })
        .collect();
    // The cgroups the socket-delivery hook is linked to (its pins), by path where an entry
    // still names them.
    let cgroup_hooks: Vec<_> = netfault::dataplane::cgroup_links(&paths.links())
        .into_iter()
        .map(|id| {
            let path = state
                .rules
                .iter()
                .filter_map(|r| r.spec.cgroup.as_ref())
                .find(|c| c.id == id)
                .map(|c| c.path.display().to_string());
            json!({"cgroup_id": id, "path": path})
        })
        .collect();
    let pauses = pauses();
    if json_out {
        writeln!(
            out,
            "{}",
            json!({
                "state": paths.key, "namespace": state.netns_name,
                "interfaces": ifaces, "rules": rules.len(),
                "cgroup_hooks": cgroup_hooks,
                "protected": protected, "lifetimes": rules,
                "pauses": pauses,
            })
        )?;
        return Ok(());
    }
    match &state.netns_name {
        Some(n) => writeln!(out, "namespace state: {} ({n})", paths.key)?,
        None => writeln!(out, "namespace state: {} (unnamed namespace)", paths.key)?,
    }
    if ifaces.is_empty() {
        writeln!(out, "not attached")?;
    }
    for ((a, v), (c, idle)) in state.attached.iter().zip(&ifaces).zip(&choices) {
        let hooks: Vec<String> = a
            .hooks
            .iter()
            .map(|h| match h.prog_id {
                0 => h.to_string(), // tc stands in for XDP: no program of ours there
                id => format!("{h} (prog {id})"),
            })
            .collect();
        writeln!(
            out,
            "{} (ifindex {}){}: {}",
            a.iface,
            a.ifindex,
            if v["lost"].as_bool() == Some(true) {
                " LOST"
            } else {
                ""
            },
            hooks.join("; ")
        )?;
        writeln!(out, "  hooks: {}", c.explain(&a.device_kind()))?;
        if *idle {
            writeln!(
                out,
                "  XDP idle: the rule that needed it has expired (the data path passes it); the next change removes XDP"
            )?;
        }
    }
    for h in &cgroup_hooks {
        writeln!(
            out,
            "cgroup {} (id {}): socket-delivery hook linked (entries matching it at ingress)",
            h["path"].as_str().unwrap_or("?"),
            h["cgroup_id"]
        )?;
    }
    writeln!(out, "protected: {}", protected.join(", "))?;
    writeln!(out, "rules and partitions: {}", rules.len())?;
    for r in &rules {
        let hold = if r["hold_until_mono_ns"].is_u64() {
            format!("  hold {}", fmt_hold(r["hold_left_ms"].as_u64()))
        } else {
            String::new()
        };
        writeln!(
            out,
            "  {:<18} {:<9} ttl {}{hold}",
            r["name"].as_str().unwrap_or(""),
            r["kind"].as_str().unwrap_or(""),
            fmt_left(r["expires_in_ms"].as_u64(), r["expired"] == true)
        )?;
    }
    if !pauses.is_empty() {
        writeln!(out, "pauses: {}", pauses.len())?;
        for p in &pauses {
            writeln!(
                out,
                "  {:<18} {:<28} {:<8} left {}",
                p["name"].as_str().unwrap_or(""),
                p["target"].as_str().unwrap_or(""),
                p["state"].as_str().unwrap_or(""),
                match p["left_ms"].as_u64() {
                    Some(ms) => fmt_left(Some(ms), false),
                    None => "until resumed".into(),
                }
            )?;
        }
    }
    Ok(())
}

/// Live pauses (host-wide), after resuming any whose watchdog is gone.
fn pauses() -> Vec<serde_json::Value> {
    use netfault::pause::{Store, Target, target};
    let store = Store::default();
    crate::cli::pause::sweep(&store);
    store
        .list()
        .into_iter()
        .map(|r| {
            let stopped = match &r.target {
                Target::Pid { pid, .. } => target::state(*pid) == Some('T'),
                Target::Cgroup { path } => target::frozen(path) == Some(true),
            };
            json!({
                "name": r.name,
                "target": r.target.describe(),
                "state": if stopped { "stopped" } else { "running" },
                "left_ms": r.left().map(|d| d.as_millis() as u64),
                "watchdog": r.watchdog.map(|w| w.pid),
            })
        })
        .collect()
}
