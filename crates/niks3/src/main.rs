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
            eprintln!("niks3: error: {}", causes(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-separated, each said once. Our error enums put their cause in their own
/// message (so a log line with just the error is complete) and also expose it as `source()` (so callers
/// can inspect it); printing the whole chain would then repeat it ("Read-only file system (os error 30):
/// Read-only file system (os error 30)"). A cause whose text the message so far already holds is left out.
fn causes(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::causes;

    /// Shaped like our thiserror enums: the cause in the message and as `source()`.
    #[derive(Debug)]
    struct Open {
        path: &'static str,
        source: std::io::Error,
    }

    impl std::fmt::Display for Open {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "opening {}: {}", self.path, self.source)
        }
    }

    impl std::error::Error for Open {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::from_raw_os_error(30);
        let err = anyhow::Error::new(Open { path: "/state/x", source: io() }).context("starting the server");
        let text = causes(&err);
        assert_eq!(text, format!("starting the server: opening /state/x: {}", io()));
        // A cause the message does not mention is kept.
        let err = anyhow::Error::new(io()).context("writing the token");
        assert_eq!(causes(&err), format!("writing the token: {}", io()));
    }
}
