//! Errors of the BPF layer.
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {msg}")]
    Ebpf { what: String, msg: String },
}

/// Flattens an aya error chain into one message. A verifier log is cut to its last lines: the
/// reason is at the end, and thousands of lines help nobody at a terminal.
pub(crate) fn ebpf_err<E: std::error::Error>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> KernelError {
    let what = what.into();
    move |e| {
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
        KernelError::Ebpf { what, msg }
    }
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> KernelError {
    let what = what.into();
    move |source| KernelError::Io { what, source }
}

pub type Result<T> = std::result::Result<T, KernelError>;
