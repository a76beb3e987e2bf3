//! The binary `COPY` forms of `numeric`, `date`, `time`, `timestamp` and
//! `timestamptz`, printed as PostgreSQL's output functions print them under
//! the session settings a snapshot sets (`DateStyle = 'ISO, YMD'`,
//! `TimeZone = 'UTC'`): the text a text-format `COPY` of the same value
//! gives, byte for byte, so a table read either way stores the same rows.
//!
//! The forms (PostgreSQL's `*_send` functions, all big-endian):
//! - `numeric`: `ndigits` (i16), `weight` (i16), `sign` (u16: `0x0000`
//!   positive, `0x4000` negative, `0xC000` NaN, `0xD000` Infinity, `0xF000`
//!   -Infinity), `dscale` (i16), then `ndigits` base-10,000 digits (i16 each,
//!   0..=9999). The value is Σ digit[i] × 10000^(weight − i); `dscale` digits
//!   are printed after the point.
//! - `date`: days since 2000-01-01 (i32); `i32::MIN` is `-infinity`,
//!   `i32::MAX` is `infinity`.
//! - `time`: microseconds since midnight (i64), 0..=86,400,000,000.
//! - `timestamp`, `timestamptz`: microseconds since 2000-01-01 00:00:00 UTC
//!   (i64); `i64::MIN` is `-infinity`, `i64::MAX` is `infinity`. In UTC a
//!   `timestamptz` prints as the `timestamp` of the same number followed by
//!   `+00`.
//!
//! Anything else (a length that does not fit, a digit over 9999, a sign
//! not listed, a date outside PostgreSQL's range) is refused: the caller
//! names the table and stops.

/// Microseconds in a day.
const USECS_PER_DAY: i64 = 86_400_000_000;
/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
const UNIX_TO_PG_DAYS: i64 = 10_957;
/// The earliest day PostgreSQL's date and timestamp types hold, as days since
/// 2000-01-01: 4714-11-24 BC (Julian day 0).
const MIN_DAY: i64 = -2_451_545;
/// The day after the last a date holds (5874898-01-01), as days since
/// 2000-01-01.
const DATE_END_DAY: i64 = 2_145_031_949;
/// The day after the last a timestamp holds (294277-01-01), as days since
/// 2000-01-01.
const TIMESTAMP_END_DAY: i64 = 106_751_983;

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

/// Appends the text of a binary `numeric`.
pub fn numeric(b: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    if b.len() < 8 {
        return Err(format!("a binary numeric of {} bytes", b.len()));
    }
    let ndigits = be_i16(b, 0);
    let weight = i32::from(be_i16(b, 2));
    let sign = u16::from_be_bytes([b[4], b[5]]);
    let dscale = be_i16(b, 6);
    if ndigits < 0 || dscale < 0 || b.len() != 8 + 2 * ndigits as usize {
        return Err(format!(
            "a binary numeric of {} bytes with {ndigits} digits, scale {dscale}",
            b.len()
        ));
    }
    let digits = &b[8..];
    let digit = |i: i32| -> u16 {
        if i >= 0 && (i as usize) < digits.len() / 2 {
            u16::from_be_bytes([digits[2 * i as usize], digits[2 * i as usize + 1]])
        } else {
            0
        }
    };
    if (0..i32::from(ndigits)).any(|i| digit(i) > 9999) {
        return Err("a binary numeric with a digit over 9999".into());
    }
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 | 0xD000 | 0xF000 if ndigits == 0 => {
            out.extend_from_slice(match sign {
                0xC000 => &b"NaN"[..],
                0xD000 => b"Infinity",
                _ => b"-Infinity",
            });
            return Ok(());
        }
        _ => return Err(format!("a binary numeric of sign {sign:#06x}")),
    }
    if sign == 0x4000 {
        out.push(b'-');
    }
    // The digits before the point: the first group without its leading
    // zeros, the rest four digits each.
    let mut d: i32;
    if weight < 0 {
        out.push(b'0');
        d = weight + 1;
    } else {
        d = 0;
        while d <= weight {
            let g = digit(d);
            if d == 0 {
                push_padded(out, u64::from(g), 1);
            } else {
                push4(out, g);
            }
            d += 1;
        }
    }
    if dscale > 0 {
        out.push(b'.');
        let end = out.len() + dscale as usize;
        let mut printed = 0;
        while printed < i32::from(dscale) {
            push4(out, digit(d));
            d += 1;
            printed += 4;
        }
        out.truncate(end);
    }
    Ok(())
}

