//! Support notices: what social services tells the landlord on a case, validated.

use time::OffsetDateTime;

use crate::policy::{FieldValue, Message, MessageKind};
use crate::report::{
    MAX_ARREARS_CENTS, check_idempotency_key, check_month, check_purpose_and_basis,
};
use crate::validate::{Violations, check_text};

/// What social services tells the landlord.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SupportOutcome {
    /// A social worker is working with the client.
    SupportEngaged,
    /// The client committed to pay an amount by a month.
    PaymentCommitment,
    /// The client could not be reached.
    ClientNotReached,
    /// Social services closed the case.
    CaseClosed,
}

impl SupportOutcome {
    /// Every outcome, in the order statistics show them.
    pub const ALL: [SupportOutcome; 4] = [
        SupportOutcome::SupportEngaged,
        SupportOutcome::PaymentCommitment,
        SupportOutcome::ClientNotReached,
        SupportOutcome::CaseClosed,
    ];

    /// The stable name that crosses.
    pub fn as_str(self) -> &'static str {
        match self {
            SupportOutcome::SupportEngaged => "support_engaged",
            SupportOutcome::PaymentCommitment => "payment_commitment",
            SupportOutcome::ClientNotReached => "client_not_reached",
            SupportOutcome::CaseClosed => "case_closed",
        }
    }

    /// Parses the stable name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::SupportEngaged,
            Self::PaymentCommitment,
            Self::ClientNotReached,
            Self::CaseClosed,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

/// A support notice as it arrives.
#[derive(Debug, Clone, Default)]
pub struct SupportNoticeInput<'a> {
    /// Caller's idempotency key.
    pub idempotency_key: &'a str,
    /// The `case_ref` of an alert the caller received.
    pub case_ref: &'a str,
    /// The purpose named.
    pub purpose: &'a str,
    /// The legal basis named.
    pub legal_basis: &'a str,
    /// `None` when unspecified or unknown.
    pub outcome: Option<SupportOutcome>,
    /// For a payment commitment: the amount, in euro cents.
    pub commitment_cents: i64,
    /// For a payment commitment: the month it is due, `YYYY-MM`.
    pub commitment_month: &'a str,
}

/// A validated support notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupportNotice {
    /// Idempotency key.
    pub idempotency_key: String,
    /// The case it answers.
    pub case_ref: String,
    /// Purpose named.
    pub purpose: String,
    /// Legal basis named.
    pub legal_basis: String,
    /// The outcome.
    pub outcome: SupportOutcome,
    /// For a payment commitment: amount in cents and month.
    pub commitment: Option<(i64, String)>,
}

/// Validates a support notice.
pub fn validate_support_notice(
    input: &SupportNoticeInput<'_>,
) -> Result<SupportNotice, Violations> {
    let mut v = Violations::default();
    check_idempotency_key(&mut v, "idempotency_key", input.idempotency_key);
    check_text(&mut v, "case_ref", input.case_ref, 1, 64);
    check_purpose_and_basis(&mut v, input.purpose, input.legal_basis);
    let mut commitment = None;
    match input.outcome {
        None => v.add(
            "outcome",
            "must be SUPPORT_ENGAGED, PAYMENT_COMMITMENT, CLIENT_NOT_REACHED or CASE_CLOSED (it is unset or an unknown value)",
        ),
        Some(SupportOutcome::PaymentCommitment) => {
            if !(1..=MAX_ARREARS_CENTS).contains(&input.commitment_cents) {
                v.add(
                    "commitment_cents",
                    format!(
                        "is required for PAYMENT_COMMITMENT: between 1 and {MAX_ARREARS_CENTS} (euro cents)"
                    ),
                );
            }
            if check_month(&mut v, "commitment_month", input.commitment_month) {
                commitment = Some((input.commitment_cents, input.commitment_month.to_owned()));
            }
        }
        Some(_) => {
            if input.commitment_cents != 0 {
                v.add(
                    "commitment_cents",
                    "is only for PAYMENT_COMMITMENT: leave it 0",
                );
            }
            if !input.commitment_month.is_empty() {
                v.add(
                    "commitment_month",
                    "is only for PAYMENT_COMMITMENT: leave it empty",
                );
            }
        }
    }
    match input.outcome {
        Some(outcome) if v.0.is_empty() => Ok(SupportNotice {
            idempotency_key: input.idempotency_key.to_owned(),
            case_ref: input.case_ref.to_owned(),
            purpose: input.purpose.to_owned(),
            legal_basis: input.legal_basis.to_owned(),
            outcome,
            commitment,
        }),
        _ => Err(v),
    }
}

impl Message for SupportNotice {
    fn kind(&self) -> MessageKind {
        MessageKind::SupportNotice
    }

    fn value(&self, source: &str, received_at: OffsetDateTime) -> Option<FieldValue> {
        match source {
            "received_at" => Some(FieldValue::Time(received_at)),
            "outcome" => Some(FieldValue::Enum(self.outcome.as_str())),
            "commitment_cents" => self.commitment.as_ref().map(|c| FieldValue::Cents(c.0)),
            "commitment_month" => self
                .commitment
                .as_ref()
                .map(|c| FieldValue::Text(c.1.clone())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> SupportNoticeInput<'static> {
        SupportNoticeInput {
            idempotency_key: "n-1",
            case_ref: "case-1",
            purpose: "eviction-prevention",
            legal_basis: "gdpr-6-1-a-consent",
            outcome: Some(SupportOutcome::PaymentCommitment),
            commitment_cents: 60_000,
            commitment_month: "2027-01",
        }
    }

    #[test]
    fn a_payment_commitment_needs_amount_and_month() {
        let n = validate_support_notice(&input()).expect("valid");
        assert_eq!(n.commitment, Some((60_000, "2027-01".to_owned())));
        let bad = SupportNoticeInput {
            commitment_cents: 0,
            commitment_month: "",
            ..input()
        };
        let v = validate_support_notice(&bad).expect_err("invalid");
        assert!(v.names("commitment_cents") && v.names("commitment_month"));
    }

    #[test]
    fn other_outcomes_carry_no_commitment() {
        let bad = SupportNoticeInput {
            outcome: Some(SupportOutcome::CaseClosed),
            ..input()
        };
        let v = validate_support_notice(&bad).expect_err("invalid");
        assert!(v.names("commitment_cents") && v.names("commitment_month"));
        let ok = SupportNoticeInput {
            outcome: Some(SupportOutcome::CaseClosed),
            commitment_cents: 0,
            commitment_month: "",
            ..input()
        };
        assert!(validate_support_notice(&ok).is_ok());
    }

    #[test]
    fn an_identity_code_in_the_case_ref_is_refused() {
        let bad = SupportNoticeInput {
            case_ref: "case-010594Y9032",
            ..input()
        };
        let v = validate_support_notice(&bad).expect_err("invalid");
        assert!(v.names("case_ref"));
        assert!(v.0.iter().all(|x| !x.description.contains("010594")));
    }
}
