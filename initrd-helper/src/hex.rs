//! Hex encoding for root hashes, GUIDs and machine IDs (no extra crate for 20 lines).

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HexError {
    #[error("odd number of hex digits")]
    OddLength,
    #[error("not a hex digit: {0:?}")]
    BadDigit(char),
}

pub fn decode(s: &str) -> Result<Vec<u8>, HexError> {
    // Count characters, not bytes: a multi-byte char must not split a pair.
    let chars: Vec<char> = s.chars().collect();
    if chars.len() % 2 != 0 {
        return Err(HexError::OddLength);
    }
    let digit = |c: char| c.to_digit(16).ok_or(HexError::BadDigit(c));
    chars
        .chunks(2)
        .map(|p| Ok((digit(p[0])? * 16 + digit(p[1])?) as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes() {
        assert_eq!(decode("00ffA0").unwrap(), vec![0, 255, 160]);
        assert_eq!(decode("abc"), Err(HexError::OddLength));
        assert_eq!(decode("zz"), Err(HexError::BadDigit('z')));
        assert_eq!(decode("é1x"), Err(HexError::OddLength));
        assert_eq!(decode("é1"), Err(HexError::BadDigit('é')));
    }
}
