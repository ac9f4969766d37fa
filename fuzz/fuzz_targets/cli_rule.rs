//! The CLI's rule and partition arguments: parse, build the spec, compile; no panic.
#![no_main]

use clap::Parser as _;
use libfuzzer_sys::fuzz_target;
use netfault::compile::{Input, compile};

// The binary's own flag definitions for `rule add` and `partition`, and their conversion to a
// rule spec (pure: that file depends on the library, clap and std only).
#[path = "../../netfault/src/cli/args.rs"]
#[expect(dead_code, reason = "the binary's other value parsers are not fuzzed here")]
mod args;

/// `rule add ARGS` and `partition ARGS`, as the binary nests them.
#[derive(clap::Parser)]
#[command(name = "netfault")]
enum Cli {
    Rule {
        #[command(subcommand)]
        cmd: RuleCmd,
    },
    Partition(args::PartitionArgs),
}

#[derive(clap::Subcommand)]
enum RuleCmd {
    Add(args::RuleAddArgs),
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // NUL separates arguments, so arguments may hold spaces.
    let mut argv = vec!["netfault".to_string()];
    if !text.starts_with("partition") {
        argv.extend(["rule".into(), "add".into()]);
    }
    argv.extend(text.split('\0').map(str::to_string));
    let Ok(cli) = Cli::try_parse_from(argv) else {
        return;
    };
    let spec = match cli {
        Cli::Rule {
            cmd: RuleCmd::Add(a),
        } => a.spec(),
        Cli::Partition(p) => p.spec(),
    };
    if let Ok(spec) = spec {
        let _ = compile(&[Input { slot: 0, spec: &spec, ifindex: None }]);
    }
});
