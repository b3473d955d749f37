//! The command line the measuring examples share: `[ROUNDS] STORE-PATH…`.

use niks3_nix::store_path::{StoreDir, StorePath};

/// The rounds (first argument when it is a number, else `default_rounds`) and the store paths after it.
pub fn rounds_and_paths(default_rounds: usize) -> Result<(usize, Vec<StorePath>), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let rounds = match args.first().map(|a| a.parse()) {
        Some(Ok(n)) => {
            args.remove(0);
            n
        }
        _ => default_rounds,
    };
    let dir = StoreDir::default();
    let paths = args.iter().map(|a| dir.parse_path(a)).collect::<Result<_, _>>()?;
    Ok((rounds, paths))
}
