//! Landlord reports (rent arrears, eviction stages, disturbances): validation of what a landlord
//! sends, and what each field holds for minimisation.

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use crate::hetu::{Hetu, HetuRules};
use crate::policy::{FieldValue, Message, MessageKind};
use crate::validate::{Violations, check_text};

/// Largest accepted arrears: 1 M€ in cents. Anything above is a typing error, not a debt.
pub const MAX_ARREARS_CENTS: i64 = 100_000_000;
/// Largest accepted months overdue (ten years).
pub const MAX_MONTHS_OVERDUE: u32 = 120;

/// Eviction stage of a tenancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

impl EvictionStage {
    /// Every stage.
    pub const ALL: [EvictionStage; 5] = [
        EvictionStage::None,
        EvictionStage::Warning,
        EvictionStage::CourtApplication,
        EvictionStage::CourtDecision,
        EvictionStage::EnforcementScheduled,
    ];

    /// The stable name that crosses (and the policy schema's `EvictionStage` id).
    pub fn as_str(self) -> &'static str {
        match self {
            EvictionStage::None => "none",
            EvictionStage::Warning => "warning",
            EvictionStage::CourtApplication => "court_application",
            EvictionStage::CourtDecision => "court_decision",
            EvictionStage::EnforcementScheduled => "enforcement_scheduled",
        }
    }

    /// Parses the stable name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
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

    /// The stable name that crosses.
    pub fn as_str(self) -> &'static str {
        match self {
            ArrearsBand::Under500 => "under_500",
            ArrearsBand::From500To1500 => "from_500_to_1500",
            ArrearsBand::From1500To5000 => "from_1500_to_5000",
            ArrearsBand::From5000 => "from_5000",
        }
    }

    /// Parses the stable name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Under500,
            Self::From500To1500,
            Self::From1500To5000,
            Self::From5000,
        ]
        .into_iter()
        .find(|b| b.as_str() == s)
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

/// What every landlord report carries besides its content: who it is about, how to retry it,
/// and on which purpose and legal basis it is sent. No `Debug`: it holds an identity code as
/// text.
#[derive(Clone, Copy, Default)]
pub struct ReportHeader<'a> {
    /// Caller's idempotency key.
    pub idempotency_key: &'a str,
    /// Identity code text (never logged).
    pub hetu: &'a str,
    /// Landlord's tenancy reference.
    pub tenancy_ref: &'a str,
    /// The purpose the landlord names.
    pub purpose: &'a str,
    /// The legal basis the landlord names.
    pub legal_basis: &'a str,
    /// The office social services should contact.
    pub landlord_contact_office: &'a str,
}

/// The validated header of a landlord report.
#[derive(Debug, Clone)]
pub struct Header {
    /// Idempotency key, `[A-Za-z0-9._:-]{1,128}`.
    pub idempotency_key: String,
    /// The tenant.
    pub hetu: Hetu,
    /// Tenancy reference (stays with silta, to route answers back).
    pub tenancy_ref: String,
    /// Purpose, as named (checked against the policy by the caller of validation).
    pub purpose: String,
    /// Legal basis, as named.
    pub legal_basis: String,
    /// Contact office.
    pub landlord_contact_office: String,
}

impl Header {
    /// The header's part of a report's fingerprint.
    pub fn fingerprint_parts(&self) -> [&[u8]; 4] {
        [
            self.tenancy_ref.as_bytes(),
            self.purpose.as_bytes(),
            self.legal_basis.as_bytes(),
            self.landlord_contact_office.as_bytes(),
        ]
    }
}

/// Checks the purpose and legal basis are given; whether they are declared is the policy's
/// to say.
pub fn check_purpose_and_basis(v: &mut Violations, purpose: &str, legal_basis: &str) {
    for (field, value) in [("purpose", purpose), ("legal_basis", legal_basis)] {
        if value.is_empty() {
            v.add(field, "is required");
        } else if value.len() > 64 {
            v.add(field, "must be at most 64 characters");
        }
    }
}

