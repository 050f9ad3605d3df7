//! The bad-input matrix: malformed command lines, configs, partition tables,
//! disk contents and tokens, each planned the way `initrd-helper plan
//! --disk` and the boot do. Every case must end in one line (no newline,
//! a bounded length) that names the real cause, with the disk image
//! byte-identical afterwards. README's failure-mode table lists the same
//! causes.

use crate::dps;
use crate::gpt::tests::{edit_header, image};
use crate::guid::Guid;
use crate::inputs;
use crate::verity_sb::tests::superblock;
use std::path::Path;

const HASH: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a0123456789abcdef0123456789abcdef";
const SECTORS: u64 = 16384;
/// The longest error line allowed (values from outside are cut).
const MAX_LINE: usize = 700;

struct Case {
    name: &'static str,
    cmdline: String,
    config: &'static str,
    disk: fn(&mut Vec<u8>),
    needle: &'static str,
}

/// ESP, root A (ext4 magic) + its verity partner by `HASH`, and a blank data partition.
fn good_disk() -> Vec<u8> {
    let (du, hu) = crate::plan::derived_uuids(HASH).unwrap();
    let mut img = image(
        &[
            (dps::ESP, Guid::from_bytes([1; 16]), 2048, 4095, "esp"),
            (dps::ROOT_X86_64, du, 4096, 6143, "appliance_1"),
            (dps::ROOT_VERITY_X86_64, hu, 6144, 8191, "appliance_1"),
            (dps::VAR, Guid::from_bytes([4; 16]), 8192, 12287, "data"),
        ],
        SECTORS,
    );
    put(&mut img, 4096 * 512 + 1080, &[0x53, 0xEF]);
    put(&mut img, HASH_AT, &superblock(256));
    img
}

/// Where the hash partition (and its verity superblock) starts.
const HASH_AT: usize = 6144 * 512;

fn put(img: &mut [u8], at: usize, b: &[u8]) {
    img[at..at + b.len()].copy_from_slice(b);
}

fn both_headers(img: &mut [u8], f: impl Fn(&mut [u8])) {
    let last = img.len() / 512 - 1;
    edit_header(img, 1, &f);
    edit_header(img, last, &f);
}

fn with_parts(img: &mut Vec<u8>, parts: &[(Guid, Guid, u64, u64, &str)]) {
    *img = image(parts, SECTORS);
}

fn ok(_: &mut Vec<u8>) {}

fn case(
    name: &'static str,
    cmdline: &str,
    config: &'static str,
    disk: fn(&mut Vec<u8>),
    needle: &'static str,
) -> Case {
    Case {
        name,
        cmdline: cmdline.to_string(),
        config,
        disk,
        needle,
    }
}

fn rh() -> String {
    format!("roothash={HASH}")
}

fn cmdline_cases() -> Vec<Case> {
    let with = |extra: &str| format!("{} {extra}", rh());
    vec![
        case(
            "disk not a GUID",
            &with("initrd_helper.disk=banana"),
            "",
            ok,
            "initrd_helper.disk",
        ),
        case("roothash not hex", "roothash=xyz", "", ok, "roothash"),
        case(
            "roothash odd length",
            &format!("roothash={HASH}0"),
            "",
            ok,
            "roothash",
        ),
        case(
            "roothash too short",
            "roothash=5a5a5a5a",
            "",
            ok,
            "roothash",
        ),
        case(
            "factory reset not a bool",
            &with("systemd.factory_reset=maybe"),
            "",
            ok,
            "systemd.factory_reset",
        ),
        case(
            "factory reset ID bad",
            &with("initrd_helper.factory_reset=a/b"),
            "",
            ok,
            "initrd_helper.factory_reset",
        ),
        case(
            "re-seal not a bool",
            &with("initrd_helper.reseal_after_recovery=maybe"),
            "",
            ok,
            "initrd_helper.reseal_after_recovery",
        ),
        case(
            "verity geometry option",
            &with("systemd.verity_root_options=hash-offset=4096"),
            "",
            ok,
            "hash-offset",
        ),
        case(
            "verity conflicting actions",
            &with("systemd.verity_root_options=panic-on-corruption,restart-on-corruption"),
            "",
            ok,
            "corruption",
        ),
        case(
            "verity unknown option",
            &with("systemd.verity_root_options=frobnicate"),
            "",
            ok,
            "frobnicate",
        ),
        case(
            "verity signature bad base64",
            &with("systemd.verity_root_options=root-hash-signature=base64:Zm9v=="),
            "",
            ok,
            "base64",
        ),
        case(
            "verity signature not DER",
            &with("systemd.verity_root_options=root-hash-signature=base64:aGVsbG8="),
            "",
            ok,
            "not a DER-encoded PKCS#7",
        ),
        case(
            "verity signature truncated",
            &with("systemd.verity_root_options=root-hash-signature=base64:MIIBAAcH"),
            "",
            ok,
            "truncated",
        ),
        case(
            "verity signature empty",
            &with("systemd.verity_root_options=root-hash-signature=base64:"),
            "",
            ok,
            "is empty",
        ),
        case(
            "verity data device form",
            &with("systemd.verity_root_data=LABEL=x"),
            "",
            ok,
            "systemd.verity_root_data",
        ),
        case(
            "verity not a bool",
            &with("systemd.verity=perhaps"),
            "",
            ok,
            "systemd.verity",
        ),
        case(
            "50 KB roothash",
            &format!("roothash={}", "a".repeat(50_000)),
            "",
            ok,
            "roothash",
        ),
    ]
}

