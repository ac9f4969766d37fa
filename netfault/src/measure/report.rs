//! A report per peer, as `advise` prints it (and, later, `measure`): the JSON keys of the
//! README's "Measure and choose timeouts" section.
use serde::{Deserialize, Serialize};

use super::{Advice, Histogram, Params, Rtts, Summary, advise};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The peer measured; `None` for samples read from a file.
    pub peer: Option<String>,
    /// Where the samples come from: `file`, `tcp-ts`, `handshake`, `probe`.
    pub source: String,
    pub samples: usize,
    /// The fraction of heartbeats (or probes) lost; `None` (JSON null) where nothing was
    /// sent to be lost (passive measurement).
    pub loss: Option<f64>,
    /// `None` with no samples (every probe lost).
    pub rtt_us: Option<Summary>,
    /// `[[upper_us, count], ...]`, the non-empty log-linear buckets.
    pub histogram: Vec<(u64, u64)>,
    pub advice: Option<Advice>,
    /// Probes sent to the peer (`probe` reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<u64>,
    /// The peer's requests heard here, when the probers listened (`cluster verify`): what
    /// crossed the wire from the peer to this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heard: Option<u64>,
    /// How UDP probes were answered (`--probe udp:PORT`); absent for ICMP probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answers: Option<super::probe::Answers>,
    /// The same under a rule set (`--what-if`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub what_if: Option<super::whatif::WhatIfReport>,
}

impl Report {
    pub fn new(peer: Option<String>, source: &str, rtts: &Rtts, params: &Params) -> Report {
        Report {
            peer,
            source: source.to_owned(),
            samples: rtts.len(),
            loss: Some(params.loss),
            rtt_us: Some(rtts.summary()),
            histogram: Histogram::of(rtts.sorted()).buckets(),
            advice: Some(advise(rtts, params)),
            sent: None,
            heard: None,
            answers: None,
            what_if: None,
        }
    }

    /// With the figures under `w` (from rule-set file `file`) beside the measured ones.
    pub fn with_what_if(
        mut self,
        rtts: &Rtts,
        params: &Params,
        file: &str,
        w: &super::whatif::WhatIf,
    ) -> Report {
        let folded = w.fold(rtts);
        let loss = 1.0 - (1.0 - params.loss) * (1.0 - w.loss);
        self.what_if = Some(super::whatif::WhatIfReport {
            file: file.to_owned(),
            loss,
            rtt_us: folded.summary(),
            advice: advise(&folded, &Params { loss, ..*params }),
        });
        self
    }

    /// [`with_what_if`](Self::with_what_if) for a report whose samples are gone (one a node
    /// sent): folded into its histogram, each bucket's samples at the bucket's middle (under
    /// 0.5 % off). A report without samples stays as it is.
    pub fn with_what_if_of_histogram(
        self,
        params: &Params,
        file: &str,
        w: &super::whatif::WhatIf,
    ) -> Report {
        let Some(rtts) = Rtts::new(Histogram::of_buckets(&self.histogram).midpoints()) else {
            return self;
        };
        self.with_what_if(&rtts, params, file, w)
    }

    /// A peer that answered nothing.
    pub fn silent(peer: Option<String>, source: &str, loss: f64) -> Report {
        Report {
            peer,
            source: source.to_owned(),
            samples: 0,
            loss: Some(loss),
            rtt_us: None,
            histogram: Vec::new(),
            advice: None,
            sent: None,
            heard: None,
            answers: None,
            what_if: None,
        }
    }
}