/// The ASCII digit of `v` (0..=9).
fn digit(v: u32) -> u8 {
    b'0' + v as u8
}

/// Appends `g` (0..=9999) as four digits.
fn push4(out: &mut Vec<u8>, g: u16) {
    out.extend_from_slice(&[
        b'0' + (g / 1000) as u8,
        b'0' + (g / 100 % 10) as u8,
        b'0' + (g / 10 % 10) as u8,
        b'0' + (g % 10) as u8,
    ]);
}

/// Appends `v` in decimal with at least `width` (at most 20) digits, zeros
/// in front.
/// (`write!` with padding cost a fifth of a binary `COPY` reader's time.)
pub(crate) fn push_padded(out: &mut Vec<u8>, v: u64, width: usize) {
    if v < 100 && width == 2 {
        out.extend_from_slice(&[b'0' + (v / 10) as u8, b'0' + (v % 10) as u8]);
        return;
    }
    if v < 10_000 && width == 4 {
        push4(out, v as u16);
        return;
    }
    // Two digits at a time, from the right.
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut buf = [b'0'; 20];
    let mut at = buf.len();
    let mut v = v;
    while v >= 100 {
        let p = (v % 100) as usize * 2;
        v /= 100;
        at -= 2;
        buf[at..at + 2].copy_from_slice(&PAIRS[p..p + 2]);
    }
    if v >= 10 {
        at -= 2;
        buf[at..at + 2].copy_from_slice(&PAIRS[v as usize * 2..v as usize * 2 + 2]);
    } else {
        at -= 1;
        buf[at] = b'0' + v as u8;
    }
    let at = at.min(buf.len() - width.min(buf.len()));
    out.extend_from_slice(&buf[at..]);
}

/// The proleptic Gregorian (year, month, day) of a day counted from
/// 1970-01-01; year 0 is 1 BC (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Appends `YYYY-MM-DD` of a day counted from 2000-01-01 (the year as
/// its BC number when not positive); returns whether it is BC.
fn push_date(out: &mut Vec<u8>, day: i64) -> bool {
    let (y, m, d) = civil_from_days(day + UNIX_TO_PG_DAYS);
    if (1..=9999).contains(&y) {
        // The usual year, in one append (a piece at a time cost a
        // binary `COPY` reader of timestamps a twentieth of its time).
        let (y, m, d) = (y as u32, m as u32, d as u32);
        out.extend_from_slice(&[
            digit(y / 1000),
            digit(y / 100 % 10),
            digit(y / 10 % 10),
            digit(y % 10),
            b'-',
            digit(m / 10),
            digit(m % 10),
            b'-',
            digit(d / 10),
            digit(d % 10),
        ]);
        return false;
    }
    push_padded(out, (if y > 0 { y } else { 1 - y }) as u64, 4);
    out.push(b'-');
    push_padded(out, m as u64, 2);
    out.push(b'-');
    push_padded(out, d as u64, 2);
    y <= 0
}

/// Appends `HH:MM:SS` and, when not whole, `.` and up to six digits of the
/// fraction without trailing zeros.
fn push_time(out: &mut Vec<u8>, usecs: i64) {
    // 0..=86,400 seconds: the hour is at most 24.
    let secs = (usecs / 1_000_000) as u32;
    let frac = usecs % 1_000_000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    out.extend_from_slice(&[
        digit(h / 10),
        digit(h % 10),
        b':',
        digit(m / 10),
        digit(m % 10),
        b':',
        digit(s / 10),
        digit(s % 10),
    ]);
    if frac != 0 {
        let mut digits = [0u8; 6];
        let mut f = frac;
        for slot in digits.iter_mut().rev() {
            *slot = b'0' + (f % 10) as u8;
            f /= 10;
        }
        let keep = 6 - digits.iter().rev().take_while(|&&c| c == b'0').count();
        out.push(b'.');
        out.extend_from_slice(&digits[..keep]);
    }
}

