//! The controller's errors and the exit status each one means.
use std::io;

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
    /// `detach IFACE` of an interface netfault is not attached to.
    #[error("invalid IFACE: {iface} is not attached (see `netfault status`)")]
    IfaceNotAttached { iface: String },
    /// `run` wants an interface that `netfault attach` manages.
    #[error(
        "{iface} is attached already (by `netfault attach`); detach it first or use another interface"
    )]
    AttachedByAttach { iface: String },
    /// Under sshd, the operator's connection not found, and rule `name` could cut it.
    #[error(
        "{name} could cut the SSH connection netfault runs under, which it could not find (sshd \
         session process {sshd}: {why}); protect it with `netfault protect add CLIENT_ADDR[:PORT]` \
         (the address you connect from) and run this command again with --no-protect, or keep \
         SSH_CONNECTION (`sudo --preserve-env=SSH_CONNECTION netfault ...`)"
    )]
    OperatorNotFound {
        name: String,
        sshd: u32,
        why: String,
    },
    /// `attach` finds netfault's programs on the interface that this state does not hold.
    #[error("{0}")]
    HeldByAnother(String),
    #[error("all {max} rule slots are in use")]
    RuleSlotsFull { max: usize },
    #[error(transparent)]
    Privileges(#[from] super::privileges::PrivilegeError),
    #[error("identify the network namespace: {0}")]
    NetnsIdentity(#[source] io::Error),
    #[error("read the network namespace cookie: {0}")]
    NetnsCookie(#[source] io::Error),
    #[error("start the tokio runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("install the {signal} handler: {source}")]
    SignalHandler {
        signal: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Qdisc(#[from] QdiscError),
    /// The receive offloads per-packet probabilities need off (`control::features`).
    #[error("{0} (per-packet probabilities need one packet per skb there)")]
    Offload(#[from] crate::netlink::NetlinkError),
    /// What a probability at egress needs to draw per wire packet (`control::segment`).
    #[error(transparent)]
    Segmenter(#[from] Box<super::segment::SegmentError>),
}

impl Error {
    /// 2 for bad input (nothing changed), 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_)
            | Error::Compile(_)
            | Error::IfaceNotAttached { .. }
            | Error::RuleSlotsFull { .. }
            | Error::OperatorNotFound { .. }
            | Error::Qdisc(QdiscError::TooBig { .. }) => 2,
            _ => 1,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
