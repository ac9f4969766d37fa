//! `netfault status`
/// Attached interfaces and their hooks (XDP native or generic, tcx or clsact) with program ids,
/// protected traffic, rules and partitions with their lifetimes.
#[derive(clap::Args)]
pub struct Args {
    /// One JSON document, for scripts.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args, ns: Option<&str>) -> anyhow::Result<()> {
    crate::render::status(&mut std::io::stdout().lock(), ns, a.json)
}