fn config_cases() -> Vec<Case> {
    let c = |name, config, needle| case(name, &rh(), config, ok, needle);
    vec![
        c(
            "unknown key",
            "[data]\ncolour = \"blue\"\n",
            "unknown field",
        ),
        c("unknown section", "[frobnicate]\n", "unknown field"),
        c(
            "encryption value",
            "[data]\nencryption = \"rot13\"\n",
            "rot13",
        ),
        c("PCR out of range", "[data]\npcrs = [24]\n", "pcrs"),
        c(
            "no signed PCRs",
            "[data]\nsigned_pcrs = []\n",
            "data.signed_pcrs = []: expected 1 to 24 PCR numbers",
        ),
        c(
            "relative PCR key path",
            "[data]\npcr_public_key = \"key.pem\"\n",
            "must be an absolute path",
        ),
        c(
            "negative timeout",
            "[devices]\ntimeout_secs = -1\n",
            "timeout_secs",
        ),
        c(
            "unverified value",
            "[root]\nunverified = \"yes\"\n",
            "unverified",
        ),
        c("not TOML", "this is not toml", "config.toml"),
        c(
            "partition type not a GUID",
            "[data]\npartition_type = \"var\"\n",
            "partition_type",
        ),
        c("disk not a GUID", "[devices]\ndisk = \"banana\"\n", "disk"),
        c(
            "no recovery tries",
            "[data]\nrecovery_tries = 0\n",
            "data.recovery_tries = 0: expected 1 to 10",
        ),
    ]
}

fn gpt_cases() -> Vec<Case> {
    let c = |name, disk, needle| case(name, &rh(), "", disk, needle);
    vec![
        c(
            "both header CRCs bad",
            |d| {
                let n = d.len();
                d[512 + 30] ^= 0xff;
                d[n - 512 + 30] ^= 0xff;
            },
            "header CRC mismatch",
        ),
        c(
            "both entry arrays bad",
            |d| {
                let n = d.len();
                d[2 * 512 + 40] ^= 0xff;
                d[n - 33 * 512 + 40] ^= 0xff;
            },
            "entry array CRC mismatch",
        ),
        c(
            "4 GiB entry array",
            |d| {
                both_headers(d, |h| {
                    h[80..84].copy_from_slice(&(1u32 << 22).to_le_bytes());
                    h[84..88].copy_from_slice(&1024u32.to_le_bytes());
                })
            },
            "entry count or size",
        ),
        c(
            "entry size not a power of two",
            |d| both_headers(d, |h| h[84..88].copy_from_slice(&200u32.to_le_bytes())),
            "entry count or size",
        ),
        c(
            "header elsewhere than it says",
            |d| both_headers(d, |h| h[24..32].copy_from_slice(&7u64.to_le_bytes())),
            "CurrentLBA",
        ),
        c(
            "entry array past the disk",
            |d| both_headers(d, |h| h[72..80].copy_from_slice(&u64::MAX.to_le_bytes())),
            "entry array",
        ),
        c(
            "usable area empty",
            |d| both_headers(d, |h| h[40..48].copy_from_slice(&u64::MAX.to_le_bytes())),
            "usable area",
        ),
        c(
            "header size too small",
            |d| both_headers(d, |h| h[12..16].copy_from_slice(&20u32.to_le_bytes())),
            "header",
        ),
        c(
            "overlapping partitions",
            |d| {
                with_parts(
                    d,
                    &[
                        (dps::ROOT_X86_64, Guid::from_bytes([2; 16]), 4096, 8000, "a"),
                        (dps::VAR, Guid::from_bytes([3; 16]), 6000, 9000, "b"),
                    ],
                )
            },
            "partitions overlap",
        ),
        c(
            "partition past the disk",
            |d| {
                with_parts(
                    d,
                    &[(
                        dps::ROOT_X86_64,
                        Guid::from_bytes([2; 16]),
                        4096,
                        1 << 40,
                        "a",
                    )],
                )
            },
            "outside the usable area",
        ),
        c(
            "partition ends before it starts",
            |d| {
                with_parts(
                    d,
                    &[(dps::ROOT_X86_64, Guid::from_bytes([2; 16]), 8000, 4096, "a")],
                )
            },
            "outside the usable area",
        ),
        c(
            "truncated image",
            |d| d.truncate(10_000 * 512),
            "truncated image",
        ),
        c("no partition table", |d| d.fill(0), "no GPT signature"),
    ]
}

