//! `Debug` for the generated messages that hold an identity code: the code is masked, so
//! formatting a request (in a log line, a panic, a test failure) never shows it.

use std::fmt;

use crate::proto::{
    AuditQueryRequest, EnrolClientRequest, ReportRentArrearsRequest, SubjectPurpose,
};

const MASK: &str = "***********";

impl fmt::Debug for ReportRentArrearsRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReportRentArrearsRequest")
            .field("idempotency_key", &self.idempotency_key)
            .field("hetu", &MASK)
            .field("tenancy_ref", &self.tenancy_ref)
            .field("arrears_cents", &self.arrears_cents)
            .field("months_overdue", &self.months_overdue)
            .field("eviction_stage", &self.eviction_stage)
            .field("landlord_contact_office", &self.landlord_contact_office)
            .field(
                "free_text_note",
                &format_args!("<{} chars>", self.free_text_note.chars().count()),
            )
            .finish()
    }
}

impl fmt::Debug for EnrolClientRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrolClientRequest")
            .field("hetu", &MASK)
            .field("consent", &self.consent)
            .finish()
    }
}

impl fmt::Debug for SubjectPurpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectPurpose")
            .field("hetu", &MASK)
            .field("purpose", &self.purpose)
            .finish()
    }
}

impl fmt::Debug for AuditQueryRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditQueryRequest")
            .field(
                "subject_hetu",
                &if self.subject_hetu.is_empty() {
                    ""
                } else {
                    MASK
                },
            )
            .field("subject_pseudonym", &self.subject_pseudonym)
            .field("organisation", &self.organisation)
            .field("flow_id", &self.flow_id)
            .field("outcome", &self.outcome)
            .field("from_time", &self.from_time)
            .field("until_time", &self.until_time)
            .field("start_index", &self.start_index)
            .field("limit", &self.limit)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_holding_an_identity_code_never_show_it() {
        let code = "150385-9345";
        let report = ReportRentArrearsRequest {
            hetu: code.into(),
            free_text_note: "secret".into(),
            ..Default::default()
        };
        let enrol = EnrolClientRequest {
            hetu: code.into(),
            consent: None,
        };
        let subject = SubjectPurpose {
            hetu: code.into(),
            purpose: "p".into(),
        };
        for shown in [
            format!("{report:?}"),
            format!("{enrol:?}"),
            format!("{subject:#?}"),
        ] {
            assert!(!shown.contains("150385"), "{shown}");
            assert!(!shown.contains("secret"), "{shown}");
        }
    }
}
