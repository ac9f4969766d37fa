//! Errors of the BPF layer.
use std::io;

/// An aya error, boxed so each layer keeps its own type (program, map, pin, tc, link errors).
pub type EbpfSource = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The message includes the source chain (a verifier log cut to its end); the source itself
    /// stays available, whole, through `Error::source`.
    #[error("{what}: {}", brief(.source.as_ref()))]
    Ebpf {
        what: String,
        #[source]
        source: EbpfSource,
    },
}

/// One line of an aya error chain, for a terminal. A verifier log is cut to its last lines: the
/// reason is at the end, and thousands of lines help nobody there.
fn brief(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg = format!("{msg}: {t}");
        }
        src = s.source();
    }
    let lines: Vec<&str> = msg.lines().collect();
    if lines.len() > 12 {
        msg = format!("{} [...] {}", lines[0], lines[lines.len() - 8..].join("\n"));
    }
    msg
}

pub(crate) fn ebpf_err<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> KernelError {
    let what = what.into();
    move |e| KernelError::Ebpf {
        what,
        source: Box::new(e),
    }
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> KernelError {
    let what = what.into();
    move |source| KernelError::Io { what, source }
}

pub type Result<T> = std::result::Result<T, KernelError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("verifier said:\n{0}")]
    struct Verifier(String);

    #[test]
    fn display_cuts_a_long_log_and_the_source_stays_whole() {
        let log: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        let e = ebpf_err("load")(Verifier(log.join("\n")));
        let shown = e.to_string();
        assert!(shown.starts_with("load: verifier said:"), "{shown}");
        assert!(
            shown.contains("[...]") && shown.ends_with("line 99"),
            "{shown}"
        );
        assert!(!shown.contains("line 50\n"), "{shown}");
        let src = std::error::Error::source(&e).expect("source kept");
        assert!(src.downcast_ref::<Verifier>().is_some());
        assert!(src.to_string().contains("line 50\n"));
    }
}
