//! Rent-arrears reports: validation of what a landlord sends, and minimisation of what crosses.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::hetu::{Hetu, HetuRules};
use crate::validate::{Violations, check_text};

/// Largest accepted arrears: 1 M€ in cents. Anything above is a typing error, not a debt.
pub const MAX_ARREARS_CENTS: i64 = 100_000_000;
/// Largest accepted months overdue (ten years).
pub const MAX_MONTHS_OVERDUE: u32 = 120;

/// Eviction stage of a tenancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvictionStage {
    /// No step taken.
    None,
    /// Warning given.
    Warning,
    /// Court application filed.
    CourtApplication,
    /// Court decided on eviction.
    CourtDecision,
    /// Enforcement date set by the bailiff.
    EnforcementScheduled,
}

/// Arrears generalised to a band (bounds in euros, lower inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArrearsBand {
    /// Under 500 €.
    Under500,
    /// 500 € to under 1,500 €.
    From500To1500,
    /// 1,500 € to under 5,000 €.
    From1500To5000,
    /// 5,000 € or more.
    From5000,
}

impl ArrearsBand {
    /// The band of an exact amount in cents.
    pub fn of_cents(cents: i64) -> Self {
        match cents {
            ..50_000 => ArrearsBand::Under500,
            50_000..150_000 => ArrearsBand::From500To1500,
            150_000..500_000 => ArrearsBand::From1500To5000,
            _ => ArrearsBand::From5000,
        }
    }

    /// A short label for people.
    pub fn label(self) -> &'static str {
        match self {
            ArrearsBand::Under500 => "< 500 €",
            ArrearsBand::From500To1500 => "500–1,500 €",
            ArrearsBand::From1500To5000 => "1,500–5,000 €",
            ArrearsBand::From5000 => "≥ 5,000 €",
        }
    }
}

/// A rent-arrears report as it arrives, before validation. Its `Debug` masks the identity code.
#[derive(Clone, Default)]
pub struct RentArrearsInput<'a> {
    /// Caller's idempotency key.
    pub idempotency_key: &'a str,
    /// Identity code text (never logged).
    pub hetu: &'a str,
    /// Landlord's tenancy reference.
    pub tenancy_ref: &'a str,
    /// Exact arrears in cents.
    pub arrears_cents: i64,
    /// Months overdue.
    pub months_overdue: u32,
    /// `None` when the enum value was unspecified or unknown.
    pub eviction_stage: Option<EvictionStage>,
    /// Contact office.
    pub landlord_contact_office: &'a str,
    /// Free text; validated for length, never stored or forwarded.
    pub free_text_note: &'a str,
}

impl std::fmt::Debug for RentArrearsInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RentArrearsInput")
            .field("idempotency_key", &"..")
            .field("hetu", &"***********")
            .field("arrears_cents", &self.arrears_cents)
            .field("months_overdue", &self.months_overdue)
            .field("eviction_stage", &self.eviction_stage)
            .finish_non_exhaustive()
    }
}

/// A validated rent-arrears report.
#[derive(Debug, Clone)]
pub struct RentArrearsReport {
    /// Idempotency key, `[A-Za-z0-9._:-]{1,128}`.
    pub idempotency_key: String,
    /// The tenant.
    pub hetu: Hetu,
    /// Tenancy reference (stays with silta, to route answers back).
    pub tenancy_ref: String,
    /// Exact arrears in cents.
    pub arrears_cents: i64,
    /// Months overdue.
    pub months_overdue: u32,
    /// Eviction stage.
    pub eviction_stage: EvictionStage,
    /// Contact office.
    pub landlord_contact_office: String,
}

/// Checks an idempotency key: 1–128 characters of `[A-Za-z0-9._:-]`, with no identity code
/// inside (it is stored and returned in receipts).
pub fn check_idempotency_key(v: &mut Violations, field: &str, key: &str) {
    if key.is_empty() {
        v.add(field, "is required");
    } else if crate::hetu::contains_hetu(key) {
        v.add(field, "must not contain a personal identity code");
    } else if key.len() > 128
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b))
    {
        v.add(
            field,
            "must be 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'",
        );
    }
}

