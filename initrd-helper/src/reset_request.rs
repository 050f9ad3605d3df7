//! A factory reset requested from the running system through the EFI
//! variable systemd 258 defines (`systemd-factory-reset request`):
//! `FactoryResetRequest` under systemd's vendor GUID, a NUL-terminated
//! UTF-16LE JSON object `{"osReleaseId", "osReleaseImageId", "bootId", ...}`
//! after efivarfs' 4 attribute bytes. As in systemd's initrd, a request
//! counts when it names this OS (the initrd's os-release `ID=`, and
//! `IMAGE_ID=` when the initrd's release has one: dracut's has none) and
//! was made in another boot (the requesting boot's ID is not this one).

use serde::Serialize;

/// The variable's efivarfs file name.
pub const VAR: &str = "FactoryResetRequest-8cf2644b-4b0b-428f-9387-6d876050dc67";
/// Largest variable read (a request is ~200 bytes).
pub const MAX_VAR: u64 = 4096;
/// efivarfs attributes: non-volatile, boot-service and runtime access.
const ATTRS: u32 = 0x7;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EfiRequest {
    pub os_id: String,
    pub image_id: Option<String>,
    /// The requesting boot's ID, 32 lower-case hex digits.
    pub boot_id: String,
}

impl EfiRequest {
    /// The ID the reset is recorded under (once per request).
    pub fn reset_id(&self) -> String {
        format!("efi:{}", self.boot_id)
    }
}

/// A boot ID in either form (`/proc/sys/kernel/random/boot_id` has dashes,
/// systemd's JSON none) as 32 lower-case hex digits.
pub fn normalize_id(s: &str) -> Option<String> {
    let hex: String = s.trim().chars().filter(|&c| c != '-').collect();
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Parses the efivarfs file's bytes.
pub fn parse(var: &[u8]) -> Result<EfiRequest, String> {
    if var.len() as u64 > MAX_VAR {
        return Err(format!("{} bytes, more than {MAX_VAR}", var.len()));
    }
    let body = var.get(4..).ok_or("shorter than its attributes")?;
    if body.len() % 2 != 0 {
        return Err("not UTF-16 (odd length)".into());
    }
    let units: Vec<u16> = body
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let text = String::from_utf16(&units).map_err(|_| "not UTF-16".to_string())?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(short);
    let os_id = field("osReleaseId").ok_or("no osReleaseId")?;
    let boot_id = field("bootId")
        .as_deref()
        .and_then(normalize_id)
        .ok_or("no bootId of 32 hex digits")?;
    Ok(EfiRequest {
        os_id,
        image_id: field("osReleaseImageId"),
        boot_id,
    })
}

/// `KEY=` of an os-release file (quotes removed).
pub fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
        .filter(|v| !v.is_empty())
}

/// Why a well-formed request does not apply to this boot, or `None`.
pub fn not_for_us(
    r: &EfiRequest,
    os_id: Option<&str>,
    image_id: Option<&str>,
    boot_id: Option<&str>,
) -> Option<String> {
    let image_differs = image_id.is_some() && r.image_id.as_deref() != image_id;
    if Some(r.os_id.as_str()) != os_id || image_differs {
        return Some(format!(
            "it is for os-release ID={} IMAGE_ID={}, this boot is ID={} IMAGE_ID={}",
            r.os_id,
            r.image_id.as_deref().unwrap_or("-"),
            os_id.unwrap_or("-"),
            image_id.unwrap_or("-")
        ));
    }
    match boot_id.and_then(normalize_id) {
        Some(now) if now == r.boot_id => {
            Some("it was made in this boot (it is for the next one)".into())
        }
        Some(_) => None,
        None => Some("this boot's ID is unknown".into()),
    }
}