/// Appends the text of a binary `date`.
pub fn date(b: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let Ok(raw) = <[u8; 4]>::try_from(b) else {
        return Err(format!("a binary date of {} bytes", b.len()));
    };
    let day = i32::from_be_bytes(raw);
    match day {
        i32::MIN => out.extend_from_slice(b"-infinity"),
        i32::MAX => out.extend_from_slice(b"infinity"),
        _ => {
            let day = i64::from(day);
            if !(MIN_DAY..DATE_END_DAY).contains(&day) {
                return Err(format!("a binary date {day} days from 2000-01-01"));
            }
            if push_date(out, day) {
                out.extend_from_slice(b" BC");
            }
        }
    }
    Ok(())
}

/// Appends the text of a binary `time` (without time zone).
pub fn time(b: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let Ok(raw) = <[u8; 8]>::try_from(b) else {
        return Err(format!("a binary time of {} bytes", b.len()));
    };
    let usecs = i64::from_be_bytes(raw);
    if !(0..=USECS_PER_DAY).contains(&usecs) {
        return Err(format!("a binary time of {usecs} microseconds"));
    }
    push_time(out, usecs);
    Ok(())
}

/// Appends the text of a binary `timestamp`, or with `with_zone` of a
/// `timestamptz` (printed in UTC).
pub fn timestamp(b: &[u8], with_zone: bool, out: &mut Vec<u8>) -> Result<(), String> {
    let Ok(raw) = <[u8; 8]>::try_from(b) else {
        return Err(format!("a binary timestamp of {} bytes", b.len()));
    };
    let t = i64::from_be_bytes(raw);
    match t {
        i64::MIN => out.extend_from_slice(b"-infinity"),
        i64::MAX => out.extend_from_slice(b"infinity"),
        _ => {
            let day = t.div_euclid(USECS_PER_DAY);
            if !(MIN_DAY..TIMESTAMP_END_DAY).contains(&day) {
                return Err(format!("a binary timestamp of {t} microseconds"));
            }
            let bc = push_date(out, day);
            out.push(b' ');
            push_time(out, t.rem_euclid(USECS_PER_DAY));
            if with_zone {
                out.extend_from_slice(b"+00");
            }
            if bc {
                out.extend_from_slice(b" BC");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(ndigits: i16, weight: i16, sign: u16, dscale: i16, digits: &[u16]) -> String {
        let mut b = Vec::new();
        for v in [ndigits as u16, weight as u16, sign, dscale as u16] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        for d in digits {
            b.extend_from_slice(&d.to_be_bytes());
        }
        let mut out = Vec::new();
        numeric(&b, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    proptest::proptest! {
        #[test]
        fn padded_decimals_are_what_format_prints(v in proptest::prelude::any::<u64>(), w in 0usize..=20) {
            let mut out = Vec::new();
            push_padded(&mut out, v, w);
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), format!("{v:0w$}"));
        }
    }

    /// A timestamp printed piece by piece with `format!`: what the
    /// one-append paths must print.
    fn ts_reference(t: i64, zone: bool) -> String {
        let day = t.div_euclid(USECS_PER_DAY);
        let usecs = t.rem_euclid(USECS_PER_DAY);
        let (y, m, d) = civil_from_days(day + UNIX_TO_PG_DAYS);
        let secs = usecs / 1_000_000;
        let mut s = format!(
            "{:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
            if y > 0 { y } else { 1 - y },
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        );
        if usecs % 1_000_000 != 0 {
            s += format!(".{:06}", usecs % 1_000_000).trim_end_matches('0');
        }
        if zone {
            s += "+00";
        }
        if y <= 0 {
            s += " BC";
        }
        s
    }

    proptest::proptest! {
        #[test]
        fn timestamps_print_as_format_prints_them(
            t in proptest::prop_oneof![
                // Anywhere in the range; near year 1, 9999 and 10000.
                MIN_DAY * USECS_PER_DAY..TIMESTAMP_END_DAY * USECS_PER_DAY,
                -730_600 * USECS_PER_DAY..-730_000 * USECS_PER_DAY,
                2_921_900 * USECS_PER_DAY..2_922_000 * USECS_PER_DAY,
            ],
            zone in proptest::prelude::any::<bool>(),
        ) {
            proptest::prop_assert_eq!(ts(t, zone), ts_reference(t, zone));
        }
    }

    #[test]
    fn numerics_print_as_numeric_out_does() {
        // 12345.678 (scale 3): digits 1 2345 6780, weight 1.
        assert_eq!(num(3, 1, 0, 3, &[1, 2345, 6780]), "12345.678");
        assert_eq!(num(3, 1, 0x4000, 5, &[1, 2345, 6780]), "-12345.67800");
        // 0.0001 (scale 4): digit 1 at weight -1.
        assert_eq!(num(1, -1, 0, 4, &[1]), "0.0001");
        // 0.00000001: weight -2.
        assert_eq!(num(1, -2, 0, 8, &[1]), "0.00000001");
        assert_eq!(num(0, 0, 0, 0, &[]), "0");
        assert_eq!(num(0, 0, 0, 2, &[]), "0.00");
        // 10000 × 10000: trailing zero groups are implied.
        assert_eq!(num(1, 2, 0, 0, &[1]), "100000000");
        assert_eq!(num(0, 0, 0xC000, 0, &[]), "NaN");
        assert_eq!(num(0, 0, 0xD000, 0, &[]), "Infinity");
        assert_eq!(num(0, 0, 0xF000, 0, &[]), "-Infinity");
    }

    #[test]
    fn malformed_numerics_are_refused() {
        let mut out = Vec::new();
        for bad in [
            &[0u8, 1, 0, 0, 0, 0, 0, 0][..], // one digit announced, none there
            &[0, 0, 0, 0, 0x12, 0x34, 0, 0], // unknown sign
            &[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10], // digit 10000
            &[0, 0, 0, 0, 0, 0, 0x80, 0],    // negative scale
            &[0, 0, 0, 0, 0, 0, 0],          // short
            &[0, 1, 0, 0, 0xC0, 0, 0, 0, 0, 1], // NaN with digits
        ] {
            assert!(numeric(bad, &mut out).is_err(), "{bad:?}");
        }
    }

    fn ts(t: i64, zone: bool) -> String {
        let mut out = Vec::new();
        timestamp(&t.to_be_bytes(), zone, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn timestamps_dates_and_times_print_as_postgresql_does() {
        assert_eq!(ts(0, false), "2000-01-01 00:00:00");
        assert_eq!(ts(0, true), "2000-01-01 00:00:00+00");
        assert_eq!(ts(-1, false), "1999-12-31 23:59:59.999999");
        assert_eq!(ts(500_000, true), "2000-01-01 00:00:00.5+00");
        assert_eq!(ts(i64::MAX, true), "infinity");
        assert_eq!(ts(i64::MIN, false), "-infinity");
        // 0001-01-01 BC: day -730485 from 2000-01-01 (year 0).
        assert_eq!(
            ts(-730_485 * USECS_PER_DAY, true),
            "0001-01-01 00:00:00+00 BC"
        );
        let mut out = Vec::new();
        date(&0i32.to_be_bytes(), &mut out).unwrap();
        date(&(-730_485i32).to_be_bytes(), &mut out).unwrap();
        time(&86_399_999_999i64.to_be_bytes(), &mut out).unwrap();
        time(&USECS_PER_DAY.to_be_bytes(), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2000-01-010001-01-01 BC23:59:59.99999924:00:00"
        );
        for bad in [USECS_PER_DAY + 1, -1] {
            assert!(time(&bad.to_be_bytes(), &mut Vec::new()).is_err());
        }
        assert!(date(&[0, 0], &mut Vec::new()).is_err());
        assert!(
            timestamp(
                &(-3_000_000 * USECS_PER_DAY).to_be_bytes(),
                true,
                &mut Vec::new()
            )
            .is_err()
        );
    }
}
