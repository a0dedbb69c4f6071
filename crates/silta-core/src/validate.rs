//! Field-level validation results, shaped like `google.rpc.BadRequest`.

use crate::hetu::{find_hetu, is_invisible};

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
    /// Records that `field` is wrong. `description` says what is wrong and what is expected,
    /// without the field's name (callers see it as `field: description`), e.g. `is required`
    /// or `set subject_hetu or subject_pseudonym, not both`.
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
    } else {
        hetu_shape(value)
    };
    match problem {
        Some(p) => {
            v.add(field, p);
            false
        }
        None => true,
    }
}

/// What to tell a sender whose `value` holds something shaped like an identity code: which
/// characters, by position (1-based), never the characters themselves. `None` when it holds
/// none. See docs/api.md, "References and keys that always pass".
pub fn hetu_shape(value: &str) -> Option<String> {
    let at = find_hetu(value)?;
    Some(format!(
        "must not contain a personal identity code: characters {}–{} have the shape of an \
         identity code (a date, a century sign or separator, three digits and a check \
         character); see docs/api.md, \"References and keys that always pass\"",
        at.start + 1,
        at.end
    ))
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

    #[test]
    fn a_code_shaped_part_is_named_by_its_position_and_never_quoted() {
        let mut v = Violations::default();
        assert!(!check_text(
            &mut v,
            "tenancy_ref",
            "LEASE-010124-0001",
            1,
            64
        ));
        let said = &v.0[0].description;
        assert!(said.contains("characters 7–17 have the shape"), "{said}");
        assert!(!said.contains("010124"), "{said}");
        // Positions count the characters as sent, invisible ones included.
        let shifted = hetu_shape("Ä 05.07.37-969N").expect("a loose code");
        assert!(shifted.contains("characters 3–15 "), "{shifted}");
        assert_eq!(hetu_shape("KALLIO-12-B-34"), None);
    }

    #[test]
    fn the_reference_formats_docs_api_md_says_always_pass_do() {
        for reference in [
            "KALLIO-12-B-34",
            "LEASE-2024-0001",
            "T-2026-0042",
            "L2024A01N0001",
            "K12B345C6789",
        ] {
            assert_eq!(hetu_shape(reference), None, "{reference}");
        }
        assert!(hetu_shape("LEASE-010124-0001").is_some());
    }
}