fn verity_cases() -> Vec<Case> {
    let c = |name, disk, needle| case(name, &rh(), "", disk, needle);
    vec![
        c(
            "hash partition without a superblock",
            |d| put(d, HASH_AT, &[0; 512]),
            "no dm-verity superblock",
        ),
        c(
            "verity superblock version 2",
            |d| put(d, HASH_AT + 8, &2u32.to_le_bytes()),
            "superblock version 2",
        ),
        c(
            "verity block size 3000",
            |d| put(d, HASH_AT + 64, &3000u32.to_le_bytes()),
            "block sizes",
        ),
        c(
            "verity salt too long",
            |d| put(d, HASH_AT + 80, &1000u16.to_le_bytes()),
            "salt",
        ),
        c(
            "verity tree larger than the data slot",
            |d| put(d, HASH_AT + 72, &(1u64 << 40).to_le_bytes()),
            "more than the data partition",
        ),
        c(
            "verity tree larger than the hash partition",
            |d| {
                put(d, HASH_AT + 68, &512u32.to_le_bytes());
                put(d, HASH_AT + 64, &512u32.to_le_bytes());
                put(d, HASH_AT + 72, &2048u64.to_le_bytes());
                // 2048 sectors of data need 128 + 8 + 1 hash blocks: shrink
                // the hash slot to 100 sectors.
                let (du, hu) = crate::plan::derived_uuids(HASH).unwrap();
                let sb = d[HASH_AT..HASH_AT + 512].to_vec();
                with_parts(
                    d,
                    &[
                        (dps::ROOT_X86_64, du, 4096, 6143, "appliance_1"),
                        (dps::ROOT_VERITY_X86_64, hu, 6144, 6243, "appliance_1"),
                    ],
                );
                put(d, 4096 * 512 + 1080, &[0x53, 0xEF]);
                put(d, HASH_AT, &sb);
            },
            "hash partition has 51200",
        ),
        c(
            "verity algorithm not text",
            |d| put(d, HASH_AT + 32, &[0xff; 8]),
            "algorithm name",
        ),
    ]
}

