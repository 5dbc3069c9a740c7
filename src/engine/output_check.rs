//! Checks a job's committed output against the totals its input implies.
//!
//! With one source reading the file in order, key k's i-th event yields the line
//! `k,i,<sum of its first i values>`; the committed output must hold exactly those lines (none
//! missing, none twice) and the side output exactly `line_number,original_line` per invalid line.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;

use super::sink::{REJECTED_DIR, committed_files};
use super::source::parse_line;
use crate::error::{Error, Result};
use crate::fs::FileSystem;

/// The lines a correct run commits, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpectedOutput {
    /// `key,count,sum` lines, sorted.
    pub lines: Vec<Vec<u8>>,
    /// `line_number,original_line` lines, sorted.
    pub rejected: Vec<Vec<u8>>,
    /// Distinct keys.
    pub keys: usize,
}

/// Computes the expected output of `input`.
pub fn expected_output(input: &Path) -> Result<ExpectedOutput> {
    let file = fs::File::open(input).map_err(|e| Error::io(input, e))?;
    let mut reader = BufReader::new(file);
    let mut totals: BTreeMap<Vec<u8>, (u64, i128)> = BTreeMap::new();
    let mut out = ExpectedOutput::default();
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        if reader
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io(input, e))?
            == 0
        {
            break;
        }
        number += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        match parse_line(text) {
            Some((key, value)) => {
                let total = totals.entry(key.to_vec()).or_insert((0, 0));
                total.0 += 1;
                total.1 += i128::from(value);
                let mut l = key.to_vec();
                l.extend_from_slice(format!(",{},{}", total.0, total.1).as_bytes());
                out.lines.push(l);
            }
            None => {
                let mut l = format!("{number},").into_bytes();
                l.extend_from_slice(text);
                out.rejected.push(l);
            }
        }
    }
    out.keys = totals.len();
    out.lines.sort_unstable();
    out.rejected.sort_unstable();
    Ok(out)
}

/// Every line of the committed part files of `dir` (on `fs`), sorted.
pub fn committed_lines(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<Vec<u8>>> {
    let mut lines = Vec::new();
    for path in committed_files(fs, dir)? {
        let bytes = fs.read(&path).map_err(|e| Error::io(&path, e))?;
        lines.extend(
            bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec),
        );
    }
    lines.sort_unstable();
    Ok(lines)
}

/// How committed output compares with the expected output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputVerdict {
    /// Expected lines that are not committed.
    pub missing: usize,
    /// Committed lines that are not expected, or committed more often than expected.
    pub unexpected: usize,
    /// The same for the rejected side output.
    pub rejected_missing: usize,
    /// The same for the rejected side output.
    pub rejected_unexpected: usize,
    /// Lines compared.
    pub lines: usize,
}

impl OutputVerdict {
    /// Exactly the expected lines, each once.
    pub fn is_exact(&self) -> bool {
        self.missing == 0
            && self.unexpected == 0
            && self.rejected_missing == 0
            && self.rejected_unexpected == 0
    }
}

/// Compares the committed output in `dir` with `expected`.
pub fn check_output(
    fs: &dyn FileSystem,
    dir: &Path,
    expected: &ExpectedOutput,
) -> Result<OutputVerdict> {
    let lines = committed_lines(fs, dir)?;
    let rejected = committed_lines(fs, &dir.join(REJECTED_DIR))?;
    let (missing, unexpected) = diff(&expected.lines, &lines);
    let (rejected_missing, rejected_unexpected) = diff(&expected.rejected, &rejected);
    Ok(OutputVerdict {
        missing,
        unexpected,
        rejected_missing,
        rejected_unexpected,
        lines: lines.len(),
    })
}

/// (in `want` but not `got`, in `got` but not `want`) of two sorted multisets.
fn diff(want: &[Vec<u8>], got: &[Vec<u8>]) -> (usize, usize) {
    let (mut i, mut j, mut missing, mut extra) = (0, 0, 0, 0);
    while i < want.len() || j < got.len() {
        match (want.get(i), got.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                missing += 1;
                i += 1;
            }
            (Some(_), None) => {
                missing += 1;
                i += 1;
            }
            _ => {
                extra += 1;
                j += 1;
            }
        }
    }
    (missing, extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_counts_missing_and_duplicates() {
        let v = |s: &[&str]| s.iter().map(|l| l.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(
            diff(&v(&["a", "b", "c"]), &v(&["a", "b", "b", "d"])),
            (1, 2)
        );
        assert_eq!(diff(&v(&["a"]), &v(&["a"])), (0, 0));
    }
}
