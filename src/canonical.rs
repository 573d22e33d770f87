//! A canonical text of a JSON value, for digests that must not depend on how the sender
//! serialised it: in the manner of RFC 8785 (JCS), object members sorted by the UTF-16 code
//! units of their names (a repeated name by its last value, as the gateway reads bodies
//! elsewhere), no whitespace, strings with the fewest escapes (`"\u0041"` is `"A"`), and
//! numbers by their exact decimal value (`1`, `1.0`, `10e-1` alike). Unlike RFC 8785, a number
//! is never rounded to a double, so that two large integer ids stay two. Only digests read
//! this text; payloads travel byte for byte.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

/// Appends the canonical text of the object `fields` to `out`.
pub fn object(fields: &BTreeMap<String, &RawValue>, out: &mut Vec<u8>) {
    let mut names: Vec<&String> = fields.keys().collect();
    names.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
    out.push(b'{');
    for (n, name) in names.into_iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        string(name, out);
        out.push(b':');
        value(fields[name], out);
    }
    out.push(b'}');
}

/// Appends the canonical text of the JSON value `raw` to `out`. A value serde_json takes as
/// JSON text but not as data (a lone surrogate escape) is written as it came.
pub fn value(raw: &RawValue, out: &mut Vec<u8>) {
    let text = raw.get().trim_matches([' ', '\t', '\n', '\r']);
    match text.as_bytes().first() {
        Some(b'{') => match serde_json::from_str::<BTreeMap<String, &RawValue>>(text) {
            Ok(fields) => object(&fields, out),
            Err(_) => out.extend_from_slice(text.as_bytes()),
        },
        Some(b'[') => match serde_json::from_str::<Vec<&RawValue>>(text) {
            Ok(items) => {
                out.push(b'[');
                for (n, item) in items.into_iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    value(item, out);
                }
                out.push(b']');
            }
            Err(_) => out.extend_from_slice(text.as_bytes()),
        },
        Some(b'"') => match serde_json::from_str::<String>(text) {
            Ok(decoded) => string(&decoded, out),
            Err(_) => out.extend_from_slice(text.as_bytes()),
        },
        Some(b'-' | b'0'..=b'9') => number(text, out),
        _ => out.extend_from_slice(text.as_bytes()),
    }
}

/// A string with serde_json's escapes: `"` and `\`, control characters, nothing else.
fn string(text: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, text).expect("writing a string to a Vec cannot fail");
}

/// A JSON number as `[-]D[eE]`: `D` its significant digits (no leading or trailing zero), `E`
/// the power of ten (left out when 0); zero is `0` whatever its sign. A number whose exponent
/// does not fit 64 bits is written as it came.
fn number(text: &str, out: &mut Vec<u8>) {
    match decimal(text) {
        Some(canonical) => out.extend_from_slice(canonical.as_bytes()),
        None => out.extend_from_slice(text.as_bytes()),
    }
}

/// The value of a JSON number that is a whole number from 0 to `u64::MAX`, however it is
/// written (`20`, `20.0`, `2e1`): what the canonical form takes as the same number.
pub fn whole(raw: &RawValue) -> Option<u64> {
    let canonical = decimal(raw.get())?;
    let (digits, zeros) = match canonical.split_once('e') {
        Some((digits, exponent)) => (digits, exponent.parse::<u32>().ok()?),
        None => (canonical.as_str(), 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(10u64.checked_pow(zeros)?)
}

fn decimal(text: &str) -> Option<String> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, exponent.parse::<i64>().ok()?),
        None => (unsigned, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = [whole, fraction].concat();
    let mut exponent = exponent.checked_sub(i64::try_from(fraction.len()).ok()?)?;
    let significant = digits.trim_start_matches('0');
    let trimmed = significant.trim_end_matches('0');
    if trimmed.is_empty() {
        return Some("0".into());
    }
    exponent = exponent.checked_add(i64::try_from(significant.len() - trimmed.len()).ok()?)?;
    let sign = if negative { "-" } else { "" };
    Some(if exponent == 0 { format!("{sign}{trimmed}") } else { format!("{sign}{trimmed}e{exponent}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(text: &str) -> String {
        let raw: &RawValue = serde_json::from_str(text).unwrap();
        let mut out = Vec::new();
        value(raw, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn one_value_one_text_however_it_was_written() {
        let forms = [
            r#"{"b":[1,"x",true,null],"a":{"d":2,"c":"é"}}"#,
            "{ \"a\" : { \"c\" : \"\\u00e9\" , \"d\" : 2.0 } ,\n\t\"b\" : [ 1e0 , \"\\u0078\" , true , null ] }",
            r#"{"a":{"d":20e-1,"c":"é","c":"é"},"b":[0.1e1,"x",true,null]}"#,
        ];
        for form in forms {
            assert_eq!(canonical(form), r#"{"a":{"c":"é","d":2},"b":[1,"x",true,null]}"#, "{form}");
        }
    }

    #[test]
    fn whole_numbers_are_read_however_they_are_written() {
        let whole = |text: &str| super::whole(&RawValue::from_string(text.to_owned()).unwrap());
        for text in ["1703731478", "1703731478.0", "1.703731478e9", "17037314780e-1", "1703731478000E-3"] {
            assert_eq!(whole(text), Some(1_703_731_478), "{text}");
        }
        assert_eq!((whole("0"), whole("-0"), whole("18446744073709551615")), (Some(0), Some(0), Some(u64::MAX)));
        for text in ["1.5", "-1", "18446744073709551616", "1e20", "1e-1"] {
            assert_eq!(whole(text), None, "{text}");
        }
    }

    #[test]
    fn numbers_are_their_exact_value() {
        for (text, expected) in [
            ("0", "0"),
            ("-0", "0"),
            ("0.000", "0"),
            ("100", "1e2"),
            ("1.5", "15e-1"),
            ("-0.015E+2", "-15e-1"),
            ("12345678901234567890", "1234567890123456789e1"),
            ("12345678901234567891", "12345678901234567891"),
            ("1e99999999999999999999", "1e99999999999999999999"),
        ] {
            assert_eq!(canonical(text), expected, "{text}");
        }
    }

    #[test]
    fn strings_keep_their_characters_and_escape_only_what_json_must() {
        assert_eq!(canonical(r#""\/\u0022\n\ud83d\ude00""#), "\"/\\\"\\n😀\"");
        assert_eq!(canonical(r#""\ud800""#), r#""\ud800""#, "a lone surrogate as it came");
        // Members by UTF-16 code units, as RFC 8785 sorts them: U+FF61 after U+1F600's surrogates.
        assert_eq!(canonical(r#"{"｡":1,"😀":2}"#), r#"{"😀":2,"｡":1}"#);
    }
}
