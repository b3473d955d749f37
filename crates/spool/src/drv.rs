//! Reads the outputs of a derivation file (`.drv`, Nix's ATerm format) without running Nix.
//!
//! Why: Nix 2.8 gives the post-build-hook an empty `OUT_PATHS`, so the hook must find the outputs in the
//! `.drv` itself. Only the first list of `Derive([("out","/nix/store/…","",""),…],…)` is parsed; the rest
//! of the file (inputs, environment — possibly megabytes) is never looked at.

use std::io::Read;
use std::path::{Path, PathBuf};

/// One output of a derivation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// Output name (`out`, `dev`, …).
    pub name: String,
    /// Output path; empty for floating content-addressed outputs, whose path is not known in advance.
    pub path: String,
}

/// Why the outputs of a `.drv` could not be read.
#[derive(Debug)]
pub enum DrvError {
    /// The file could not be read.
    Io {
        /// The `.drv` file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a derivation in the ATerm format; `offset` is the byte where parsing stopped.
    Syntax {
        /// The `.drv` file.
        path: PathBuf,
        /// Byte offset where parsing stopped.
        offset: usize,
        /// What was expected there.
        reason: String,
    },
}

impl std::fmt::Display for DrvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DrvError::Io { path, source } => write!(f, "cannot read derivation {}: {source}", path.display()),
            DrvError::Syntax { path, offset, reason } => {
                write!(f, "cannot parse derivation {} at byte {offset}: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for DrvError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DrvError::Io { source, .. } => Some(source),
            DrvError::Syntax { .. } => None,
        }
    }
}

/// Most `.drv` files are far smaller; the outputs list comes first, so this prefix almost always holds it.
const FIRST_READ: usize = 64 * 1024;
/// A derivation whose outputs list does not end within this many bytes is not one we believe.
const MAX_READ: u64 = 16 * 1024 * 1024;

/// Reads the outputs list of the derivation at `path`.
pub fn read_outputs(path: &Path) -> Result<Vec<Output>, DrvError> {
    let io = |source| DrvError::Io { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut reader = file.take(MAX_READ);
    let mut buf = Vec::with_capacity(FIRST_READ);
    (&mut reader).take(FIRST_READ as u64).read_to_end(&mut buf).map_err(io)?;
    match parse_outputs(&buf) {
        Err(ParseError::Incomplete) if buf.len() == FIRST_READ => {
            reader.read_to_end(&mut buf).map_err(io)?;
            parse_outputs(&buf)
        }
        other => other,
    }
    .map_err(|e| {
        let (offset, reason) = match e {
            ParseError::Incomplete => (buf.len(), "file ends inside the outputs list".to_owned()),
            ParseError::Unexpected { offset, expected } => (offset, format!("expected {expected}")),
            ParseError::NotUtf8 { offset } => (offset, "string is not UTF-8".to_owned()),
        };
        DrvError::Syntax { path: path.to_owned(), offset, reason }
    })
}

/// Why a byte prefix is not (yet) an outputs list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// The input ended before the outputs list did: read more.
    Incomplete,
    /// A byte other than `expected` was found at `offset`.
    Unexpected {
        /// Byte offset of the unexpected byte.
        offset: usize,
        /// What should have been there.
        expected: &'static str,
    },
    /// A string starting at `offset` is not UTF-8.
    NotUtf8 {
        /// Byte offset of the string's opening quote.
        offset: usize,
    },
}

