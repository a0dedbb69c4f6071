//! The message kinds silta carries, and every field each one has: which form it may cross in,
//! under which name, or why it never crosses. `flows.toml` chooses among these; it cannot add
//! a field or a form the catalogue does not allow.

use serde_json::Value;
use time::{Date, OffsetDateTime};

use crate::report::{ArrearsBand, month_of};

/// A kind of message, carried by one RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageKind {
    /// `Landlord.ReportRentArrears`.
    RentArrears,
    /// `Landlord.ReportEvictionStage`.
    EvictionStage,
    /// `Landlord.ReportDisturbance`.
    Disturbance,
    /// `SocialServices.SendSupportNotice`.
    SupportNotice,
}

impl MessageKind {
    /// Every kind.
    pub const ALL: [MessageKind; 4] = [
        MessageKind::RentArrears,
        MessageKind::EvictionStage,
        MessageKind::Disturbance,
        MessageKind::SupportNotice,
    ];

    /// The name `flows.toml` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::RentArrears => "rent-arrears",
            MessageKind::EvictionStage => "eviction-stage",
            MessageKind::Disturbance => "disturbance",
            MessageKind::SupportNotice => "support-notice",
        }
    }

    /// Parses the name `flows.toml` uses.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The RPC that carries it.
    pub fn rpc(self) -> &'static str {
        match self {
            MessageKind::RentArrears => "Landlord.ReportRentArrears",
            MessageKind::EvictionStage => "Landlord.ReportEvictionStage",
            MessageKind::Disturbance => "Landlord.ReportDisturbance",
            MessageKind::SupportNotice => "SocialServices.SendSupportNotice",
        }
    }

    /// Every field of the message, in the order they are documented.
    pub fn fields(self) -> &'static [FieldSpec] {
        match self {
            MessageKind::RentArrears => RENT_ARREARS,
            MessageKind::EvictionStage => EVICTION_STAGE,
            MessageKind::Disturbance => DISTURBANCE,
            MessageKind::SupportNotice => SUPPORT_NOTICE,
        }
    }

    /// The field named `source`, if the message has one.
    pub fn field(self, source: &str) -> Option<&'static FieldSpec> {
        self.fields().iter().find(|f| f.source == source)
    }
}

/// How a field is transformed before it crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Form {
    /// Crosses as sent (enums, counts, short texts checked for identity codes).
    Pass,
    /// An exact amount crosses only as a band.
    Band,
    /// A date or time crosses only as its month, `YYYY-MM`.
    Month,
}

impl Form {
    /// The name `flows.toml` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Form::Pass => "pass",
            Form::Band => "band",
            Form::Month => "month",
        }
    }

    /// Parses the name `flows.toml` uses.
    pub fn parse(s: &str) -> Option<Self> {
        [Form::Pass, Form::Band, Form::Month]
            .into_iter()
            .find(|f| f.as_str() == s)
    }

    /// How a person reads it.
    pub fn describe(self) -> &'static str {
        match self {
            Form::Pass => "as sent",
            Form::Band => "as a band",
            Form::Month => "as its month",
        }
    }
}

/// One field of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    /// The field's name in the request (or `received_at`, the time silta accepted it, or
    /// `sender_org`, the organisation that sent it).
    pub source: &'static str,
    /// The only form it may cross in, or `Err(why)` when it never crosses.
    pub crosses: Result<Form, &'static str>,
    /// Its name on the recipient's side.
    pub output: &'static str,
}

const fn crosses(source: &'static str, form: Form, output: &'static str) -> FieldSpec {
    FieldSpec {
        source,
        crosses: Ok(form),
        output,
    }
}

const fn never(source: &'static str, why: &'static str) -> FieldSpec {
    FieldSpec {
        source,
        crosses: Err(why),
        output: "",
    }
}