fn validate_header(h: &ReportHeader<'_>, rules: HetuRules, v: &mut Violations) -> Option<Header> {
    check_idempotency_key(v, "idempotency_key", h.idempotency_key);
    let hetu = Hetu::parse(h.hetu, rules)
        .map_err(|e| v.add("hetu", e.to_string()))
        .ok();
    check_text(v, "tenancy_ref", h.tenancy_ref, 1, 64);
    check_purpose_and_basis(v, h.purpose, h.legal_basis);
    check_text(
        v,
        "landlord_contact_office",
        h.landlord_contact_office,
        1,
        100,
    );
    Some(Header {
        idempotency_key: h.idempotency_key.to_owned(),
        hetu: hetu?,
        tenancy_ref: h.tenancy_ref.to_owned(),
        purpose: h.purpose.to_owned(),
        legal_basis: h.legal_basis.to_owned(),
        landlord_contact_office: h.landlord_contact_office.to_owned(),
    })
}

impl Header {
    fn value(&self, source: &str, received_at: OffsetDateTime) -> Option<FieldValue> {
        match source {
            "received_at" => Some(FieldValue::Time(received_at)),
            "landlord_contact_office" => {
                Some(FieldValue::Text(self.landlord_contact_office.clone()))
            }
            _ => None,
        }
    }
}

/// A rent-arrears report as it arrives, before validation.
#[derive(Clone, Default)]
pub struct RentArrearsInput<'a> {
    /// The common header.
    pub header: ReportHeader<'a>,
    /// Exact arrears in cents.
    pub arrears_cents: i64,
    /// Months overdue.
    pub months_overdue: u32,
    /// `None` when the enum value was unspecified or unknown.
    pub eviction_stage: Option<EvictionStage>,
    /// Free text; validated for length, never stored or forwarded.
    pub free_text_note: &'a str,
}

impl std::fmt::Debug for RentArrearsInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RentArrearsInput")
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
    /// The common header.
    pub header: Header,
    /// Exact arrears in cents.
    pub arrears_cents: i64,
    /// Months overdue.
    pub months_overdue: u32,
    /// Eviction stage.
    pub eviction_stage: EvictionStage,
}

/// Checks an idempotency key: 1–128 characters of `[A-Za-z0-9._:-]`, with no identity code
/// inside (it is stored and returned in receipts).
pub fn check_idempotency_key(v: &mut Violations, field: &str, key: &str) {
    if key.is_empty() {
        v.add(field, "is required");
    } else if let Some(problem) = crate::validate::hetu_shape(key) {
        v.add(field, problem);
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
    let header = validate_header(&input.header, rules, &mut v);
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
            "must be set (it is unset or an unknown value): EVICTION_STAGE_NONE when no eviction step has been taken, otherwise the latest step",
        );
    }
    if input.free_text_note.chars().count() > 2000 {
        v.add("free_text_note", "must be at most 2000 characters");
    }
    match (header, input.eviction_stage) {
        (Some(header), Some(stage)) if v.0.is_empty() => Ok(RentArrearsReport {
            header,
            arrears_cents: input.arrears_cents,
            months_overdue: input.months_overdue,
            eviction_stage: stage,
        }),
        _ => Err(v),
    }
}

impl Message for RentArrearsReport {
    fn kind(&self) -> MessageKind {
        MessageKind::RentArrears
    }

    fn value(&self, source: &str, received_at: OffsetDateTime) -> Option<FieldValue> {
        match source {
            "arrears_cents" => Some(FieldValue::Cents(self.arrears_cents)),
            "months_overdue" => Some(FieldValue::Count(self.months_overdue)),
            "eviction_stage" => Some(FieldValue::Enum(self.eviction_stage.as_str())),
            _ => self.header.value(source, received_at),
        }
    }

    fn eviction_stage(&self) -> Option<EvictionStage> {
        Some(self.eviction_stage)
    }
}

/// An eviction-stage report as it arrives.
#[derive(Clone, Default)]
pub struct EvictionStageInput<'a> {
    /// The common header.
    pub header: ReportHeader<'a>,
    /// `None` when unspecified or unknown.
    pub eviction_stage: Option<EvictionStage>,
    /// The date of the step, `YYYY-MM-DD` (e.g. the enforcement date).
    pub stage_date: &'a str,
}

