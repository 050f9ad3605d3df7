//! The factory-reset decision for an existing data volume, as a pure
//! function: the data step calls it once it knows whether the volume opened
//! and which request the volume says it last carried out; `plan` states the
//! same rule, and unit tests reach every case.

/// What the data step does with an existing volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetDecision {
    /// No request: keep the volume, and forget the last request carried out
    /// (so the next request, even with the same ID, resets again).
    KeepAndRearm,
    /// The volume did not open and no reset was asked for: the open error stands.
    Fail,
    /// This request was carried out on an earlier boot: keep the volume.
    AlreadyDone,
    /// Erase and provision anew (the request is new).
    Reset,
    /// Erase and provision anew without the once-per-request check: the
    /// volume cannot be opened to read it, and a reset was asked for.
    ResetUnopenable,
}

/// `request`: this boot's reset request ID; `opened`: whether the volume
/// opened; `done`: the ID recorded on the volume by the last reset.
pub fn decide(request: Option<&str>, opened: bool, done: Option<&str>) -> ResetDecision {
    match (request, opened) {
        (None, true) => ResetDecision::KeepAndRearm,
        (None, false) => ResetDecision::Fail,
        (Some(_), false) => ResetDecision::ResetUnopenable,
        (Some(id), true) if done.map(str::trim) == Some(id) => ResetDecision::AlreadyDone,
        (Some(_), true) => ResetDecision::Reset,
    }
}

/// The rule in words, for the plan line.
pub const RULE: &str = "factory reset requested: erased and provisioned anew unless the volume \
     records this request as done (then kept); a volume that does not open is erased";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case() {
        use ResetDecision::*;
        assert_eq!(decide(None, true, None), KeepAndRearm);
        assert_eq!(decide(None, true, Some("x")), KeepAndRearm);
        assert_eq!(decide(None, false, None), Fail);
        assert_eq!(decide(Some("a"), false, Some("a")), ResetUnopenable);
        assert_eq!(decide(Some("a"), true, Some("a\n")), AlreadyDone);
        assert_eq!(decide(Some("a"), true, Some("b")), Reset);
        assert_eq!(decide(Some("a"), true, None), Reset);
    }
}
