//! Project automation: `cargo xtask build | test | demo | bench | lint`.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod vm;
mod vm_cpio;
mod vm_kernel;

/// The eBPF crate's toolchain; must match netfault/build_ebpf.rs.
const EBPF_TOOLCHAIN: &str = "nightly-2026-06-20";

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build everything (controller, eBPF programs, tools) in release.
    Build,
    /// Formatting, clippy on host and eBPF crates, and every test (unit, data path, end to end).
    Test {
        /// Skip fmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Skip the smoke test in VMs with Debian's 6.1 and 6.12 kernels.
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for `cargo test` (after --).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// fmt --check and clippy -D warnings on host and eBPF crates.
    Lint,
    /// The demo lab: three hosts, real traffic: loss, bursts, duplication, partition, reject.
    Demo,
    /// Fuzz the rule-set file parser and the CLI rule parser (cargo-fuzz, eBPF nightly).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// Benchmarks against nftables and a trivial XDP program. `--vm`: the delay benchmark
    /// (netfault vs netem) in a QEMU guest with Debian's 6.12 kernel instead (see docs/VM.md).
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Boot a stock Debian kernel under QEMU and run CMD as root inside (see docs/VM.md).
    Vm {
        /// Kernel series: 6.1 or 6.12.
        #[arg(long, default_value = "6.12")]
        kernel: String,
        /// The command to run in the guest (after --).
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// netfault smoke test and the shaping tests in a VM on every pinned kernel (6.1 and 6.12).
    VmTest,
}

#[expect(
    clippy::expect_used,
    reason = "xtask's manifest directory is always inside the workspace"
)]
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("spawn {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Cargo for the eBPF crate: the pinned nightly, whatever rust-toolchain.toml says.
fn ebpf_cargo() -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", EBPF_TOOLCHAIN, "cargo"]);
    // The outer cargo's settings would point the nested one at the wrong toolchain.
    for k in ["RUSTC", "RUSTUP_TOOLCHAIN", "CARGO", "RUSTC_WRAPPER"] {
        c.env_remove(k);
    }
    c
}

fn lint() -> anyhow::Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "netfault-ebpf",
        "--exclude",
        "netfault-lab-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(ebpf_cargo().args([
        "clippy",
        "-p",
        "netfault-ebpf",
        "-p",
        "netfault-lab-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
        "--target-dir",
        "target/ebpf-clippy",
        "--",
        "-D",
        "warnings",
    ]))
}

const FUZZ_TARGETS: [&str; 2] = ["ruleset", "cli_rule"];

fn fuzz(seconds: u32) -> anyhow::Result<()> {
    for t in FUZZ_TARGETS {
        // A copy of the seed corpus: the fuzzer writes into its corpus, and the tree stays clean.
        let corpus = root().join("target/fuzz-corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        for e in std::fs::read_dir(root().join("fuzz/corpus").join(t))? {
            let e = e?;
            std::fs::copy(e.path(), corpus.join(e.file_name()))?;
        }
        run(ebpf_cargo()
            .args(["fuzz", "run", "--fuzz-dir", "fuzz", t])
            .arg(&corpus)
            .args(["--", &format!("-max_total_time={seconds}"), "-max_len=4096"]))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Build => run(cargo().args([
            "build",
            "--release",
            "--workspace",
            "--exclude",
            "netfault-ebpf",
            "--exclude",
            "netfault-lab-ebpf",
            "--bins",
        ])),
        Cmd::Lint => lint(),
        Cmd::Test {
            no_lint,
            no_vm,
            args,
        } => {
            if !no_lint {
                lint()?;
            }
            // Data-path and end-to-end tests need root: BPF, namespaces, veth.
            if unsafe_geteuid() != 0 {
                bail!(
                    "the tests load BPF programs and create network namespaces: run them as root"
                );
            }
            run(cargo()
                .args([
                    "test",
                    "--workspace",
                    "--exclude",
                    "netfault-ebpf",
                    "--exclude",
                    "netfault-lab-ebpf",
                    "--release",
                ])
                .args(&args))?;
            if args.is_empty() {
                // The host kernel has tcx; 6.1 exercises the clsact path. About 30 s.
                if !no_vm {
                    vm::vm_test()?;
                }
                // A short fuzz run: the parsers must not panic on anything.
                fuzz(15)?;
            }
            Ok(())
        }
        Cmd::Fuzz { seconds } => fuzz(seconds),
        Cmd::Demo => {
            build_bins()?;
            run(&mut Command::new(
                root().join("target/release/netfault-demo"),
            ))
        }
        Cmd::Bench { args } if args.iter().any(|a| a == "--vm") => {
            let rest: Vec<String> = args.into_iter().filter(|a| a != "--vm").collect();
            vm::bench(&rest)
        }
        Cmd::Bench { args } => {
            // The bench drives the netfault binary next to it: build it too, or a stale one
            // is measured.
            build_bins()?;
            run(cargo()
                .args([
                    "run",
                    "--release",
                    "-p",
                    "netfault-lab",
                    "--bin",
                    "netfault-bench",
                    "--",
                ])
                .args(&args))
        }
        Cmd::Vm { kernel, cmd } => vm::vm(&kernel, &cmd),
        Cmd::VmTest => vm::vm_test(),
    }
}

/// netfault and the lab's binaries (demo, bench) in release; a no-op when up to date.
fn build_bins() -> anyhow::Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "netfault",
        "-p",
        "netfault-lab",
        "--bins",
    ]))
}

fn unsafe_geteuid() -> u32 {
    // Read from /proc rather than adding libc to xtask for one call.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}
