//! `niks3`: the cache server and its clients. Thin: parses the command line, sets up logging, and hands
//! over to `cli/<command>.rs`, which call into the library.

#![forbid(unsafe_code)]

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    cli::init_tracing(args.verbose);
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("niks3: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
