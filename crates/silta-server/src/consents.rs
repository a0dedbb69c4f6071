//! A social worker's own consents: list them, read one with its receipt, renew one that is
//! ending. Every call is authorised for the social-services role, answers only with the
//! caller's own consents, and is recorded in the ledger before it answers (a read of consents
//! is processing of personal data too).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use silta_core::audit::Outcome;
use silta_core::consent::{
    ConsentInput, ConsentStanding, ConsentState, DEFAULT_EXPIRING_WITHIN_DAYS,
    MAX_EXPIRING_WITHIN_DAYS, NewConsent, ReceiptBody, SignedReceipt, validate_consent,
};
use silta_core::validate::Violations;
use silta_core::{Domain, Pseudonym, Role};
use silta_store::{ConsentQuery, NewConsentRow, StoredConsent};
use time::{Duration, OffsetDateTime};

use crate::gateway::{Enrolment, Gateway, RequestContext, to_millis};
use crate::status::ApiError;

/// Consents in one `ListConsents` page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// The most consents in one page.
pub const MAX_PAGE_SIZE: u32 = 500;

/// What a page token holds before encoding: a version tag and the last consent id served. It
/// reveals nothing the caller did not just receive; the tag lets the format change later.
const TOKEN_TAG: &str = "c1:";

/// Answered for an id that is not one of the caller's, whether it exists or not.
const NOT_YOURS: &str = "no consent of yours has this consent_id; ListConsents lists yours";

/// `ListConsents` as it arrives; `state` already mapped from the wire (`None`: every state).
pub struct ListRequest<'a> {
    /// Only this status; `None`: every one.
    pub status: Option<ConsentStanding>,
    /// The "expiring" window in days; 0 for the default.
    pub expiring_within_days: u32,
    /// The subject's pseudonym in the caller's domain, or empty.
    pub subject_pseudonym: &'a str,
    /// Page size; 0 for the default.
    pub page_size: i32,
    /// The previous page's token, or empty.
    pub page_token: &'a str,
}

/// A consent as its holder sees it.
#[derive(Debug, Clone)]
pub struct HeldConsent {
    /// The stored consent.
    pub stored: StoredConsent,
    /// Its standing at the time of the call.
    pub status: ConsentStanding,
}

/// One page of consents.
#[derive(Debug, Clone)]
pub struct ConsentPage {
    /// The consents.
    pub consents: Vec<HeldConsent>,
    /// The token of the next page; empty on the last.
    pub next_page_token: String,
}

/// A stored consent with its standing at `now`.
fn held(
    stored: StoredConsent,
    now: OffsetDateTime,
    expiring_before: OffsetDateTime,
) -> HeldConsent {
    let status = ConsentStanding::of(
        stored.record.state,
        stored.record.valid_until,
        now,
        expiring_before,
    );
    HeldConsent { stored, status }
}

/// A consent read by id with its receipt issued again.
#[derive(Debug, Clone)]
pub struct ConsentWithReceipt {
    /// The consent.
    pub consent: HeldConsent,
    /// Its signed receipt.
    pub receipt: SignedReceipt,
    /// The receipt's fields.
    pub body: ReceiptBody,
}

/// The result of a renewal: the new consent, and the id of the one it superseded.
#[derive(Debug, Clone)]
pub struct Renewal {
    /// The new consent, as an enrolment returns it.
    pub enrolment: Enrolment,
    /// The consent renewed.
    pub renewed: String,
}

/// A renewal's new terms as they arrive.
pub struct RenewalInput<'a> {
    /// When the client renewed; `None` when missing or not a valid timestamp.
    pub given_at: Option<OffsetDateTime>,
    /// The new end of validity; `None` when missing or not a valid timestamp.
    pub valid_until: Option<OffsetDateTime>,
    /// Where the new evidence is kept.
    pub evidence_ref: &'a str,
    /// The privacy-notice version shown.
    pub notice_version: &'a str,
}

fn encode_token(last: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{TOKEN_TAG}{last}"))
}

/// The last consent id of the previous page, or `None` for a token this RPC did not make.
fn decode_token(token: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let id = text.strip_prefix(TOKEN_TAG)?;
    uuid::Uuid::try_parse(id).ok()?;
    Some(id.to_owned())
}

