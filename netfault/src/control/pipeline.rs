//! The steps every change to a rule set goes through, whether the CLI pins it (`Ctl`) or a
//! `run` holds it (`held`): check the new entries, add the protections, order, compile. Each
//! step is pure; the callers own the kernel objects and the publish.
use netfault_common::RuleValue;

use super::{Error, Result, state::RuleEntry};
use crate::{
    compile::{self, Compiled, Input},
    dataplane,
    spec::{Kind, RuleSpec, SpecError, Ttl, protection},
};

/// Evaluation bands: protections, then partitions (a cut is a cut), then rules.
fn band(kind: Kind) -> u8 {
    match kind {
        Kind::Protect => 0,
        Kind::Partition => 1,
        Kind::Rule => 2,
    }
}

/// Entries in evaluation order: by band, then priority, then age (`seq`).
pub fn ordered(rules: &[RuleEntry]) -> Vec<&RuleEntry> {
    let mut v: Vec<&RuleEntry> = rules.iter().collect();
    v.sort_by_key(|r| (band(r.spec.kind), r.spec.priority, r.seq));
    v
}

/// When an entry added at `now` with `ttl` expires (CLOCK_MONOTONIC ns); 0: never.
/// Protections never expire.
pub fn expiry(kind: Kind, ttl: Ttl, now: u64) -> u64 {
    match (kind, ttl) {
        (Kind::Protect, _) | (_, Ttl::Never) => 0,
        (_, Ttl::For(d)) => now.saturating_add(d.as_nanos() as u64),
    }
}

/// When the hold of a rule installed at `now` ends (CLOCK_MONOTONIC ns); 0: no hold. The
/// window starts with the install, so `apply`ing a rule set again starts its holds again, as
/// it restarts their TTLs.
pub fn hold_end(spec: &RuleSpec, now: u64) -> u64 {
    match (spec.kind, spec.act.hold) {
        (Kind::Rule, Some(h)) => now.saturating_add(h.as_nanos() as u64),
        _ => 0,
    }
}

/// Checks new entries before anything changes: each rule valid, each named interface present,
/// every name new (`taken` says which names exist already) and unique within the batch.
pub fn check_new<'a>(
    specs: impl IntoIterator<Item = &'a RuleSpec>,
    taken: impl Fn(&str) -> bool,
) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for spec in specs {
        if spec.kind != Kind::Protect {
            spec.validate()?;
        }
        if let Some(i) = &spec.iface {
            check_iface("--iface", i)?;
        }
        if taken(&spec.name) || !seen.insert(spec.name.as_str()) {
            return Err(SpecError::new(
                "NAME",
                format!("a rule or partition named '{}' exists already", spec.name),
            )
            .into());
        }
    }
    Ok(())
}

/// The interface exists in this namespace (bad input otherwise, naming `field`).
pub fn check_iface(field: &str, iface: &str) -> Result<u32> {
    dataplane::ifindex(iface).ok_or_else(|| {
        Error::Usage(SpecError::new(
            field,
            format!("no interface named '{iface}' in this namespace"),
        ))
    })
}

/// The protections a rule set always carries: loopback, and `ssh`, the SSH connection this
/// command runs over ([`operator::guard`](super::operator::guard)). `have` says which names are
/// there already, so none is added twice.
pub fn protections(ssh: Vec<RuleSpec>, have: impl Fn(&str) -> bool) -> Vec<RuleSpec> {
    let mut out = Vec::new();
    let lo = protection::loopback();
    if !lo.iter().all(|s| have(&s.name)) {
        out.extend(lo);
    }
    if !ssh.is_empty() && !ssh.iter().all(|s| have(&s.name)) {
        out.extend(ssh);
    }
    out
}