/// A validated eviction-stage report.
#[derive(Debug, Clone)]
pub struct EvictionStageReport {
    /// The common header.
    pub header: Header,
    /// The stage reached (never `None`).
    pub eviction_stage: EvictionStage,
    /// The date of the step.
    pub stage_date: Date,
}

/// Validates an eviction-stage report.
pub fn validate_eviction_stage(
    input: &EvictionStageInput<'_>,
    rules: HetuRules,
) -> Result<EvictionStageReport, Violations> {
    let mut v = Violations::default();
    let header = validate_header(&input.header, rules, &mut v);
    let stage = match input.eviction_stage {
        None | Some(EvictionStage::None) => {
            v.add(
                "eviction_stage",
                "must be WARNING, COURT_APPLICATION, COURT_DECISION or ENFORCEMENT_SCHEDULED (it is unset, NONE or an unknown value)",
            );
            None
        }
        s => s,
    };
    let date = parse_date(&mut v, "stage_date", input.stage_date);
    match (header, stage, date) {
        (Some(header), Some(eviction_stage), Some(stage_date)) if v.0.is_empty() => {
            Ok(EvictionStageReport {
                header,
                eviction_stage,
                stage_date,
            })
        }
        _ => Err(v),
    }
}

impl Message for EvictionStageReport {
    fn kind(&self) -> MessageKind {
        MessageKind::EvictionStage
    }

    fn value(&self, source: &str, received_at: OffsetDateTime) -> Option<FieldValue> {
        match source {
            "eviction_stage" => Some(FieldValue::Enum(self.eviction_stage.as_str())),
            "stage_date" => Some(FieldValue::Date(self.stage_date)),
            _ => self.header.value(source, received_at),
        }
    }

    fn eviction_stage(&self) -> Option<EvictionStage> {
        Some(self.eviction_stage)
    }
}

/// What a disturbance was. Never a description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisturbanceCategory {
    /// Noise.
    Noise,
    /// Damage to the property.
    Damage,
    /// A threat to others' safety.
    ThreatToSafety,
    /// Anything else.
    Other,
}

impl DisturbanceCategory {
    /// The stable name that crosses.
    pub fn as_str(self) -> &'static str {
        match self {
            DisturbanceCategory::Noise => "noise",
            DisturbanceCategory::Damage => "damage",
            DisturbanceCategory::ThreatToSafety => "threat_to_safety",
            DisturbanceCategory::Other => "other",
        }
    }

    /// Parses the stable name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Noise, Self::Damage, Self::ThreatToSafety, Self::Other]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// Most disturbances counted in one month.
pub const MAX_DISTURBANCES: u32 = 1000;

/// A disturbance notice as it arrives.
#[derive(Clone, Default)]
pub struct DisturbanceInput<'a> {
    /// The common header.
    pub header: ReportHeader<'a>,
    /// `None` when unspecified or unknown.
    pub category: Option<DisturbanceCategory>,
    /// How many disturbances of this category in the month, 1 to 1,000.
    pub count_in_period: u32,
    /// The month counted, `YYYY-MM`.
    pub period_month: &'a str,
}

/// A validated disturbance notice.
#[derive(Debug, Clone)]
pub struct DisturbanceReport {
    /// The common header.
    pub header: Header,
    /// The category.
    pub category: DisturbanceCategory,
    /// The count.
    pub count_in_period: u32,
    /// The month counted, `YYYY-MM`.
    pub period_month: String,
}

