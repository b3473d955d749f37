//! `niks3 serve`.

/// Arguments of `niks3 serve`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `niks3 serve`.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::bail!("niks3 serve is not implemented yet ({args:?})")
}
