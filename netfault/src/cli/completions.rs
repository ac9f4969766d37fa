//! `netfault completions SHELL`
use clap::CommandFactory as _;

/// Print a shell completion script on stdout (e.g. `netfault completions bash >
/// /etc/bash_completion.d/netfault`).
#[derive(clap::Args)]
pub struct Args {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let shell = match a.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut super::Cli::command(), "netfault", &mut buf);
    // generate() panics on a write error: write through a buffer, fallibly.
    std::io::Write::write_all(&mut std::io::stdout().lock(), &buf)?;
    Ok(())
}
