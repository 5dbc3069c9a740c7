//! The reference job's correct output, computed independently of the job's code: the tests
//! compare committed output with this instead of with the library's own checker.

use std::collections::BTreeMap;
use std::path::Path;

/// The most bytes a key may have (the job's documented limit).
const MAX_KEY_LEN: usize = 256;

/// What a failure-free run of the reference job commits, sorted: for every valid `key,value`
/// line (a non-empty UTF-8 key of at most 256 bytes before the first comma, then a decimal
/// `i64` as `str::parse` reads it) the line `key,count,sum` of the key's running totals; every
/// other line as `line_number,line` (1-based) in `rejected/`.
pub fn expected(input: &Path) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let bytes = std::fs::read(input).unwrap();
    let mut totals: BTreeMap<Vec<u8>, (u64, i128)> = BTreeMap::new();
    let (mut lines, mut rejected) = (Vec::new(), Vec::new());
    let mut body: &[u8] = &bytes;
    if body.last() == Some(&b'\n') {
        body = &body[..body.len() - 1];
    }
    if bytes.is_empty() {
        return (lines, rejected);
    }
    for (index, raw) in body.split(|b| *b == b'\n').enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let parsed = line.iter().position(|b| *b == b',').and_then(|comma| {
            let key = &line[..comma];
            let value = std::str::from_utf8(&line[comma + 1..])
                .ok()?
                .parse::<i64>()
                .ok()?;
            let valid = !key.is_empty() && key.len() <= MAX_KEY_LEN;
            (valid && std::str::from_utf8(key).is_ok()).then(|| (key.to_vec(), value))
        });
        match parsed {
            Some((key, value)) => {
                let total = totals.entry(key.clone()).or_insert((0, 0));
                total.0 += 1;
                total.1 += i128::from(value);
                let mut out = key;
                out.extend_from_slice(format!(",{},{}", total.0, total.1).as_bytes());
                lines.push(out);
            }
            None => {
                let mut out = format!("{},", index + 1).into_bytes();
                out.extend_from_slice(line);
                rejected.push(out);
            }
        }
    }
    lines.sort_unstable();
    rejected.sort_unstable();
    (lines, rejected)
}

/// Every line of the committed `part-*` files directly in `dir`, sorted, read here rather than
/// through the sink.
pub fn committed(dir: &Path) -> Vec<Vec<u8>> {
    committed_on(&flowstate::fs::StdFs, dir)
}

/// [`committed`] for a directory on the file system `fs` (a simulated one in the crash tests).
pub fn committed_on(fs: &dyn flowstate::fs::FileSystem, dir: &Path) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let Ok(entries) = fs.read_dir(dir) else {
        return lines;
    };
    for entry in entries {
        if entry.is_dir || !entry.name.starts_with("part-") {
            continue;
        }
        let bytes = fs.read(&dir.join(&entry.name)).unwrap();
        lines.extend(
            bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec),
        );
    }
    lines.sort_unstable();
    lines
}

/// Asserts that `out` holds exactly the output a failure-free run over `input` commits: every
/// line once, none missing, none extra, rejected lines likewise.
pub fn assert_exactly_once(input: &Path, out: &Path, context: &str) {
    assert_exactly_once_on(&flowstate::fs::StdFs, input, out, context);
}

/// [`assert_exactly_once`] for an output directory on the file system `fs`.
pub fn assert_exactly_once_on(
    fs: &dyn flowstate::fs::FileSystem,
    input: &Path,
    out: &Path,
    context: &str,
) {
    let (lines, rejected) = expected(input);
    let got = committed_on(fs, out);
    assert!(
        got == lines,
        "{context}: committed {} lines, expected {} (first difference at {:?})",
        got.len(),
        lines.len(),
        got.iter().zip(&lines).position(|(a, b)| a != b)
    );
    let got_rejected = committed_on(fs, &out.join("rejected"));
    assert!(
        got_rejected == rejected,
        "{context}: {} rejected lines, expected {}",
        got_rejected.len(),
        rejected.len()
    );
}
