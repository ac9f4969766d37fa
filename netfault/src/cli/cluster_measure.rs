//! `cluster measure`'s text: the N x N matrix of round-trip times and the advice per pair.
use std::io::Write;

use netfault::cluster::coordinator::NodeMeasure;

use super::advise::AdviceArgs;

fn ms(us: f64) -> String {
    format!("{:.3}", us / 1e3)
}

/// Rows are the probing node, columns the probed; each cell is p50/p99 in ms of the probed
/// node's first address, `lost` when none answered, `-` on the diagonal. `passive`: rows are
/// the watching node, and a cell without TCP traffic seen is `?`.
pub fn text(
    out: &mut impl Write,
    m: &[NodeMeasure],
    a: &AdviceArgs,
    passive: bool,
) -> std::io::Result<()> {
    let names: Vec<&str> = m.iter().map(|n| n.node.as_str()).collect();
    let cell = |from: &NodeMeasure, to: &str| -> String {
        if from.node == to {
            return "-".into();
        }
        match from.pairs.iter().find(|p| p.to == to) {
            Some(p) => match &p.report.rtt_us {
                Some(s) => format!("{}/{}", ms(s.p50), ms(s.p99)),
                None => "lost".into(),
            },
            None => "?".into(),
        }
    };
    let width = 17;
    if passive {
        writeln!(
            out,
            "TCP round trips seen, p50/p99 in ms (row's traffic to column, the first address and source seen; ?: none):"
        )?;
    } else {
        writeln!(
            out,
            "round trips, p50/p99 in ms (row probes column, the column's first address):"
        )?;
    }
    write!(out, "{:<8}", "")?;
    for n in &names {
        write!(out, "{n:>width$}")?;
    }
    writeln!(out)?;
    for from in m {
        write!(out, "{:<8}", from.node)?;
        for n in &names {
            write!(out, "{:>width$}", cell(from, n))?;
        }
        writeln!(out)?;
    }
    writeln!(
        out,
        "advice per pair (a heartbeat every {}, {} miss(es) in a row, at most {:.3} false suspicions a day):",
        humantime::format_duration(a.heartbeat),
        a.misses,
        a.false_suspicions * 86_400.0
    )?;
    for from in m {
        if let Some(e) = &from.error {
            writeln!(out, "  {} ({}): {e}", from.node, from.transport)?;
            continue;
        }
        for p in &from.pairs {
            let Some(ad) = &p.report.advice else {
                writeln!(
                    out,
                    "  {} -> {} {}: every probe lost",
                    from.node, p.to, p.addr
                )?;
                continue;
            };
            let timeout = match ad.timeout_ms {
                Some(t) => format!("timeout {t:.3} ms"),
                None => format!(
                    "no timeout ({})",
                    ad.reason.as_deref().unwrap_or("none meets the target")
                ),
            };
            let phi: Vec<String> = ad
                .phi
                .iter()
                .map(|f| format!("phi {} at {:.0} ms", f.threshold, f.fires_after_ms))
                .collect();
            // Passive reports have no loss (nothing was sent): their source instead.
            let loss = match p.report.loss {
                Some(l) => format!("loss {:.2} %", l * 100.0),
                None => format!("seen in {}", p.report.source),
            };
            writeln!(
                out,
                "  {} -> {} {}: {} samples, {loss}, {timeout}; {}",
                from.node,
                p.to,
                p.addr,
                p.report.samples,
                phi.join(", ")
            )?;
            if let Some(a) = &p.report.answers {
                writeln!(
                    out,
                    "    answered by UDP {}, by ICMP port unreachable {}",
                    a.udp, a.icmp_unreachable
                )?;
            }
            if let Some(w) = &p.report.what_if {
                let timeout = w
                    .advice
                    .timeout_ms
                    .map_or_else(|| "no timeout".to_owned(), |t| format!("timeout {t:.3} ms"));
                writeln!(
                    out,
                    "    under {}: p50 {} ms, p99 {} ms, loss {:.2} %, {timeout}",
                    w.file,
                    ms(w.rtt_us.p50),
                    ms(w.rtt_us.p99),
                    w.loss * 100.0
                )?;
            }
        }
    }
    Ok(())
}
