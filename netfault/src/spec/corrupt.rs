//! Corruption: one random bit of the transport payload flipped in a fraction of the packets a
//! rule passes (`--corrupt P`), the checksum left as it was or made right for the damaged bytes
//! (`--corrupt-checksum bad|good`). The data path does the flipping (netfault-ebpf's `corrupt`).
use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// What becomes of the transport checksum of a corrupted packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CorruptChecksum {
    /// The checksum of the undamaged packet: the receiver's stack discards it and counts a
    /// checksum error, as with a frame damaged on the wire.
    #[default]
    Bad,
    /// A checksum right for the damaged bytes: the application receives them.
    Good,
}

impl CorruptChecksum {
    /// `RuleValue::corrupt_mode`.
    pub fn code(self) -> u8 {
        match self {
            CorruptChecksum::Bad => netfault_common::CORRUPT_BAD,
            CorruptChecksum::Good => netfault_common::CORRUPT_GOOD,
        }
    }
}

impl fmt::Display for CorruptChecksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CorruptChecksum::Bad => "bad",
            CorruptChecksum::Good => "good",
        })
    }
}

impl FromStr for CorruptChecksum {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bad" => Ok(CorruptChecksum::Bad),
            "good" => Ok(CorruptChecksum::Good),
            _ => Err(format!(
                "'{s}' is not a checksum choice (use bad: the receiver discards the packet, or \
                 good: the application gets the damaged bytes)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_is_the_default() {
        for c in [CorruptChecksum::Bad, CorruptChecksum::Good] {
            assert_eq!(c.to_string().parse::<CorruptChecksum>().unwrap(), c);
        }
        assert_eq!(
            " GOOD ".parse::<CorruptChecksum>(),
            Ok(CorruptChecksum::Good)
        );
        assert_eq!(CorruptChecksum::default(), CorruptChecksum::Bad);
        assert!(
            "fixed"
                .parse::<CorruptChecksum>()
                .unwrap_err()
                .contains("'fixed'")
        );
        assert_ne!(CorruptChecksum::Bad.code(), CorruptChecksum::Good.code());
    }
}
