//! Pauses of nodes' processes (`cluster pause`, `cluster resume`, scenario `pause` steps): each
//! node's `pause_target` stopped on its own host, through its transport, all nodes at once.
//!
//! A node's pause is named `NAME.NODE` on its host (host-wide records: several netns nodes
//! share this host's). Its watchdog runs on that host and resumes the target on its deadline
//! whatever becomes of the coordinator: the coordinator only asks and reports.
use std::{sync::Arc, time::Duration};

use super::{
    coordinator::{Coordinator, Error, Timed, node_error},
    transport::NodeError,
};
use crate::{
    pause::{Schedule, node as pause},
    spec::{SpecError, validate_name},
};

/// The name of pause `name` on `node`.
pub fn entry(name: &str, node: &str) -> String {
    format!("{name}.{node}")
}

impl Coordinator {
    /// The nodes `nodes` names (indices, file order kept as given), each with a
    /// `pause_target`; `field` names the argument or key in errors.
    pub fn pause_nodes(&self, field: &str, nodes: &[String]) -> Result<Vec<usize>, SpecError> {
        if nodes.is_empty() {
            return Err(SpecError::new(field, "name at least one node"));
        }
        let mut out: Vec<usize> = Vec::new();
        for (k, n) in nodes.iter().enumerate() {
            let f = format!("{field}[{k}]");
            let i = self
                .cluster
                .nodes
                .iter()
                .position(|x| &x.name == n)
                .ok_or_else(|| SpecError::new(&f, format!("no node named '{n}'")))?;
            if self.cluster.nodes[i].pause_target.is_none() {
                return Err(SpecError::new(
                    &f,
                    format!("node '{n}' has no pause_target in the cluster file"),
                ));
            }
            if out.contains(&i) {
                return Err(SpecError::new(&f, format!("'{n}' is listed twice")));
            }
            out.push(i);
        }
        Ok(out)
    }

    /// Starts pause `name` on the nodes `which`, all at once, within `timeout`; no rollback
    /// (the caller decides). A late success is resumed by its worker.
    pub fn pause_timed(
        &self,
        which: &[usize],
        name: &str,
        schedule: Schedule,
        timeout: Duration,
    ) -> Vec<Timed<pause::Started>> {
        let reqs: Arc<Vec<Option<pause::Request>>> = Arc::new(
            self.cluster
                .nodes
                .iter()
                .map(|n| {
                    n.pause_target.clone().map(|target| pause::Request {
                        name: entry(name, &n.name),
                        target,
                        schedule,
                    })
                })
                .collect(),
        );
        self.timed(
            timeout,
            which,
            move |i, t| match &reqs[i] {
                Some(r) => t.pause(r),
                None => Err(NodeError::Unsupported(
                    "cluster file",
                    "pause a node without pause_target",
                )),
            },
            |t, s| {
                let _ = t.resume(std::slice::from_ref(&s.name));
            },
        )
    }

    /// Pauses the nodes `which` (see [`pause_nodes`](Self::pause_nodes)) at once, all or
    /// nothing: when one fails, the others are resumed before the error returns.
    pub fn pause(
        &self,
        which: &[usize],
        name: &str,
        schedule: Schedule,
    ) -> Result<Vec<Timed<pause::Started>>, Error> {
        validate_name("--name", name)?;
        let res = self.pause_timed(which, name, schedule, self.timeout);
        let (ok, failed): (Vec<_>, Vec<_>) = res.into_iter().partition(|t| t.result.is_ok());
        if failed.is_empty() {
            return Ok(ok);
        }
        let failed: Vec<(String, NodeError)> = failed
            .into_iter()
            .filter_map(|t| {
                t.result
                    .err()
                    .map(|e| (self.cluster.nodes[t.node].name.clone(), e))
            })
            .collect();
        let back: Vec<(usize, Vec<String>)> = ok
            .iter()
            .filter_map(|t| Some((t.node, vec![t.result.as_ref().ok()?.name.clone()])))
            .collect();
        let outcome = if back.is_empty() {
            "; no other node was paused".to_string()
        } else {
            let resumed = self.resume_timed(back, self.timeout);
            self.rollback_outcome(
                resumed.into_iter().map(|t| (t.node, t.result)),
                "resumed",
                "its watchdog resumes it on the deadline",
            )
        };
        Err(node_error(failed, outcome))
    }

    /// Ends the named pauses on each node, all at once (a pause that ended by itself is no
    /// error); each success returns the names it resumed.
    pub fn resume_timed(
        &self,
        names: Vec<(usize, Vec<String>)>,
        timeout: Duration,
    ) -> Vec<Timed<Vec<String>>> {
        let which: Vec<usize> = names.iter().map(|(i, _)| *i).collect();
        let names: Arc<std::collections::BTreeMap<usize, Vec<String>>> =
            Arc::new(names.into_iter().collect());
        self.timed(
            timeout,
            &which,
            move |i, t| t.resume(names.get(&i).map_or(&[][..], Vec::as_slice)),
            |_, _| {},
        )
    }

    /// `cluster resume`: on each node of `which`, the pause `NAME.NODE` of `name`, or every
    /// pause named `*.NODE` (this coordinator's kind) when `name` is None. Returns what each
    /// node resumed, in the order given.
    pub fn resume(
        &self,
        which: &[usize],
        name: Option<&str>,
    ) -> Result<Vec<(String, Vec<String>)>, Error> {
        if let Some(n) = name {
            validate_name("--name", n)?;
        }
        let node_names: Arc<Vec<String>> =
            Arc::new(self.cluster.nodes.iter().map(|n| n.name.clone()).collect());
        let name = name.map(str::to_owned);
        let results = self.timed(
            self.timeout,
            which,
            move |i, t| {
                let node = &node_names[i];
                let mine: Vec<String> = match &name {
                    Some(n) => vec![entry(n, node)],
                    None => t
                        .pauses()?
                        .into_iter()
                        .map(|v| v.name)
                        .filter(|n| {
                            n.strip_suffix(node.as_str())
                                .is_some_and(|p| p.ends_with('.'))
                        })
                        .collect(),
                };
                if mine.is_empty() {
                    return Ok(mine);
                }
                t.resume(&mine)
            },
            |_, _| {},
        );
        self.by_name(
            results.into_iter().map(|t| (t.node, t.result)),
            "resumed on",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Cluster;

    #[test]
    fn pause_nodes_are_checked_by_name_and_target() {
        let c = Cluster::parse(
            "[[node]]\nname = \"n1\"\naddrs = [\"192.0.2.1\"]\niface = [\"e\"]\nnetns = \"a\"\npause_target = \"pid:4242\"\n\
             [[node]]\nname = \"n2\"\naddrs = [\"192.0.2.2\"]\niface = [\"e\"]\nnetns = \"b\"\n",
        )
        .unwrap();
        let co = Coordinator::new(c).unwrap();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(co.pause_nodes("NODES", &s(&["n1"])).unwrap(), [0]);
        let field = |v: &[&str]| co.pause_nodes("NODES", &s(v)).unwrap_err();
        assert_eq!(field(&["n2"]).field, "NODES[0]");
        assert!(field(&["n2"]).msg.contains("pause_target"));
        assert_eq!(field(&["n1", "n3"]).field, "NODES[1]");
        assert_eq!(field(&["n1", "n1"]).field, "NODES[1]");
        assert_eq!(field(&[]).field, "NODES");
        assert_eq!(entry("gc", "n1"), "gc.n1");
    }
}