/// Validates a disturbance notice.
pub fn validate_disturbance(
    input: &DisturbanceInput<'_>,
    rules: HetuRules,
    now: OffsetDateTime,
) -> Result<DisturbanceReport, Violations> {
    let mut v = Violations::default();
    let header = validate_header(&input.header, rules, &mut v);
    if input.category.is_none() {
        v.add(
            "category",
            "must be NOISE, DAMAGE, THREAT_TO_SAFETY or OTHER (it is unset or an unknown value)",
        );
    }
    if !(1..=MAX_DISTURBANCES).contains(&input.count_in_period) {
        v.add(
            "count_in_period",
            format!("must be between 1 and {MAX_DISTURBANCES}"),
        );
    }
    let mut month_ok = check_month(&mut v, "period_month", input.period_month);
    // Counted disturbances are in a month that has begun; a day's grace covers time zones
    // (Helsinki's new month begins two or three hours before UTC's).
    if month_ok && input.period_month > month_of(now + time::Duration::DAY).as_str() {
        v.add(
            "period_month",
            "must not be a future month: count disturbances in a month that has begun",
        );
        month_ok = false;
    }
    match (header, input.category) {
        (Some(header), Some(category)) if v.0.is_empty() && month_ok => Ok(DisturbanceReport {
            header,
            category,
            count_in_period: input.count_in_period,
            period_month: input.period_month.to_owned(),
        }),
        _ => Err(v),
    }
}

impl Message for DisturbanceReport {
    fn kind(&self) -> MessageKind {
        MessageKind::Disturbance
    }

    fn value(&self, source: &str, received_at: OffsetDateTime) -> Option<FieldValue> {
        match source {
            "category" => Some(FieldValue::Enum(self.category.as_str())),
            "count_in_period" => Some(FieldValue::Count(self.count_in_period)),
            "period_month" => Some(FieldValue::Text(self.period_month.clone())),
            _ => self.header.value(source, received_at),
        }
    }
}

/// Parses a `YYYY-MM-DD` date between 2000 and 2100.
pub fn parse_date(v: &mut Violations, field: &str, text: &str) -> Option<Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    // `[year]` would also take a sign (`+2026-11-20`); the contract says four digits.
    let parsed = Date::parse(text, &format)
        .ok()
        .filter(|_| text.len() == 10 && text.as_bytes()[0].is_ascii_digit());
    match parsed {
        Some(d) if (2000..=2100).contains(&d.year()) => Some(d),
        Some(_) => {
            v.add(field, "must be a date between 2000-01-01 and 2100-12-31");
            None
        }
        None if text.is_empty() => {
            v.add(field, "is required, as YYYY-MM-DD");
            None
        }
        None => {
            v.add(field, "must be a date as YYYY-MM-DD, e.g. 2026-12-01");
            None
        }
    }
}

