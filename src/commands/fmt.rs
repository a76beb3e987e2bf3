//! Formatting for people: sizes, times, modes, quoted paths, counts.

use crate::id::ObjectId;
use crate::object::tree::Timestamp;

/// `1.2 MiB`.
pub fn size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// RFC 3339 in UTC with nanoseconds: `2026-11-25T15:04:05.123456789Z`.
pub fn rfc3339(t: Timestamp) -> String {
    let days = t.secs.div_euclid(86_400);
    let rem = t.secs.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        t.nanos
    )
}

/// `2026-11-25 15:04:05 UTC`.
pub fn human_time(t: Timestamp) -> String {
    let s = rfc3339(t);
    format!("{} {} UTC", &s[..10], &s[11..19])
}

/// `drwxr-xr-x`-style mode string.
pub fn mode_string(kind: char, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(kind);
    for (i, c) in ['r', 'w', 'x', 'r', 'w', 'x', 'r', 'w', 'x']
        .iter()
        .enumerate()
    {
        let bit = 1 << (8 - i);
        s.push(if mode & bit != 0 { *c } else { '-' });
    }
    s
}

/// A path for a line of text: C-style quoted (like git) when it holds
/// control characters, quotes, backslashes or bytes that are not UTF-8.
pub fn quote_path(raw: &[u8]) -> String {
    let plain = std::str::from_utf8(raw)
        .ok()
        .filter(|s| !s.chars().any(|c| c.is_control() || c == '"' || c == '\\'));
    if let Some(s) = plain {
        return s.to_string();
    }
    let mut out = String::from("\"");
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\{:03o}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\{b:03o}"));
        }
    }
    out.push('"');
    out
}

/// A ref's move, as push, pull and bundle import print it: `OLD -> NEW NAME`,
/// then ` (forced update)` when `--force` moved it off its history (as git
/// says it).
pub fn ref_move(old: Option<ObjectId>, new: ObjectId, name: &str, forced: bool) -> String {
    format!(
        "{} -> {} {}{}",
        old.map(|o| o.short()).unwrap_or_else(|| "(new)".into()),
        new.short(),
        name,
        if forced { " (forced update)" } else { "" }
    )
}

/// `1 file`, `2 files`.
pub fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// `text` with control characters (terminal escape sequences) escaped.
pub fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let esc: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            esc
        })
        .collect()
}

/// RFC 3339 of whole seconds since 1970.
pub fn when(secs: i64) -> String {
    rfc3339(Timestamp { secs, nanos: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(size(10), "10 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(
            rfc3339(Timestamp { secs: 0, nanos: 5 }),
            "1970-01-01T00:00:00.000000005Z"
        );
        assert_eq!(
            rfc3339(Timestamp {
                secs: 1_764_083_045,
                nanos: 0
            }),
            "2025-11-25T15:04:05.000000000Z"
        );
        assert_eq!(
            rfc3339(Timestamp { secs: -1, nanos: 0 }),
            "1969-12-31T23:59:59.000000000Z"
        );
        assert_eq!(mode_string('d', 0o755), "drwxr-xr-x");
        assert_eq!(quote_path(b"a b"), "a b");
        assert_eq!(quote_path(b"a\nb"), "\"a\\nb\"");
        assert_eq!(quote_path(b"\xff"), "\"\\377\"");
    }
}
