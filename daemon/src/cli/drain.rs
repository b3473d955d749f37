//! `niks3 drain`.

/// Arguments of `niks3 drain`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `niks3 drain`.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::bail!("niks3 drain is not implemented yet ({args:?})")
}
