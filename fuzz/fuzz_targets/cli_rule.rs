//! The CLI's rule and partition arguments: parse, build the spec, compile; no panic.
#![no_main]

use clap::Parser as _;
use libfuzzer_sys::fuzz_target;
use netfault::compile::{Input, compile};

// The binary's own flag definitions and their conversion to a rule spec.
#[path = "../../netfault/src/cli/args.rs"]
mod args;
use args::{Cli, rule_spec};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // NUL separates arguments, so arguments may hold spaces.
    let mut args = vec!["netfault".to_string()];
    if !text.starts_with("partition") {
        args.extend(["rule".into(), "add".into()]);
    }
    args.extend(text.split('\0').map(str::to_string));
    let Ok(cli) = Cli::try_parse_from(args) else {
        return;
    };
    if let Ok(Some(spec)) = rule_spec(&cli.cmd) {
        let _ = compile(&[Input { slot: 0, spec: &spec, ifindex: None }]);
    }
});
