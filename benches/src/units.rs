//! Sizes: parsing `4K`, `64KiB`, `1M`, `1G` or plain bytes, and printing them back.

/// Parses a size: a number of bytes, optionally followed by `K`, `M` or `G` (powers of 1024;
/// `KiB`, `MiB`, `GiB` and `KB`-style spellings mean the same), case-insensitive.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let number: usize = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number of bytes, e.g. 4K, 1M, 1G"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("{text:?}: unknown unit {other:?} (use K, M or G)")),
    };
    number
        .checked_mul(1usize << shift)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{text:?}: must be between 1 byte and usize::MAX"))
}

/// Prints a size in the largest binary unit that divides it: `4 KiB`, `1 GiB`, `1000 B`.
pub fn format_size(bytes: usize) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_trip() {
        for (text, bytes) in [
            ("4K", 4096),
            ("64kib", 65536),
            ("1M", 1 << 20),
            ("16MiB", 16 << 20),
            ("1G", 1 << 30),
            ("1000", 1000),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        assert_eq!(format_size(4096), "4 KiB");
        assert_eq!(format_size(256 << 20), "256 MiB");
        assert_eq!(format_size(1 << 30), "1 GiB");
        assert_eq!(format_size(1000), "1000 B");
    }

    #[test]
    fn bad_sizes_are_refused() {
        for text in ["", "K", "0", "4T", "-1", "1.5M"] {
            assert!(parse_size(text).is_err(), "{text}");
        }
    }
}
