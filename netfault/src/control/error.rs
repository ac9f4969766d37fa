//! The controller's errors and the exit status each one means.
use crate::{
    compile::CompileError,
    control::{queues::QdiscError, state::StateError},
    dataplane::KernelError,
    spec::SpecError,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: exit status 2.
    #[error(transparent)]
    Usage(#[from] SpecError),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("netfault is not attached in this namespace: run `netfault attach IFACE` first")]
    NotAttached,
    #[error("netfault needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN): {0}")]
    Privileges(String),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Qdisc(#[from] QdiscError),
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Compile(_) | Error::Qdisc(QdiscError::TooBig { .. }) => 2,
            _ => 1,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