fn plan_cases() -> Vec<Case> {
    vec![
        case(
            "tmpfs layout with roothash=",
            &rh(),
            "[root]\nlayout = \"tmpfs\"\n",
            ok,
            "refusing to leave a verified root unused",
        ),
        case(
            "tmpfs layout without usrhash=",
            "",
            "[root]\nlayout = \"tmpfs\"\n",
            ok,
            "no usrhash= on the kernel command line",
        ),
        case(
            "usrhash matches nothing",
            &format!("usrhash={}", "ab".repeat(32)),
            "[root]\nlayout = \"tmpfs\"\n",
            ok,
            "first 128 bits of usrhash",
        ),
        case(
            "usrhash names the root slot",
            &format!("usrhash={HASH}"),
            "[root]\nlayout = \"tmpfs\"\n",
            ok,
            "expected usr-x86-64",
        ),
        case(
            "roothash matches nothing",
            &format!("roothash={}", "ab".repeat(32)),
            "",
            ok,
            "first 128 bits of roothash",
        ),
        case(
            "hash partition missing",
            &rh(),
            "",
            |d| {
                let (du, _) = crate::plan::derived_uuids(HASH).unwrap();
                with_parts(d, &[(dps::ROOT_X86_64, du, 4096, 6143, "appliance_1")]);
                put(d, 4096 * 512 + 1080, &[0x53, 0xEF]);
            },
            "last 128 bits of roothash",
        ),
        case(
            "derived partition of the wrong type",
            &rh(),
            "",
            |d| {
                let (du, hu) = crate::plan::derived_uuids(HASH).unwrap();
                with_parts(
                    d,
                    &[
                        (dps::ROOT_X86_64, du, 4096, 6143, "appliance_1"),
                        (dps::VAR, hu, 6144, 8191, "appliance_1"),
                    ],
                );
            },
            "expected root-x86-64-verity",
        ),
        case(
            "root slot without a file system",
            &rh(),
            "",
            |d| put(d, 4096 * 512 + 1080, &[0, 0]),
            "no supported file system",
        ),
        case(
            "data partition holds swap",
            &rh(),
            "",
            |d| {
                put(d, 8192 * 512 + 1024, &[1, 0, 0, 0, 0xff, 1, 0, 0]);
                put(d, 8192 * 512 + 4086, b"SWAPSPACE2");
            },
            "holds swap, not crypto_LUKS",
        ),
        case(
            "data partition holds LUKS, encryption none",
            &rh(),
            "[data]\nencryption = \"none\"\n",
            |d| {
                put(d, 8192 * 512, b"LUKS\xba\xbe\0\x01");
            },
            "holds crypto_LUKS, not ext4",
        ),
        case(
            "two data partitions",
            &rh(),
            "",
            |d| {
                let (du, hu) = crate::plan::derived_uuids(HASH).unwrap();
                with_parts(
                    d,
                    &[
                        (dps::ROOT_X86_64, du, 4096, 6143, "appliance_1"),
                        (dps::ROOT_VERITY_X86_64, hu, 6144, 8191, "appliance_1"),
                        (dps::VAR, Guid::from_bytes([4; 16]), 8192, 10000, "data"),
                        (dps::VAR, Guid::from_bytes([5; 16]), 10001, 12000, "data2"),
                    ],
                );
                put(d, 4096 * 512 + 1080, &[0x53, 0xEF]);
                put(d, HASH_AT, &superblock(256));
            },
            "several data partitions",
        ),
        case(
            "no roothash, unverified refused",
            "console=ttyS0",
            "",
            ok,
            "refusing to mount an unverified root",
        ),
        case(
            "only empty slots",
            "console=ttyS0",
            "[root]\nunverified = \"mount-read-only\"\n",
            |d| {
                with_parts(
                    d,
                    &[(
                        dps::ROOT_X86_64,
                        Guid::from_bytes([2; 16]),
                        4096,
                        6143,
                        "_empty",
                    )],
                );
            },
            "no bootable root partition",
        ),
        case(
            "roothash given, verity off, unverified refused",
            &format!("{} systemd.verity=0", rh()),
            "",
            ok,
            "systemd.verity=0 turns roothash= off",
        ),
    ]
}

/// Runs one case on a fresh image; the error line, and whether the image
/// was left byte-identical.
fn run(c: &Case, dir: &Path) -> (Result<String, String>, bool) {
    let mut img = good_disk();
    (c.disk)(&mut img);
    let disk = dir.join("disk.img");
    let cfg = dir.join("config.toml");
    std::fs::write(&disk, &img).unwrap();
    std::fs::write(&cfg, c.config).unwrap();
    let r = inputs::load(Some(&c.cmdline), Some(&cfg), None)
        .and_then(|i| inputs::plan_with_wait(&i, std::slice::from_ref(&disk), false).map(|_| ()));
    let unchanged = std::fs::read(&disk).unwrap() == img;
    let line = match r {
        Ok(()) => Ok("planned".into()),
        Err(e) => Err(crate::inputs::error_line(&e)),
    };
    (line, unchanged)
}

