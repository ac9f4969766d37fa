//! A report per peer, as `advise` prints it (and, later, `measure`): the JSON keys of the
//! README's "Measure and choose timeouts" section.
use serde::{Deserialize, Serialize};

use super::{Advice, Histogram, Params, Rtts, Summary, advise};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The peer measured; `None` for samples read from a file.
    pub peer: Option<String>,
    /// Where the samples come from: `file`, and later `tcp-ts`, `handshake`, `probe`.
    pub source: String,
    pub samples: usize,
    /// The fraction of heartbeats (or probes) lost.
    pub loss: f64,
    /// `None` with no samples (every probe lost).
    pub rtt_us: Option<Summary>,
    /// `[[upper_us, count], ...]`, the non-empty log-linear buckets.
    pub histogram: Vec<(u64, u64)>,
    pub advice: Option<Advice>,
}

impl Report {
    pub fn new(peer: Option<String>, source: &str, rtts: &Rtts, params: &Params) -> Report {
        Report {
            peer,
            source: source.to_owned(),
            samples: rtts.len(),
            loss: params.loss,
            rtt_us: Some(rtts.summary()),
            histogram: Histogram::of(rtts.sorted()).buckets(),
            advice: Some(advise(rtts, params)),
        }
    }

    /// A peer that answered nothing.
    pub fn silent(peer: Option<String>, source: &str, loss: f64) -> Report {
        Report {
            peer,
            source: source.to_owned(),
            samples: 0,
            loss,
            rtt_us: None,
            histogram: Vec::new(),
            advice: None,
        }
    }
}
