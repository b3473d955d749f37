//! `niks3 gc`.

/// Arguments of `niks3 gc`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `niks3 gc`.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::bail!("niks3 gc is not implemented yet ({args:?})")
}
