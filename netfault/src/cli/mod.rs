//! The command line: flags (`args`), then a validated plan, then the run.
pub mod args;