/// Warnings for new rules that cover a protected flow: protection wins there, and the
/// operator should know. Loopback never crosses an attached interface in practice, so it is
/// left out.
pub fn coverage_warnings<'a>(
    new: impl IntoIterator<Item = &'a RuleSpec>,
    all: &[&'a RuleSpec],
) -> Vec<String> {
    let loopback = format!("{}/", protection::LOOPBACK);
    let guards: Vec<&RuleSpec> = all
        .iter()
        .copied()
        .filter(|p| p.kind == Kind::Protect && !p.name.starts_with(&loopback))
        .collect();
    let mut warnings = Vec::new();
    for spec in new.into_iter().filter(|s| s.kind != Kind::Protect) {
        for p in &guards {
            if compile::overlaps(spec, p) {
                let label = p.name.split('/').next().unwrap_or(&p.name);
                let w = format!(
                    "{} covers protected traffic ({label}): that traffic passes",
                    spec.name
                );
                if !warnings.contains(&w) {
                    warnings.push(w);
                }
            }
        }
    }
    warnings
}

/// Compiles entries (already in evaluation order) for the data path, with each entry's action
/// and the expiry `expires` gives it. Interface names are looked up now, so a rule whose
/// interface came back compiles again.
pub fn compile(
    ordered: &[&RuleEntry],
    expires: impl Fn(&RuleEntry) -> u64,
) -> Result<(Compiled, Vec<(u32, RuleValue)>)> {
    let inputs: Vec<Input<'_>> = ordered
        .iter()
        .map(|r| Input {
            slot: r.slot,
            spec: &r.spec,
            ifindex: r.spec.iface.as_deref().and_then(dataplane::ifindex),
        })
        .collect();
    let compiled = compile::compile(&inputs)?;
    let values = ordered
        .iter()
        .map(|r| {
            let v = compile::rule_value(&r.spec, expires(r), r.hold_until_mono_ns);
            (r.slot, compiled.with_cgroup(&r.spec, v))
        })
        .collect();
    Ok((compiled, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, kind: Kind, priority: u32, seq: u64) -> RuleEntry {
        let mut spec = RuleSpec::new(name, kind);
        spec.priority = priority;
        RuleEntry {
            spec,
            slot: seq as u32,
            seq,
            expires_mono_ns: 0,
            hold_until_mono_ns: 0,
        }
    }

    #[test]
    fn order_is_band_then_priority_then_age() {
        let rules = vec![
            entry("late-rule", Kind::Rule, 10, 1),
            entry("early-rule", Kind::Rule, 10, 0),
            entry("urgent-rule", Kind::Rule, 1, 5),
            entry("cut", Kind::Partition, 1000, 6),
            entry("guard", Kind::Protect, 1000, 7),
        ];
        let names: Vec<&str> = ordered(&rules)
            .iter()
            .map(|r| r.spec.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["guard", "cut", "urgent-rule", "early-rule", "late-rule"]
        );
    }

    #[test]
    fn protections_never_expire_and_ttls_add_up() {
        let d = Ttl::For(std::time::Duration::from_secs(2));
        assert_eq!(expiry(Kind::Protect, d, 5), 0);
        assert_eq!(expiry(Kind::Rule, Ttl::Never, 5), 0);
        assert_eq!(expiry(Kind::Rule, d, 5), 2_000_000_005);
        assert_eq!(expiry(Kind::Partition, d, u64::MAX), u64::MAX);
        let mut r = RuleSpec::new("h", Kind::Rule);
        assert_eq!(hold_end(&r, 5), 0);
        r.act.hold = Some(std::time::Duration::from_secs(2));
        assert_eq!(hold_end(&r, 5), 2_000_000_005);
    }

    #[test]
    fn names_must_be_new_and_unique() {
        let a = RuleSpec::new("a", Kind::Protect);
        let b = RuleSpec::new("b", Kind::Protect);
        assert!(check_new([&a, &b], |_| false).is_ok());
        let e = check_new([&a, &a], |_| false).unwrap_err();
        assert!(e.to_string().contains("'a' exists already"), "{e}");
        let e = check_new([&b], |n| n == "b").unwrap_err();
        assert!(matches!(e, Error::Usage(_)), "{e}");
    }

    #[test]
    fn loopback_is_added_once() {
        let lo = protections(Vec::new(), |_| false);
        assert!(!lo.is_empty());
        assert!(
            lo.iter()
                .all(|s| s.kind == Kind::Protect && s.name.starts_with("loopback/"))
        );
        let names: Vec<String> = lo.iter().map(|s| s.name.clone()).collect();
        assert!(protections(Vec::new(), |n| names.iter().any(|m| m == n)).is_empty());
    }
}
