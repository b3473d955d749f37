//! `niks3 key`: generate signing keys and print public keys, in the same formats as `nix key`.

/// `niks3 key …`
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Generate a secret key and its public key (like `nix key generate-secret` + `convert-secret-to-public`).
    Generate {},
    /// Print the public key of a secret key file.
    Public {},
}

/// Runs `niks3 key …`.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    anyhow::bail!("niks3 key is not implemented yet ({cmd:?})")
}
