//! `netfault manpage`
use std::io::Write as _;

use clap::CommandFactory as _;

/// Print the man page (roff) on stdout (e.g. `netfault manpage >
/// /usr/local/share/man/man1/netfault.1`).
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_: &Args) -> anyhow::Result<()> {
    let mut cmd = super::Cli::command();
    cmd.build();
    let mut buf = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(&mut buf)?;
    man.render_name_section(&mut buf)?;
    man.render_synopsis_section(&mut buf)?;
    man.render_description_section(&mut buf)?;
    man.render_options_section(&mut buf)?;
    // One page: not clap_mangen's list of netfault-SUB(1) pages, which are not installed, but
    // every subcommand's usage and options here.
    writeln!(buf, ".SH \"COMMANDS\"")?;
    for sub in cmd.get_subcommands().filter(|s| visible(s)) {
        render_sub(&mut buf, sub, "netfault")?;
    }
    man.render_version_section(&mut buf)?;
    std::io::stdout().lock().write_all(&buf)?;
    Ok(())
}

fn visible(c: &clap::Command) -> bool {
    !c.is_hide_set() && c.get_name() != "help"
}

/// Text for roff: backslashes escaped, hyphens kept literal, no line read as a request.
fn roff(s: &str) -> String {
    s.replace('\\', "\\e")
        .replace('-', "\\-")
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One subsection per subcommand (recursively): usage, description, options.
fn render_sub(buf: &mut Vec<u8>, sub: &clap::Command, parent: &str) -> std::io::Result<()> {
    let name = format!("{parent} {}", sub.get_name());
    writeln!(buf, ".SS \"{}\"", roff(&name))?;
    let mut usage_cmd = sub.clone().bin_name(&name);
    let usage = usage_cmd.render_usage().to_string();
    let usage = usage.trim_start_matches("Usage: ");
    writeln!(buf, ".B {}\n.br", roff(usage))?;
    if let Some(about) = sub.get_long_about().or(sub.get_about()) {
        writeln!(buf, "{}", roff(&about.to_string()))?;
    }
    // --netns is global: described once, at the top.
    for a in sub
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_global_set())
    {
        let id = a.get_id().as_str();
        if id == "help" || id == "version" {
            continue;
        }
        let names = match (a.get_long(), a.get_short()) {
            (Some(l), Some(s)) => format!("\\fB\\-{s}\\fR, \\fB\\-\\-{}\\fR", roff(l)),
            (Some(l), None) => format!("\\fB\\-\\-{}\\fR", roff(l)),
            (None, Some(s)) => format!("\\fB\\-{s}\\fR"),
            (None, None) => String::new(),
        };
        let value = a
            .get_value_names()
            .map(|v| {
                v.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| id.to_uppercase());
        let takes_value = a.get_num_args().is_some_and(|n| n.takes_values());
        let head = match (names.is_empty(), takes_value) {
            (true, _) => format!("\\fI{}\\fR", roff(&value)),
            (false, true) => format!("{names} \\fI{}\\fR", roff(&value)),
            (false, false) => names,
        };
        writeln!(buf, ".TP\n{head}")?;
        if let Some(h) = a.get_long_help().or(a.get_help()) {
            writeln!(buf, "{}", roff(&h.to_string()))?;
        }
        let defaults: Vec<String> = a
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let possible: Vec<String> = a
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_string())
            .collect();
        if !possible.is_empty() && takes_value {
            writeln!(buf, "[possible values: {}]", roff(&possible.join(", ")))?;
        }
        if !defaults.is_empty() && takes_value {
            writeln!(buf, "[default: {}]", roff(&defaults.join(", ")))?;
        }
    }
    for s in sub.get_subcommands().filter(|s| visible(s)) {
        render_sub(buf, s, &name)?;
    }
    Ok(())
}
