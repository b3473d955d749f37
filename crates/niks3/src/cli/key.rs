//! `niks3 key`: generate signing keys and print public keys, in the same formats as `nix key`.

use anyhow::Context;
use niks3_nix::signing::SecretKey;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// `niks3 key …`
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Generate a secret key and its public key (like `nix key generate-secret` + `convert-secret-to-public`).
    Generate {
        /// Key name, conventionally the cache's host name and a number, e.g. `cache.example.org-1`.
        #[arg(long)]
        name: String,
        /// Where to write the secret key (created with mode 0600; an existing file is never overwritten).
        #[arg(long)]
        secret_out: PathBuf,
        /// Where to write the public key (an existing file is never overwritten).
        #[arg(long)]
        public_out: PathBuf,
    },
    /// Print the public key of a secret key file.
    Public {
        /// The secret key file (`name:base64`, as written by `niks3 key generate` or `nix key generate-secret`).
        secret_key_file: PathBuf,
    },
}

/// Runs `niks3 key …`.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Generate { name, secret_out, public_out } => {
            if secret_out == public_out {
                anyhow::bail!("--secret-out and --public-out are the same file {}", secret_out.display());
            }
            for p in [&secret_out, &public_out] {
                if p.symlink_metadata().is_ok() {
                    anyhow::bail!("{} already exists; refusing to overwrite it", p.display());
                }
            }
            let key = SecretKey::generate(&name)?;
            write_new(&secret_out, key.to_nix_string().as_bytes(), 0o600)?;
            if let Err(e) = write_new(&public_out, key.public().to_nix_string().as_bytes(), 0o644) {
                // Leave nothing half-made behind: a secret without its public key is confusing.
                let _ = std::fs::remove_file(&secret_out);
                return Err(e);
            }
            println!("{}", key.public().to_nix_string());
            Ok(())
        }
        Command::Public { secret_key_file } => {
            let key = SecretKey::from_file(&secret_key_file)?;
            println!("{}", key.public().to_nix_string());
            Ok(())
        }
    }
}

/// Creates `path` (failing if it exists) with `mode`, writes `data` without a trailing newline (as Nix
/// does) and syncs it.
fn write_new(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