impl Gateway {
    /// `SocialServices.ListConsents`. `v` holds violations already found while decoding.
    pub async fn list_consents(
        &self,
        ctx: &RequestContext,
        req: ListRequest<'_>,
        mut v: Violations,
    ) -> Result<ConsentPage, ApiError> {
        self.authorize(ctx, Role::SocialServices).await?;
        let days = match req.expiring_within_days {
            0 => DEFAULT_EXPIRING_WITHIN_DAYS,
            d if d > MAX_EXPIRING_WITHIN_DAYS => {
                v.add(
                    "expiring_within_days",
                    format!("must be at most {MAX_EXPIRING_WITHIN_DAYS} (0 means 30)"),
                );
                DEFAULT_EXPIRING_WITHIN_DAYS
            }
            d => d,
        };
        let limit = match u32::try_from(req.page_size) {
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(n) if n <= MAX_PAGE_SIZE => n,
            _ => {
                v.add(
                    "page_size",
                    format!("must be 0 to {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"),
                );
                DEFAULT_PAGE_SIZE
            }
        };
        let subject = if req.subject_pseudonym.is_empty() {
            None
        } else if Pseudonym::parse(req.subject_pseudonym).is_none() {
            // Never echoed: the field may hold an identity code typed in the wrong place.
            v.add(
                "subject_pseudonym",
                "must be a pseudonym as EnrolClient returns it (ps<version>.<32 characters>)",
            );
            None
        } else {
            Some(req.subject_pseudonym)
        };
        let after = if req.page_token.is_empty() {
            None
        } else {
            let after = decode_token(req.page_token);
            if after.is_none() {
                v.add(
                    "page_token",
                    "is not a token ListConsents returned; leave it empty for the first page",
                );
            }
            after
        };
        if !v.0.is_empty() {
            return Err(self.deny(ctx, ApiError::InvalidArgument(v), None).await);
        }
        let now = OffsetDateTime::now_utc();
        let expiring_before = now + Duration::days(i64::from(days));
        let query = ConsentQuery {
            status: req.status,
            subject_pseudonym: subject,
            now,
            expiring_before,
            after: after.as_deref(),
            // One more than asked: whether it comes tells if there is a next page, so the last
            // page never hands out a token to an empty one.
            limit: limit + 1,
        };
        let mut rows = self.store.list_consents(&ctx.caller.org, &query).await?;
        let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => encode_token(&last.record.consent_id),
            _ => String::new(),
        };
        // One ledger record per call. When the call named one client, the record names them,
        // so the client's access report shows the read.
        let named = subject.and_then(|_| rows.first().map(|c| c.audit_subject.clone()));
        self.record(ctx, Outcome::Allow, "consents-listed", named)
            .await?;
        Ok(ConsentPage {
            consents: rows
                .into_iter()
                .map(|c| held(c, now, expiring_before))
                .collect(),
            next_page_token,
        })
    }

    /// `SocialServices.GetConsent`.
    pub async fn get_consent(
        &self,
        ctx: &RequestContext,
        consent_id: &str,
    ) -> Result<ConsentWithReceipt, ApiError> {
        self.authorize(ctx, Role::SocialServices).await?;
        let stored = self.own_consent(ctx, consent_id).await?;
        self.record(
            ctx,
            Outcome::Allow,
            "consent-read",
            Some(stored.audit_subject.clone()),
        )
        .await?;
        let policies = self.policies.get();
        let terms = NewConsent {
            purpose: stored.record.purpose.clone(),
            given_at: stored.record.valid_from,
            valid_until: stored.record.valid_until,
            evidence_ref: stored.evidence_ref.clone(),
            notice_version: stored.notice_version.clone(),
            covers_landlord: stored.record.covers_landlord,
        };
        // The receipt as it was issued: the pseudonym, flows and time stored with the consent.
        let body = ReceiptBody::with_categories(
            &stored.record.consent_id,
            &ctx.caller.org,
            &stored.subject_pseudonym,
            &terms,
            stored.record.flows.clone(),
            &policies,
            stored.created_at,
        );
        let receipt = self.signer.sign(&body);
        let now = OffsetDateTime::now_utc();
        let window = Duration::days(i64::from(DEFAULT_EXPIRING_WITHIN_DAYS));
        Ok(ConsentWithReceipt {
            consent: held(stored, now, now + window),
            receipt,
            body,
        })
    }

    /// The caller's consent `consent_id`, or the audited refusal: a malformed id is
    /// INVALID_ARGUMENT, an unknown or foreign one NOT_FOUND (the same answer for both).
    async fn own_consent(
        &self,
        ctx: &RequestContext,
        consent_id: &str,
    ) -> Result<StoredConsent, ApiError> {
        if uuid::Uuid::try_parse(consent_id).is_err() {
            let err = ApiError::field(
                "consent_id",
                "must be a consent id as EnrolClient returns it (a UUID)",
            );
            return Err(self.deny(ctx, err, None).await);
        }
        match self.store.consent(&ctx.caller.org, consent_id).await? {
            Some(c) => Ok(c),
            None => Err(self.deny(ctx, ApiError::NotFound(NOT_YOURS), None).await),
        }
    }

    /// `SocialServices.RenewConsent`: a new consent that supersedes `consent_id`, with the
    /// same purpose and terms and new evidence and validity. `v` holds violations already
    /// found while decoding.
    pub async fn renew_consent(
        &self,
        ctx: &RequestContext,
        consent_id: &str,
        renewal: Option<RenewalInput<'_>>,
        mut v: Violations,
    ) -> Result<Renewal, ApiError> {
        self.authorize(ctx, Role::SocialServices).await?;
        let now = to_millis(OffsetDateTime::now_utc());
        let policies = self.policies.get();
        // Every bad field at once, as EnrolClient reports them, before the consent is looked
        // up: the terms a renewal keeps (purpose, sharing) are the stored consent's, so its
        // fields are checked here against any purpose consents are given for.
        let bad_id = uuid::Uuid::try_parse(consent_id).is_err();
        if bad_id {
            v.add(
                "consent_id",
                "must be a consent id as EnrolClient returns it (a UUID)",
            );
        }
        let any_purpose = policies.consent_purposes().into_iter().next();
        let checked = match &renewal {
            Some(r) => {
                let input = ConsentInput {
                    purpose: any_purpose.as_deref().unwrap_or_default(),
                    given_at: r.given_at,
                    valid_until: r.valid_until,
                    evidence_ref: r.evidence_ref,
                    notice_version: r.notice_version,
                    share_outcome_with_landlord: false,
                };
                validate_consent(&input, "renewal", now, &policies, &mut v)
            }
            None => {
                v.add("renewal", "is required");
                None
            }
        };
        let (Some(mut consent), false) = (checked, bad_id || !v.0.is_empty()) else {
            return Err(self.deny(ctx, ApiError::InvalidArgument(v), None).await);
        };
        let old = self.own_consent(ctx, consent_id).await?;
        if !policies.consent_purposes().contains(&old.record.purpose) {
            let err = ApiError::FailedPrecondition(
                "the policy no longer declares this consent's purpose; it cannot be renewed",
            );
            return Err(self.deny(ctx, err, Some(old.audit_subject)).await);
        }
        consent.purpose.clone_from(&old.record.purpose);
        consent.covers_landlord = old.record.covers_landlord;
        consent.given_at = to_millis(consent.given_at);
        consent.valid_until = to_millis(consent.valid_until);
        if old.subject_pseudonym.is_empty() {
            let err = ApiError::FailedPrecondition(
                "this consent was recorded before silta kept the client's pseudonym with it; \
                 enrol the client again",
            );
            return Err(self.deny(ctx, err, Some(old.audit_subject)).await);
        }

        let mut tx = self.store.begin().await?;
        // The state as of this transaction: a withdrawal or another renewal may have come
        // since the read above.
        let Some(current) = tx.consent_subject(&ctx.caller.org, consent_id).await? else {
            drop(tx);
            return Err(self.deny(ctx, ApiError::NotFound(NOT_YOURS), None).await);
        };
        let refused = match current.state {
            ConsentState::Active => None,
            // A withdrawal must not be undone by an id: the client enrols again.
            ConsentState::Withdrawn => {
                Some("the client withdrew this consent; enrol the client again to record a new one")
            }
            ConsentState::Superseded => Some(
                "a newer consent replaced this one; renew the newest (ListConsents with the \
                 client's subject_pseudonym shows it)",
            ),
        };
        if let Some(why) = refused {
            drop(tx);
            let err = ApiError::FailedPrecondition(why);
            return Err(self.deny(ctx, err, Some(current.audit_subject)).await);
        }
        let version = crate::commit::version_in_use(&mut *tx, &self.pseudonymiser).await?;
        let own = Domain::Org(ctx.caller.org.clone());
        let stored_own = Pseudonym::from_stored(old.subject_pseudonym.clone());
        // Stored pseudonyms move with a key promotion; brought to the version this transaction
        // writes under all the same, so the new consent can never lag the others.
        let Some(subject_pseudonym) = self.pseudonymiser.translate(&stored_own, &own, version)
        else {
            return Err(ApiError::Unavailable);
        };
        let flows = policies.consent_categories(&consent.purpose, consent.covers_landlord);
        let new_id = uuid::Uuid::now_v7().to_string();
        tx.insert_consent(&NewConsentRow {
            consent_id: &new_id,
            subject_key: &current.subject_key,
            audit_subject: &current.audit_subject,
            recipient: &ctx.caller.org,
            purpose: &consent.purpose,
            valid_from: consent.given_at,
            valid_until: consent.valid_until,
            evidence_ref: &consent.evidence_ref,
            notice_version: &consent.notice_version,
            covers_landlord: consent.covers_landlord,
            flows: &flows,
            subject_pseudonym: &subject_pseudonym,
            renews: Some(consent_id),
            now,
        })
        .await?;
        let mut record = ctx.audit_record(now, Outcome::Allow, "consent-renewed");
        record.subject = Some(current.audit_subject);
        tx.append_audit(&record).await?;
        tx.commit().await?;

        let body = ReceiptBody::new(
            &new_id,
            &ctx.caller.org,
            &subject_pseudonym,
            &consent,
            &policies,
            now,
        );
        let receipt = self.signer.sign(&body);
        Ok(Renewal {
            enrolment: Enrolment {
                subject_pseudonym,
                consent_id: new_id,
                receipt,
                body,
            },
            renewed: consent_id.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_token_round_trips_and_nothing_else_decodes() {
        let id = "01890a5d-ac96-774b-bcce-b302099a8057";
        assert_eq!(decode_token(&encode_token(id)).as_deref(), Some(id));
        for bad in ["", "abc", "!!!", &URL_SAFE_NO_PAD.encode("c1:not-a-uuid")] {
            assert!(decode_token(bad).is_none(), "{bad}");
        }
        assert!(decode_token(&URL_SAFE_NO_PAD.encode(format!("c2:{id}"))).is_none());
    }
}