/// The variable's bytes for a request (what `systemd-factory-reset
/// request` writes), for `initrd-helper request-reset` and tests.
pub fn encode(os_id: &str, image_id: Option<&str>, boot_id: &str) -> Vec<u8> {
    let mut v = serde_json::json!({ "osReleaseId": os_id, "bootId": boot_id });
    if let Some(i) = image_id {
        v["osReleaseImageId"] = i.into();
    }
    let mut out = ATTRS.to_le_bytes().to_vec();
    for u in v.to_string().encode_utf16().chain([0]) {
        out.extend_from_slice(&u.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: &str = "0f3c6a2e9d8b4c1aa5e7f0123456789a";

    #[test]
    fn a_request_as_systemd_writes_it_parses() {
        // systemd-factory-reset request: extra fields, bootId without dashes.
        let json = format!(
            r#"{{"osReleaseId":"debian","osReleaseVersionId":"12","osReleaseImageId":"appliance","bootId":"{BOOT}"}}"#
        );
        let mut var = ATTRS.to_le_bytes().to_vec();
        json.encode_utf16()
            .chain([0])
            .for_each(|u| var.extend_from_slice(&u.to_le_bytes()));
        let r = parse(&var).unwrap();
        assert_eq!(
            r,
            EfiRequest {
                os_id: "debian".into(),
                image_id: Some("appliance".into()),
                boot_id: BOOT.into()
            }
        );
        assert_eq!(
            parse(&encode("debian", Some("appliance"), BOOT)).unwrap(),
            r
        );
        assert_eq!(r.reset_id(), format!("efi:{BOOT}"));
    }

    #[test]
    fn it_applies_to_this_os_in_a_later_boot_only() {
        let r = parse(&encode("debian", Some("appliance"), BOOT)).unwrap();
        let other = "11111111-2222-3333-4444-555555555555";
        assert_eq!(
            not_for_us(&r, Some("debian"), Some("appliance"), Some(other)),
            None
        );
        let dashed = "0f3c6a2e-9d8b-4c1a-a5e7-f0123456789a";
        assert!(
            not_for_us(&r, Some("debian"), Some("appliance"), Some(dashed))
                .unwrap()
                .contains("this boot")
        );
        assert!(
            not_for_us(&r, Some("fedora"), Some("appliance"), Some(other))
                .unwrap()
                .contains("ID=debian")
        );
        // dracut's initrd-release has no IMAGE_ID: only ID= is compared.
        assert_eq!(not_for_us(&r, Some("debian"), None, Some(other)), None);
        assert!(not_for_us(&r, Some("debian"), Some("other"), Some(other)).is_some());
        assert!(not_for_us(&r, Some("debian"), Some("appliance"), None).is_some());
    }

    /// The stage-2 request and the initrd's reading of it, on a temp root.
    #[test]
    fn a_request_written_by_request_reset_is_read_back() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        assert!(crate::sys::request_efi_reset(r)
            .unwrap_err()
            .contains("not an EFI boot"));
        for (p, text) in [
            ("sys/firmware/efi/efivars/.keep", ""),
            ("etc/os-release", "ID=debian\nIMAGE_ID=appliance\n"),
            (
                "proc/sys/kernel/random/boot_id",
                "0f3c6a2e-9d8b-4c1a-a5e7-f0123456789a\n",
            ),
        ] {
            let p = r.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        crate::sys::request_efi_reset(r).unwrap();
        let f = crate::sys::efi_reset(r);
        let req = f.request.clone().unwrap().unwrap();
        assert_eq!(req.boot_id, BOOT);
        assert_eq!(req.image_id.as_deref(), Some("appliance"));
        // Read in the same boot, it is for the next one.
        let why = not_for_us(
            &req,
            f.os_id.as_deref(),
            f.image_id.as_deref(),
            f.boot_id.as_deref(),
        );
        assert!(why.unwrap().contains("this boot"));
        assert!(crate::sys::clear_efi_reset(r).is_ok_and(|gone| gone));
        assert!(crate::sys::efi_reset(r).request.is_none());
        assert!(crate::sys::clear_efi_reset(r).is_ok_and(|gone| !gone));
    }

    #[test]
    fn os_release_fields() {
        let t = "NAME=\"Debian\"\nID=debian\nIMAGE_ID='appliance'\nID_LIKE=x\n";
        assert_eq!(os_release_field(t, "ID").as_deref(), Some("debian"));
        assert_eq!(
            os_release_field(t, "IMAGE_ID").as_deref(),
            Some("appliance")
        );
        assert_eq!(os_release_field(t, "VERSION_ID"), None);
    }

    #[test]
    fn malformed_variables_are_named_not_trusted() {
        for (bytes, want) in [
            (vec![7, 0], "shorter"),
            (vec![7, 0, 0, 0, b'{'], "odd"),
            (encode("debian", None, "xyz"), "bootId"),
            (vec![0u8; 5000], "more than"),
        ] {
            let e = parse(&bytes).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        let mut no_os = ATTRS.to_le_bytes().to_vec();
        format!(r#"{{"bootId":"{BOOT}"}}"#)
            .encode_utf16()
            .for_each(|u| no_os.extend_from_slice(&u.to_le_bytes()));
        assert!(parse(&no_os).unwrap_err().contains("osReleaseId"));
    }
}
