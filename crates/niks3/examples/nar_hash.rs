//! `nar_hash PATH…`: prints `sha256:<nix32> <size> PATH` for each path using niks3's streaming NAR writer
//! (the same numbers as `nix hash path --base32` and `nix-store -q --size`). Exists to benchmark the writer
//! against Nix: `bench/nar.sh` runs both with hyperfine on the same tree.

use niks3_nix::hash::HashingWriter;
use niks3_nix::nar::dump_path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut status = ExitCode::SUCCESS;
    for arg in std::env::args_os().skip(1) {
        let path = std::path::PathBuf::from(arg);
        let mut w = HashingWriter::new(std::io::sink());
        match dump_path(&path, &mut w) {
            Ok(_) => {
                let (hash, size, _) = w.finish();
                println!("{hash} {size} {}", path.display());
            }
            Err(e) => {
                eprintln!("nar_hash: {e}");
                status = ExitCode::FAILURE;
            }
        }
    }
    status
}
