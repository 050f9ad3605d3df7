//! Parsing /proc/self/mountinfo, so steps can tell whether their mount
//! already holds (idempotency) without touching anything.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub target: String,
    pub fstype: String,
    pub source: String,
    pub options: String,
}

/// Undoes the kernel's octal escapes (`\040` for space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) => {
                out.push(
                    d.iter()
                        .fold(0u8, |a, c| a.wrapping_mul(8).wrapping_add(c - b'0')),
                );
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let l: Vec<&str> = left.split(' ').collect();
    let r: Vec<&str> = right.split(' ').collect();
    Some(MountEntry {
        target: unescape(l.get(4)?),
        options: l.get(5)?.to_string(),
        fstype: r.first()?.to_string(),
        source: unescape(r.get(1)?),
    })
}

pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// The topmost mount at `target`, if any (later lines stack on earlier ones).
pub fn find<'a>(mounts: &'a [MountEntry], target: &str) -> Option<&'a MountEntry> {
    let target = target.trim_end_matches('/');
    mounts.iter().rev().find(|m| m.target == target)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / / rw,relatime shared:1 - tmpfs rootfs rw
36 22 254:2 / /sysroot ro,relatime shared:2 - ext4 /dev/vda2 ro
37 36 0:30 / /sysroot/etc rw,relatime shared:3 - overlay overlay rw,lowerdir=/sysroot/etc
38 22 0:31 / /mnt/a\\040b rw - tmpfs tmpfs rw
bogus line
";

    #[test]
    fn parses_and_finds_topmost() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 4);
        let r = find(&m, "/sysroot/").unwrap();
        assert_eq!(
            (r.fstype.as_str(), r.source.as_str()),
            ("ext4", "/dev/vda2")
        );
        assert_eq!(r.options, "ro,relatime");
        assert_eq!(find(&m, "/sysroot/etc").unwrap().fstype, "overlay");
        assert_eq!(find(&m, "/mnt/a b").unwrap().fstype, "tmpfs");
        assert!(find(&m, "/nope").is_none());
    }
}