/// Validates a report, collecting every problem at once.
pub fn validate_rent_arrears(
    input: &RentArrearsInput<'_>,
    rules: HetuRules,
) -> Result<RentArrearsReport, Violations> {
    let mut v = Violations::default();
    check_idempotency_key(&mut v, "idempotency_key", input.idempotency_key);
    let hetu = Hetu::parse(input.hetu, rules)
        .map_err(|e| v.add("hetu", format!("personal identity code {e}")))
        .ok();
    check_text(&mut v, "tenancy_ref", input.tenancy_ref, 1, 64);
    if !(0..=MAX_ARREARS_CENTS).contains(&input.arrears_cents) {
        v.add(
            "arrears_cents",
            format!("must be between 0 and {MAX_ARREARS_CENTS} (euro cents)"),
        );
    }
    if input.months_overdue > MAX_MONTHS_OVERDUE {
        v.add(
            "months_overdue",
            format!("must be between 0 and {MAX_MONTHS_OVERDUE}"),
        );
    }
    if input.eviction_stage.is_none() {
        v.add(
            "eviction_stage",
            "is required: use EVICTION_STAGE_NONE when no eviction step has been taken",
        );
    }
    check_text(
        &mut v,
        "landlord_contact_office",
        input.landlord_contact_office,
        1,
        100,
    );
    if input.free_text_note.chars().count() > 2000 {
        v.add("free_text_note", "must be at most 2000 characters");
    }
    match (hetu, input.eviction_stage) {
        (Some(hetu), Some(stage)) if v.0.is_empty() => Ok(RentArrearsReport {
            idempotency_key: input.idempotency_key.to_owned(),
            hetu,
            tenancy_ref: input.tenancy_ref.to_owned(),
            arrears_cents: input.arrears_cents,
            months_overdue: input.months_overdue,
            eviction_stage: stage,
            landlord_contact_office: input.landlord_contact_office.to_owned(),
        }),
        _ => Err(v),
    }
}

/// What crosses to a recipient of a rent-arrears report: exactly the fields the flow
/// declares, generalised. Recipient-specific fields (pseudonym, case reference, consent) are
/// added per recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RentArrearsAlert {
    /// `YYYY-MM` of the report's arrival (UTC).
    pub report_month: String,
    /// Arrears band.
    pub arrears_band: ArrearsBand,
    /// Months overdue.
    pub months_overdue: u32,
    /// Eviction stage.
    pub eviction_stage: EvictionStage,
    /// Contact office.
    pub landlord_contact_office: String,
}

/// Minimises a report into what crosses.
pub fn minimise(report: &RentArrearsReport, received_at: OffsetDateTime) -> RentArrearsAlert {
    RentArrearsAlert {
        report_month: month_of(received_at),
        arrears_band: ArrearsBand::of_cents(report.arrears_cents),
        months_overdue: report.months_overdue,
        eviction_stage: report.eviction_stage,
        landlord_contact_office: report.landlord_contact_office.clone(),
    }
}

/// `YYYY-MM` of a time, in UTC.
pub fn month_of(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!("{:04}-{:02}", t.year(), u8::from(t.month()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::RENT_ARREARS;

    const RULES: HetuRules = HetuRules {
        allow_temporary: true,
    };

    fn input() -> RentArrearsInput<'static> {
        RentArrearsInput {
            idempotency_key: "r-1",
            hetu: "010594Y9032",
            tenancy_ref: "T-100/2",
            arrears_cents: 123_456,
            months_overdue: 3,
            eviction_stage: Some(EvictionStage::Warning),
            landlord_contact_office: "Kallio office",
            free_text_note: "tenant said they lost their job",
        }
    }

    #[test]
    fn bands_have_the_documented_bounds() {
        let check = |c, b| assert_eq!(ArrearsBand::of_cents(c), b, "{c}");
        check(0, ArrearsBand::Under500);
        check(49_999, ArrearsBand::Under500);
        check(50_000, ArrearsBand::From500To1500);
        check(149_999, ArrearsBand::From500To1500);
        check(150_000, ArrearsBand::From1500To5000);
        check(499_999, ArrearsBand::From1500To5000);
        check(500_000, ArrearsBand::From5000);
    }

    #[test]
    fn alert_holds_exactly_the_declared_fields() {
        let report = validate_rent_arrears(&input(), RULES).expect("valid input");
        let at = time::macros::datetime!(2026-11-23 10:00 UTC);
        let alert = minimise(&report, at);
        let json = serde_json::to_value(&alert).expect("serialisable");
        let mut keys: Vec<_> = json.as_object().expect("object").keys().cloned().collect();
        let mut declared = RENT_ARREARS.field_names();
        keys.sort();
        declared.sort();
        assert_eq!(keys, declared);
        let text = json.to_string();
        for never in ["T-100/2", "1234", "lost their job", "010594"] {
            assert!(!text.contains(never), "{never} crossed: {text}");
        }
        assert_eq!(alert.report_month, "2026-11");
        assert_eq!(alert.arrears_band, ArrearsBand::From500To1500);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let bad = RentArrearsInput {
            idempotency_key: "",
            hetu: "010594Y9033",
            tenancy_ref: "",
            arrears_cents: -1,
            months_overdue: 999,
            eviction_stage: None,
            landlord_contact_office: "call 010594Y9032",
            free_text_note: "",
        };
        let v = validate_rent_arrears(&bad, RULES).expect_err("invalid");
        for f in [
            "idempotency_key",
            "hetu",
            "tenancy_ref",
            "arrears_cents",
            "months_overdue",
            "eviction_stage",
            "landlord_contact_office",
        ] {
            assert!(v.names(f), "{f} not named");
        }
        assert!(v.0.iter().all(|x| !x.description.contains("010594")));
    }
}
