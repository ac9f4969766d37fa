//! Typed netlink errors: what was asked, of which device, and the kernel's errno.
use std::io;

/// A failed netlink operation. Every variant names the operation and the device; those the
/// kernel refused keep its errno as the source (see [`NetlinkError::errno`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    /// The kernel has no qdisc of this kind (ENOENT on create: module absent, not built).
    #[error("{op} on {dev}: this kernel has no {kind} qdisc (sch_{kind}): {source}")]
    QdiscKindUnknown {
        op: &'static str,
        dev: String,
        kind: String,
        #[source]
        source: io::Error,
    },
    /// The kernel lacks a classifier or ematch the filter needs (ENOENT on RTM_NEWTFILTER).
    #[error("{op} on {dev}: this kernel has no {kind}: {source}")]
    FilterKindUnknown {
        op: &'static str,
        dev: String,
        kind: String,
        #[source]
        source: io::Error,
    },
    /// The kernel cannot create links of this kind (EOPNOTSUPP on RTM_NEWLINK).
    #[error("{op} {dev}: this kernel has no {kind} devices: {source}")]
    LinkKindUnsupported {
        op: &'static str,
        dev: String,
        kind: String,
        #[source]
        source: io::Error,
    },
    /// The device does not exist (ENODEV).
    #[error("{op}: no such device {dev}: {source}")]
    NoSuchDevice {
        op: &'static str,
        dev: String,
        #[source]
        source: io::Error,
    },
    /// Any other refusal by the kernel.
    #[error("{op} on {dev}: {source}")]
    Kernel {
        op: &'static str,
        dev: String,
        #[source]
        source: io::Error,
    },
    /// The socket or its runtime could not be set up.
    #[error("{op} on {dev}: cannot open a netlink socket: {source}")]
    Socket {
        op: &'static str,
        dev: String,
        #[source]
        source: io::Error,
    },
    /// The kernel answered something this module cannot read (or nothing where it must answer).
    #[error("{op} on {dev}: {msg}")]
    Protocol {
        op: &'static str,
        dev: String,
        msg: String,
    },
}

impl NetlinkError {
    /// The kernel's errno, where the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::QdiscKindUnknown { source, .. }
            | Self::FilterKindUnknown { source, .. }
            | Self::LinkKindUnsupported { source, .. }
            | Self::NoSuchDevice { source, .. }
            | Self::Kernel { source, .. }
            | Self::Socket { source, .. } => source.raw_os_error(),
            Self::Protocol { .. } => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, NetlinkError>;

/// What went wrong below the public API, before the operation and device are known.
#[derive(Debug)]
pub(crate) enum Fail {
    /// A positive errno from an NLMSG_ERROR answer.
    Errno(i32),
    Socket(io::Error),
    Protocol(String),
}

/// Where a failure happened, to turn a [`Fail`] into a [`NetlinkError`].
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub op: &'static str,
    pub dev: String,
}

impl Ctx {
    pub fn new(op: &'static str, dev: impl Into<String>) -> Self {
        Self {
            op,
            dev: dev.into(),
        }
    }

    pub fn ifindex(op: &'static str, ifindex: u32) -> Self {
        Self::new(op, format!("ifindex {ifindex}"))
    }

    /// The generic mapping: ENODEV is a missing device, any other errno a refusal.
    pub fn err(&self, f: Fail) -> NetlinkError {
        let (op, dev) = (self.op, self.dev.clone());
        match f {
            Fail::Errno(e) if e == libc::ENODEV => NetlinkError::NoSuchDevice {
                op,
                dev,
                source: io::Error::from_raw_os_error(e),
            },
            Fail::Errno(e) => NetlinkError::Kernel {
                op,
                dev,
                source: io::Error::from_raw_os_error(e),
            },
            Fail::Socket(source) => NetlinkError::Socket { op, dev, source },
            Fail::Protocol(msg) => NetlinkError::Protocol { op, dev, msg },
        }
    }

    pub fn protocol(&self, msg: impl Into<String>) -> NetlinkError {
        self.err(Fail::Protocol(msg.into()))
    }
}
