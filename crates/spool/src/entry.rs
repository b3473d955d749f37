//! The spool entry text format: what the hook promises to write and the daemon insists on reading.

use crate::{Entry, SpoolError};
use std::fmt::Write as _;
use std::path::Path;

/// First line of every entry; a future format gets a new version line.
pub const VERSION_LINE: &str = "niks3-spool-v1";

impl Entry {
    /// Serialises in the format of the crate doc: version line, `drv=`, each `out=`, each `realisation=`,
    /// then `queued=` last
    /// (so a truncated file always lacks its `queued=` line or its final newline and is rejected).
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(64 + self.outs.iter().map(|o| o.len() + 5).sum::<usize>());
        s.push_str(VERSION_LINE);
        s.push('\n');
        if let Some(drv) = &self.drv {
            let _ = writeln!(s, "drv={drv}");
        }
        for out in &self.outs {
            let _ = writeln!(s, "out={out}");
        }
        for name in &self.realisations {
            let _ = writeln!(s, "realisation={name}");
        }
        let _ = writeln!(s, "queued={}", self.queued);
        s
    }

    /// Parses the format of the crate doc; `path` is only used in errors.
    ///
    /// Reasons name the line and what is wrong with it but never quote it: the file may not be an entry
    /// at all (a hard link to a secret, say), and reasons end up in logs and in `quarantine/*.reason`.
    ///
    /// Rejects: a missing or different version line, a missing final newline (truncation), empty lines,
    /// unknown keys, a repeated `drv=`/`queued=`, `queued=` not last, a non-numeric `queued=`, values that
    /// are not normalised absolute paths (or contain control characters such as NUL), a `realisation=`
    /// that is not a Nix output name, repeated, or without a `drv=`, and an entry that names no path at all.
    ///
    /// `realisation=` lines are new (they came with content-addressed derivations); entries written before
    /// have none and parse as before, with [`Entry::realisations`] empty.
    pub fn parse(text: &str, path: &Path) -> Result<Self, SpoolError> {
        let bad = |reason: String| SpoolError::Malformed { path: path.to_owned(), reason };
        let Some(body) = text.strip_suffix('\n') else {
            return Err(bad("does not end with a newline (truncated?)".into()));
        };
        let mut lines = body.split('\n').enumerate().map(|(i, l)| (i + 1, l));
        match lines.next() {
            Some((_, VERSION_LINE)) => {}
            Some((_, _)) => {
                return Err(bad(format!("line 1: is not the version line {VERSION_LINE:?}")));
            }
            None => return Err(bad("empty".into())),
        }
        let mut drv = None;
        let mut outs = Vec::new();
        let mut realisations: Vec<String> = Vec::new();
        let mut queued = None;
        for (n, line) in lines {
            if queued.is_some() {
                return Err(bad(format!("line {n}: found after queued=, which must be the last line")));
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(bad(format!("line {n}: not key=value")));
            };
            match key {
                "drv" => {
                    if drv.is_some() {
                        return Err(bad(format!("line {n}: second drv=")));
                    }
                    check_path(value).map_err(|r| bad(format!("line {n}: drv= value: {r}")))?;
                    drv = Some(value.to_owned());
                }
                "out" => {
                    check_path(value).map_err(|r| bad(format!("line {n}: out= value: {r}")))?;
                    outs.push(value.to_owned());
                }
                "realisation" => {
                    check_output_name(value).map_err(|r| bad(format!("line {n}: realisation= value: {r}")))?;
                    if realisations.iter().any(|r| r == value) {
                        return Err(bad(format!("line {n}: realisation= repeats an earlier one")));
                    }
                    realisations.push(value.to_owned());
                }
                "queued" => {
                    let secs = value
                        .parse::<u64>()
                        .ok()
                        .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| bad(format!("line {n}: queued= value is not a number of seconds")))?;
                    queued = Some(secs);
                }
                _ => return Err(bad(format!("line {n}: unknown key"))),
            }
        }
        let queued = queued.ok_or_else(|| bad("no queued= line (truncated?)".into()))?;
        let entry = Entry { drv, outs, realisations, queued };
        entry.check_shape().map_err(bad)?;
        Ok(entry)
    }

    /// Checks that the entry can be written and read back unchanged (the rules of [`Entry::parse`]).
    pub fn validate(&self) -> Result<(), String> {
        self.check_shape()?;
        if let Some(drv) = &self.drv {
            check_path(drv).map_err(|r| format!("drv {:?}: {r}", shorten(drv)))?;
        }
        for out in &self.outs {
            check_path(out).map_err(|r| format!("out {:?}: {r}", shorten(out)))?;
        }
        for (i, name) in self.realisations.iter().enumerate() {
            check_output_name(name).map_err(|r| format!("realisation {:?}: {r}", shorten(name)))?;
            if self.realisations[..i].contains(name) {
                return Err(format!("repeated realisation {name}"));
            }
        }
        Ok(())
    }

    /// The rules that concern the entry as a whole rather than one line.
    fn check_shape(&self) -> Result<(), String> {
        if self.drv.is_none() && self.outs.is_empty() {
            return Err("names neither a drv nor an output".into());
        }
        if self.drv.is_none() && !self.realisations.is_empty() {
            return Err("realisation= names an output of a derivation, but there is no drv=".into());
        }
        Ok(())
    }
}

/// Longest output name Nix accepts (the store path name limit).
const MAX_OUTPUT_NAME_LEN: usize = 211;

/// Checks a Nix output name (`out`, `dev`, …): letters, digits and `+-._?=`, not starting with `.`, at
/// most 211 characters. The hook checks names before queueing them; the entry parser refuses others.
pub fn check_output_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty output name");
    }
    if name.len() > MAX_OUTPUT_NAME_LEN {
        return Err("output name longer than 211 characters");
    }
    if name.starts_with('.') {
        return Err("output name starts with `.`");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b)) {
        return Err("output name has a character other than letters, digits and `+-._?=`");
    }
    Ok(())
}

/// A value must be an absolute, normalised path (no empty, `.` or `..` components) without control
/// characters: the format is line-based and the daemon hands these to the file system.
fn check_path(value: &str) -> Result<(), &'static str> {
    if !value.starts_with('/') {
        return Err("not an absolute path");
    }
    if value.contains('\0') {
        return Err("contains NUL");
    }
    if value.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    if value.len() > 1 && value[1..].split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err("has an empty, `.` or `..` component");
    }
    Ok(())
}

fn shorten(s: &str) -> &str {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
