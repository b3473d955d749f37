//! `niks3 push`.

/// Arguments of `niks3 push`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `niks3 push`.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::bail!("niks3 push is not implemented yet ({args:?})")
}
