//! Round-trip times and what they mean for failure detection: samples read from a file (and,
//! later, from the data path's histograms), their summary, and the timeouts and phi accrual
//! thresholds they advise. Pure: no kernel, no clock.
//!
//! The samples are round-trip times, as a heartbeat that is answered (or a request with a
//! timeout) sees them.
pub mod advice;
pub mod histogram;
pub mod passive;
pub mod phi;
pub mod probe;
pub mod report;
mod rng;
pub mod samples;
pub mod tail;
mod udp;
pub mod whatif;

pub use advice::{Advice, Params, advise};
pub use histogram::Histogram;
pub use report::Report;
pub use samples::{Rtts, Summary, parse_rate, parse_samples};

/// Probes `peers` with probes of `kind` ([`probe::probe_listening`]) and reports each with the advice `params` give (the loss
/// measured replaces theirs), and how many probes were sent. With `listen` (a nonce), each
/// report also says how many of the peer's requests were heard here
/// ([`probe::probe_listening`]).
pub fn probe_reports(
    peers: &[std::net::IpAddr],
    kind: probe::Kind,
    interval: std::time::Duration,
    duration: std::time::Duration,
    params: &Params,
    what_if: Option<(&str, &whatif::WhatIf)>,
    listen: Option<u64>,
) -> Result<Vec<Report>, probe::ProbeError> {
    Ok(
        probe::probe_listening(peers, kind, interval, duration, listen)?
            .into_iter()
            .map(|(peer, r)| {
                let loss = r.loss();
                let params = Params { loss, ..*params };
                let (sent, heard) = (Some(r.sent), listen.map(|_| r.heard));
                let report = match Rtts::new(r.rtts_us) {
                    Some(rtts) => {
                        let report = Report::new(Some(peer.to_string()), "probe", &rtts, &params);
                        match what_if {
                            Some((file, w)) => report.with_what_if(&rtts, &params, file, w),
                            None => report,
                        }
                    }
                    None => Report::silent(Some(peer.to_string()), "probe", loss),
                };
                Report {
                    sent,
                    heard,
                    answers: r.answers,
                    ..report
                }
            })
            .collect(),
    )
}
