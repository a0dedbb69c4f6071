//! Field-level validation results, shaped like `google.rpc.BadRequest`.

use crate::hetu::{contains_hetu, is_invisible};

/// One field that is wrong, and how to fix it. The description never quotes the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path in the request, e.g. `consent.evidence_ref`.
    pub field: String,
    /// What is wrong and what is expected.
    pub description: String,
}

/// Every violation found in one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations(pub Vec<FieldViolation>);

impl Violations {
    /// Records that `field` is wrong.
    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.to_owned(),
            description: description.into(),
        });
    }

    /// `Ok(value)` when nothing was recorded.
    pub fn into_result<T>(self, value: impl FnOnce() -> T) -> Result<T, Violations> {
        if self.0.is_empty() {
            Ok(value())
        } else {
            Err(self)
        }
    }

    /// Whether `field` was reported.
    pub fn names(&self, field: &str) -> bool {
        self.0.iter().any(|v| v.field == field)
    }
}

/// Checks a text field that may be stored or cross to a recipient: `min..=max` characters,
/// printable, and with no identity code inside. Records a violation and returns `false` when
/// it fails.
pub fn check_text(v: &mut Violations, field: &str, value: &str, min: usize, max: usize) -> bool {
    let len = value.chars().count();
    let problem = if len < min {
        Some(if min == 1 {
            "is required".to_owned()
        } else {
            format!("must be at least {min} characters")
        })
    } else if len > max {
        Some(format!("must be at most {max} characters"))
    } else if value.chars().any(char::is_control) {
        Some("must not contain control characters".to_owned())
    } else if value.chars().any(is_invisible) {
        // Zero-width, bidirectional and other layout characters make a value read differently
        // from what it is (and can hide an identity code from a reader).
        Some(
            "must not contain invisible or layout characters (zero-width, soft hyphen, \
             bidirectional controls, line separators)"
                .to_owned(),
        )
    } else if min > 0 && value.trim().is_empty() {
        Some("must not be only spaces".to_owned())
    } else if contains_hetu(value) {
        Some("must not contain a personal identity code".to_owned())
    } else {
        None
    };
    match problem {
        Some(p) => {
            v.add(field, p);
            false
        }
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_checks_name_the_field_and_never_quote_the_value() {
        let mut v = Violations::default();
        check_text(&mut v, "office", "East 010594Y9032", 1, 100);
        check_text(&mut v, "ref", "", 1, 10);
        check_text(&mut v, "long", "abcdef", 1, 3);
        check_text(&mut v, "ctl", "a\u{0}b", 1, 3);
        check_text(&mut v, "bidi", "Kallio \u{202E}ecivres", 1, 30);
        check_text(&mut v, "zwsp", "a\u{200B}b", 1, 30);
        check_text(&mut v, "blank", "   ", 1, 30);
        assert_eq!(v.0.len(), 7);
        for field in ["office", "ref", "long", "ctl", "bidi", "zwsp", "blank"] {
            assert!(v.names(field), "{field}");
        }
        let mut ok = Violations::default();
        assert!(check_text(&mut ok, "office", "Kallio, 2. krs (itä)", 1, 30));
        assert!(v.0.iter().all(|x| !x.description.contains("010594")));
    }
}