fn token_cases() -> Vec<(&'static str, serde_json::Value, &'static str)> {
    use serde_json::json;
    let base = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = json!({"type": "systemd-tpm2", "keyslots": ["0"], "tpm2-blob": "AAIBAgABAw==",
            "tpm2-pcrs": [7], "tpm2-pcr-bank": "sha256", "tpm2-primary-alg": "ecc", "tpm2-pin": false});
        f(&mut v);
        v
    };
    vec![
        (
            "blob not base64",
            base(&|v| v["tpm2-blob"] = json!("%%%")),
            "tpm2-blob",
        ),
        (
            "blob with bad padding",
            base(&|v| v["tpm2-blob"] = json!("AAIBAgABAw=")),
            "tpm2-blob",
        ),
        (
            "blob truncated",
            base(&|v| v["tpm2-blob"] = json!("AAU=")),
            "TPM2B_PRIVATE",
        ),
        (
            "blob without public part",
            base(&|v| v["tpm2-blob"] = json!("AAEB")),
            "TPM2B_PUBLIC",
        ),
        (
            "PCR out of range",
            base(&|v| v["tpm2-pcrs"] = json!([99])),
            "not a PCR number",
        ),
        (
            "PCRs missing",
            base(&|v| v["tpm2-pcrs"] = json!(null)),
            "tpm2-pcrs",
        ),
        (
            "bank sha1",
            base(&|v| v["tpm2-pcr-bank"] = json!("sha1")),
            "PCR bank",
        ),
        ("PIN token", base(&|v| v["tpm2-pin"] = json!(true)), "PIN"),
        (
            "not our token type",
            base(&|v| v["type"] = json!("systemd-fido2")),
            "not a systemd-tpm2 token",
        ),
        (
            "5000-character bank",
            base(&|v| v["tpm2-pcr-bank"] = json!("x".repeat(5000))),
            "PCR bank",
        ),
    ]
}

#[test]
fn every_bad_input_ends_in_one_clear_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The good disk plans: every failure below is the case's own.
    let good = case("good", &rh(), "", ok, "");
    assert_eq!(run(&good, dir.path()).0, Ok("planned".into()));
    let cases: Vec<Case> = [
        cmdline_cases(),
        config_cases(),
        gpt_cases(),
        verity_cases(),
        plan_cases(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut n = 0;
    for c in &cases {
        let (line, unchanged) = run(c, dir.path());
        let line = line.expect_err(c.name);
        assert!(unchanged, "{}: the disk image changed", c.name);
        assert!(
            !line.contains('\n'),
            "{}: more than one line: {line}",
            c.name
        );
        assert!(
            line.len() <= MAX_LINE,
            "{}: {} characters",
            c.name,
            line.len()
        );
        assert!(
            line.contains(c.needle),
            "{}: {line:?} does not say {:?}",
            c.name,
            c.needle
        );
        n += 1;
    }
    for (name, token, needle) in token_cases() {
        let e = crate::token::parse_token(&token).expect_err(name);
        assert!(!e.contains('\n') && e.len() <= MAX_LINE, "{name}: {e}");
        assert!(e.contains(needle), "{name}: {e:?} does not say {needle:?}");
        n += 1;
    }
    eprintln!("bad-input matrix: {n} cases");
    assert!(n >= 40, "{n} cases");
}

#[test]
fn a_gpt_for_the_other_sector_size_is_named() {
    let e = crate::gpt::read_sized(&mut std::io::Cursor::new(good_disk()), 4096).unwrap_err();
    assert!(
        e.to_string()
            .contains("written for 512-byte sectors but this disk has 4096-byte"),
        "{e}"
    );
}

/// Every case, by name and the words its line must contain, for README's
/// table (checked by `readme_lists_every_case`).
pub(crate) fn table() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut rows = Vec::new();
    for (kind, cases) in [
        ("command line", cmdline_cases()),
        ("config", config_cases()),
        ("GPT", gpt_cases()),
        ("verity superblock", verity_cases()),
        ("layout", plan_cases()),
    ] {
        rows.extend(cases.into_iter().map(|c| (kind, c.name, c.needle)));
    }
    rows.extend(token_cases().into_iter().map(|(n, _, s)| ("token", n, s)));
    rows.extend(crate::bad_luks::table());
    rows
}

/// README's failure-mode table lists each case of the matrix; a missing
/// row fails with the rows to paste.
#[test]
fn readme_lists_every_case() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let missing: Vec<String> = table()
        .into_iter()
        .filter(|(kind, name, _)| !readme.contains(&format!("| {kind} | {name} |")))
        .map(|(kind, name, needle)| format!("| {kind} | {name} | `{needle}` |"))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md lacks these bad-input rows:\n{}",
        missing.join("\n")
    );
}
