//! A report per peer, as `advise` prints it (and, later, `measure`): the JSON keys of the
//! README's "Measure and choose timeouts" section.
use serde::Serialize;

use super::{Advice, Histogram, Params, Rtts, Summary, advise};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The peer measured; `None` for samples read from a file.
    pub peer: Option<String>,
    /// Where the samples come from: `file`, and later `tcp-ts`, `handshake`, `probe`.
    pub source: String,
    pub samples: usize,
    /// The fraction of heartbeats (or probes) lost.
    pub loss: f64,
    pub rtt_us: Summary,
    /// `[[upper_us, count], ...]`, the non-empty log-linear buckets.
    pub histogram: Vec<(u64, u64)>,
    pub advice: Advice,
}

impl Report {
    pub fn new(peer: Option<String>, source: &str, rtts: &Rtts, params: &Params) -> Report {
        Report {
            peer,
            source: source.to_owned(),
            samples: rtts.len(),
            loss: params.loss,
            rtt_us: rtts.summary(),
            histogram: Histogram::of(rtts.sorted()).buckets(),
            advice: advise(rtts, params),
        }
    }
}
