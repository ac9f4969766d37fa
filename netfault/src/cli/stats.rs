//! `netfault stats [--json] [--watch INTERVAL]`
use std::{
    io::{IsTerminal as _, Write as _},
    time::Duration,
};

use anyhow::Context as _;

use super::Done;

/// Per-rule counters (matched, dropped, duplicated, delayed, queue drops, passed, bytes) and
/// the drops of the queues netfault installed.
#[derive(clap::Args)]
pub struct Args {
    /// One JSON document (with --watch, one per line).
    #[arg(long)]
    pub json: bool,
    /// Print again every INTERVAL (`1s`, `500ms`) until Ctrl-C (exit 130): redrawn in place
    /// on a terminal, appended with a timestamp line otherwise.
    #[arg(long, value_name = "INTERVAL", value_parser = super::args::parse_interval)]
    pub watch: Option<Duration>,
}

pub fn run(a: Args, ns: Option<&str>) -> anyhow::Result<Done> {
    let mut out = std::io::stdout().lock();
    let Some(every) = a.watch else {
        crate::render::stats(&mut out, ns, a.json)?;
        return Ok(Done::Ok);
    };
    // JSON stays one document per line, for scripts; text redraws on a terminal.
    let redraw = !a.json && std::io::stdout().is_terminal();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        // Before the first frame, so no Ctrl-C falls between two polls.
        let mut int = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
        let mut tick = tokio::time::interval(every);
        let mut first = true;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let mut frame = Vec::new();
                    crate::render::stats(&mut frame, ns, a.json)?;
                    if a.json {
                        out.write_all(&frame)?;
                    } else {
                        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
                        let head = format!("every {}, {stamp}", humantime::format_duration(every));
                        if redraw {
                            write_in_place(&mut out, &head, &frame, first)?;
                        } else {
                            // Blocks apart, each with its time.
                            if !first {
                                writeln!(out)?;
                            }
                            writeln!(out, "{head}")?;
                            out.write_all(&frame)?;
                        }
                    }
                    out.flush()?;
                    first = false;
                }
                _ = int.recv() => return Ok(Done::Interrupted),
            }
        }
    })
}

/// Redraws over the previous frame: cursor home, each line cleared to its end, then the rest of
/// the screen cleared (no flicker, unlike clearing the whole screen every tick).
fn write_in_place(
    out: &mut impl std::io::Write,
    head: &str,
    frame: &[u8],
    first: bool,
) -> std::io::Result<()> {
    if first {
        out.write_all(b"\x1b[2J")?;
    }
    out.write_all(b"\x1b[H")?;
    writeln!(out, "{head} (Ctrl-C to stop)\x1b[K")?;
    for line in String::from_utf8_lossy(frame).lines() {
        writeln!(out, "{line}\x1b[K")?;
    }
    out.write_all(b"\x1b[J")
}