/// Checks a `YYYY-MM` month between 2000 and 2100.
pub fn check_month(v: &mut Violations, field: &str, text: &str) -> bool {
    let shaped = text.len() == 7
        && text.bytes().enumerate().all(|(i, b)| {
            if i == 4 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
        && text[5..].parse::<u8>().is_ok_and(|m| (1..=12).contains(&m));
    let in_range = shaped
        && text[..4]
            .parse::<i32>()
            .is_ok_and(|y| (2000..=2100).contains(&y));
    if text.is_empty() {
        v.add(field, "is required, as YYYY-MM");
    } else if !shaped {
        v.add(field, "must be a month as YYYY-MM, e.g. 2026-11");
    } else if !in_range {
        v.add(field, "must be a month between 2000-01 and 2100-12");
    }
    in_range
}

/// `YYYY-MM` of a time, in UTC.
pub fn month_of(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!("{:04}-{:02}", t.year(), u8::from(t.month()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policies, minimise};

    const RULES: HetuRules = HetuRules {
        allow_temporary: true,
    };

    fn header() -> ReportHeader<'static> {
        ReportHeader {
            idempotency_key: "r-1",
            hetu: "010594Y9032",
            tenancy_ref: "T-100/2",
            purpose: "eviction-prevention",
            legal_basis: "gdpr-6-1-a-consent",
            landlord_contact_office: "Kallio office",
        }
    }

    fn input() -> RentArrearsInput<'static> {
        RentArrearsInput {
            header: header(),
            arrears_cents: 123_456,
            months_overdue: 3,
            eviction_stage: Some(EvictionStage::Warning),
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
        let policies = Policies::builtin();
        let flow = policies.flow("rent-arrears").expect("declared");
        let report = validate_rent_arrears(&input(), RULES).expect("valid input");
        let at = time::macros::datetime!(2026-11-23 10:00 UTC);
        let landlord = crate::OrgId::new("city-housing").expect("valid org id");
        let alert = minimise(flow, &report, at, &landlord);
        let mut keys: Vec<_> = alert.keys().cloned().collect();
        let mut declared = flow.field_names();
        keys.sort();
        declared.sort();
        assert_eq!(keys, declared);
        let text = serde_json::Value::Object(alert.clone()).to_string();
        for never in ["T-100/2", "1234", "lost their job", "010594"] {
            assert!(!text.contains(never), "{never} crossed: {text}");
        }
        assert_eq!(alert["report_month"], "2026-11");
        assert_eq!(alert["arrears_band"], "from_500_to_1500");
        // The sender comes from its certificate, never from the report.
        assert_eq!(alert["reporting_organisation"], "city-housing");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let bad = RentArrearsInput {
            header: ReportHeader {
                idempotency_key: "",
                hetu: "010594Y9033",
                tenancy_ref: "",
                purpose: "",
                legal_basis: "",
                landlord_contact_office: "call 010594Y9032",
            },
            arrears_cents: -1,
            months_overdue: 999,
            eviction_stage: None,
            free_text_note: "",
        };
        let v = validate_rent_arrears(&bad, RULES).expect_err("invalid");
        for f in [
            "idempotency_key",
            "hetu",
            "tenancy_ref",
            "purpose",
            "legal_basis",
            "arrears_cents",
            "months_overdue",
            "eviction_stage",
            "landlord_contact_office",
        ] {
            assert!(v.names(f), "{f} not named");
        }
        assert!(v.0.iter().all(|x| !x.description.contains("010594")));
    }

    #[test]
    fn eviction_stage_needs_a_real_step_and_date() {
        let ok = EvictionStageInput {
            header: header(),
            eviction_stage: Some(EvictionStage::EnforcementScheduled),
            stage_date: "2026-12-15",
        };
        let r = validate_eviction_stage(&ok, RULES).expect("valid");
        assert_eq!(
            r.value("stage_date", OffsetDateTime::UNIX_EPOCH)
                .and_then(|v| v.generalise(crate::policy::Form::Month)),
            Some(serde_json::Value::from("2026-12"))
        );
        for (stage, date, field) in [
            (Some(EvictionStage::None), "2026-12-15", "eviction_stage"),
            (None, "2026-12-15", "eviction_stage"),
            (Some(EvictionStage::Warning), "2026-13-01", "stage_date"),
            (Some(EvictionStage::Warning), "", "stage_date"),
            (Some(EvictionStage::Warning), "1999-12-01", "stage_date"),
        ] {
            let bad = EvictionStageInput {
                eviction_stage: stage,
                stage_date: date,
                ..ok.clone()
            };
            let v = validate_eviction_stage(&bad, RULES).expect_err("invalid");
            assert!(v.names(field), "{field} not named for {date}");
        }
    }

    #[test]
    fn disturbance_is_a_category_and_a_count_in_a_month() {
        let ok = DisturbanceInput {
            header: header(),
            category: Some(DisturbanceCategory::Noise),
            count_in_period: 3,
            period_month: "2026-10",
        };
        assert!(validate_disturbance(&ok, RULES, OffsetDateTime::now_utc()).is_ok());
        for (count, month, field) in [
            (0, "2026-10", "count_in_period"),
            (1001, "2026-10", "count_in_period"),
            (1, "2026-1", "period_month"),
            (1, "2026-00", "period_month"),
            (1, "20x6-01", "period_month"),
            (1, "", "period_month"),
            (1, "2100-12", "period_month"), // not begun yet
        ] {
            let bad = DisturbanceInput {
                count_in_period: count,
                period_month: month,
                ..ok.clone()
            };
            let v =
                validate_disturbance(&bad, RULES, OffsetDateTime::now_utc()).expect_err("invalid");
            assert!(v.names(field), "{field} not named for {month}");
        }
    }
}