const HETU: FieldSpec = never(
    "hetu",
    "the identity code never crosses: each recipient gets its own pseudonym",
);
const KEY: FieldSpec = never(
    "idempotency_key",
    "the idempotency key is the sender's own and stays with silta",
);
const TENANCY: FieldSpec = never(
    "tenancy_ref",
    "the tenancy reference stays with silta to route support notices back; the recipient gets a case_ref",
);
const OFFICE: FieldSpec = crosses(
    "landlord_contact_office",
    Form::Pass,
    "landlord_contact_office",
);
const RECEIVED: FieldSpec = crosses("received_at", Form::Month, "report_month");
/// The landlord organisation that sent the report, as its client certificate proves (no
/// request field: silta fills it in). With many landlords, the recipient needs to know whose
/// tenant it is and whom to answer.
const SENDER: FieldSpec = crosses(SENDER_ORG, Form::Pass, "reporting_organisation");

/// The source name of the sending organisation, which [`crate::policy::minimise`] fills in
/// from the caller's certificate rather than from the message.
pub const SENDER_ORG: &str = "sender_org";

const RENT_ARREARS: &[FieldSpec] = &[
    RECEIVED,
    crosses("arrears_cents", Form::Band, "arrears_band"),
    crosses("months_overdue", Form::Pass, "months_overdue"),
    crosses("eviction_stage", Form::Pass, "eviction_stage"),
    OFFICE,
    SENDER,
    HETU,
    KEY,
    TENANCY,
    never("free_text_note", "free text never crosses"),
];

const EVICTION_STAGE: &[FieldSpec] = &[
    RECEIVED,
    crosses("eviction_stage", Form::Pass, "eviction_stage"),
    crosses("stage_date", Form::Month, "stage_month"),
    OFFICE,
    SENDER,
    HETU,
    KEY,
    TENANCY,
];

const DISTURBANCE: &[FieldSpec] = &[
    RECEIVED,
    crosses("category", Form::Pass, "category"),
    crosses("count_in_period", Form::Pass, "count_in_period"),
    crosses("period_month", Form::Pass, "period_month"),
    OFFICE,
    SENDER,
    HETU,
    KEY,
    TENANCY,
];

const SUPPORT_NOTICE: &[FieldSpec] = &[
    crosses("received_at", Form::Month, "notice_month"),
    crosses("outcome", Form::Pass, "outcome"),
    crosses("commitment_cents", Form::Band, "commitment_band"),
    crosses("commitment_month", Form::Pass, "commitment_month"),
    KEY,
    never(
        "case_ref",
        "the case reference is social services' own; the landlord gets its tenancy reference instead",
    ),
];

/// A field's value as sent, before it is generalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    /// A short text (already checked for identity codes).
    Text(String),
    /// A count.
    Count(u32),
    /// An exact amount in euro cents.
    Cents(i64),
    /// An instant.
    Time(OffsetDateTime),
    /// A calendar date.
    Date(Date),
    /// An enum value, by its stable name.
    Enum(&'static str),
}

impl FieldValue {
    /// The value in `form`, as it crosses; `None` when the form does not apply to the value
    /// (the catalogue's tests prove that no declared pair gets there).
    pub fn generalise(&self, form: Form) -> Option<Value> {
        Some(match (form, self) {
            (Form::Pass, FieldValue::Text(s)) => Value::from(s.as_str()),
            (Form::Pass, FieldValue::Count(n)) => Value::from(*n),
            (Form::Pass, FieldValue::Enum(e)) => Value::from(*e),
            (Form::Band, FieldValue::Cents(c)) => Value::from(ArrearsBand::of_cents(*c).as_str()),
            (Form::Month, FieldValue::Time(t)) => Value::from(month_of(*t)),
            (Form::Month, FieldValue::Date(d)) => {
                Value::from(format!("{:04}-{:02}", d.year(), u8::from(d.month())))
            }
            _ => return None,
        })
    }
}

/// A validated message, able to say what each of its fields holds.
pub trait Message {
    /// Its kind.
    fn kind(&self) -> MessageKind;
    /// The value of field `source` (as named in [`MessageKind::fields`]), `None` when the
    /// message does not carry it (an optional field left empty). Fields that never cross
    /// answer `None` as well.
    fn value(&self, source: &str, received_at: OffsetDateTime) -> Option<FieldValue>;
    /// The eviction stage it reports, for the policy to see.
    fn eviction_stage(&self) -> Option<crate::report::EvictionStage> {
        None
    }
}