/// Parses the outputs list at the start of a `.drv` (`Derive([` … `],`); ignores everything after it.
pub(crate) fn parse_outputs(input: &[u8]) -> Result<Vec<Output>, ParseError> {
    let mut p = Parser { input, pos: 0 };
    p.literal(b"Derive([", "`Derive([`")?;
    let mut outputs = Vec::new();
    if p.peek()? == b']' {
        return Ok(outputs);
    }
    loop {
        p.literal(b"(", "`(`")?;
        let name = p.string()?;
        p.literal(b",", "`,`")?;
        let path = p.string()?;
        p.literal(b",", "`,`")?;
        p.string()?; // hash algorithm
        p.literal(b",", "`,`")?;
        p.string()?; // hash
        p.literal(b")", "`)`")?;
        outputs.push(Output { name, path });
        match p.next()? {
            b',' => {}
            b']' => return Ok(outputs),
            _ => return Err(ParseError::Unexpected { offset: p.pos - 1, expected: "`,` or `]`" }),
        }
    }
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Result<u8, ParseError> {
        self.input.get(self.pos).copied().ok_or(ParseError::Incomplete)
    }

    fn next(&mut self) -> Result<u8, ParseError> {
        let c = self.peek()?;
        self.pos += 1;
        Ok(c)
    }

    fn literal(&mut self, lit: &[u8], expected: &'static str) -> Result<(), ParseError> {
        for &want in lit {
            let at = self.pos;
            if self.next()? != want {
                return Err(ParseError::Unexpected { offset: at, expected });
            }
        }
        Ok(())
    }

    /// A Nix ATerm string: `"` … `"` with escapes `\n`, `\r`, `\t`, and `\x` = `x` for any other `x`.
    fn string(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        self.literal(b"\"", "`\"`")?;
        let mut out = Vec::new();
        loop {
            match self.next()? {
                b'"' => break,
                b'\\' => out.push(match self.next()? {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    c => c,
                }),
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| ParseError::NotUtf8 { offset: start })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multiple_outputs_and_ignores_the_rest() {
        let drv = br#"Derive([("dev","/nix/store/niym0l9w4bif3x5sa4580wbs4dyxzhla-hk-test-dev","",""),("out","/nix/store/mszzps44c0d8dq4928m9byf3l2g64409-hk-test","","")],[],[],"x86_64-linux","/bin/sh",["-c","echo \"a\\\"b\\\\c\nd\""],[])"#;
        let outs = parse_outputs(drv).expect("valid drv");
        assert_eq!(
            outs,
            vec![
                Output { name: "dev".into(), path: "/nix/store/niym0l9w4bif3x5sa4580wbs4dyxzhla-hk-test-dev".into() },
                Output { name: "out".into(), path: "/nix/store/mszzps44c0d8dq4928m9byf3l2g64409-hk-test".into() },
            ]
        );
        // a prefix that stops right after the outputs list is enough
        let end = drv.windows(3).position(|w| w == b")],").expect("list end") + 2;
        assert_eq!(parse_outputs(&drv[..end]).expect("prefix"), outs);
    }

    #[test]
    fn string_escapes_follow_nix() {
        let outs = parse_outputs(br#"Derive([("o\"u\\t\n","a\tb\rc\qd","r:sha256","ab")],"#).expect("parse");
        assert_eq!(outs[0].name, "o\"u\\t\n");
        assert_eq!(outs[0].path, "a\tb\rcqd");
    }

    #[test]
    fn floating_ca_output_has_empty_path() {
        let outs = parse_outputs(br#"Derive([("out","","r:sha256","")],[],"#).expect("parse");
        assert_eq!(outs, vec![Output { name: "out".into(), path: String::new() }]);
    }

    #[test]
    fn truncated_and_garbage_inputs_are_rejected() {
        assert_eq!(parse_outputs(br#"Derive([("out","/nix/st"#), Err(ParseError::Incomplete));
        assert_eq!(parse_outputs(b""), Err(ParseError::Incomplete));
        assert!(matches!(parse_outputs(b"{\"json\": 1}"), Err(ParseError::Unexpected { offset: 0, .. })));
        assert!(matches!(
            parse_outputs(br#"Derive([("out","/p","","");"#),
            Err(ParseError::Unexpected { offset: 26, expected: "`,` or `]`" })
        ));
        assert!(matches!(parse_outputs(b"Derive([(\"out\",\"\xff\",\"\",\"\")]"), Err(ParseError::NotUtf8 { .. })));
    }
}
