//! Rule-set files: any text either parses into specs that compile, or is refused; no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netfault::compile::{Input, compile};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(specs) = netfault::spec::ruleset::parse(text) {
        let inputs: Vec<Input<'_>> = specs
            .iter()
            .enumerate()
            .map(|(i, (s, _))| Input { slot: i as u32, spec: s, ifindex: None })
            .collect();
        let _ = compile(&inputs);
    }
});
