//! Durations as operators write them: `"90s"`, `"30m"`, `"2h"`, `"1h30m"`, `"500ms"`, `"1d"`; one parser for the fleet, cortex.toml and neuron.toml.

/// The units a duration may use, longest spelling first so that `ms` is not read as `m`.
const UNITS: [(&str, u64); 5] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)];

/// Milliseconds in `text`: one or more `<integer><unit>` parts, summed. `None` when the text is
/// not of that form, or the total does not fit 64 bits.
pub fn parse_ms(text: &str) -> Option<u64> {
    let mut rest = text;
    let mut total: u64 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, factor) = UNITS.iter().find(|(unit, _)| rest.starts_with(unit))?;
        rest = &rest[unit.len()..];
        total = total.checked_add(number.checked_mul(*factor)?)?;
    }
    Some(total)
}

/// `#[serde(with = "plans::duration")]`: a duration field of a settings file, written as above.
pub fn deserialize<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<std::time::Duration, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(deserializer)?;
    parse_ms(&text).map(std::time::Duration::from_millis).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?}; write e.g. \"500ms\", \"30s\", \"5m\" or \"1h30m\""
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::parse_ms;

    #[test]
    fn reads_every_unit_and_combinations() {
        assert_eq!(parse_ms("500ms"), Some(500));
        assert_eq!(parse_ms("90s"), Some(90_000));
        assert_eq!(parse_ms("30m"), Some(1_800_000));
        assert_eq!(parse_ms("2h"), Some(7_200_000));
        assert_eq!(parse_ms("1d"), Some(86_400_000));
        assert_eq!(parse_ms("1h30m"), Some(5_400_000));
        assert_eq!(parse_ms("1m1ms"), Some(60_001));
        assert_eq!(parse_ms("0s"), Some(0));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for text in ["", "30", "m", "1.5h", "1 h", "-1s", "1x", "1h30", "99999999999999999999d"] {
            assert_eq!(parse_ms(text), None, "{text:?}");
        }
    }
}
