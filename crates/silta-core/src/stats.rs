//! Programme statistics: what is counted, per calendar month and organisation, with no
//! person in it.
//!
//! A counter is a [`Cell`]: a month, a [`Measure`], a flow, the landlord organisation, the
//! social-services organisation and a category (a bucket, an outcome or a reason code, all
//! chosen by silta), and a count. No cell holds a pseudonym, a case reference, a time finer
//! than a month or a value a caller typed.
//!
//! The landlord and social-services columns name the two sides of the programme whichever way
//! a message goes: a support notice from social services to a landlord counts under the same
//! pair as the alert it answers.

use std::fmt;
use std::str::FromStr;

use time::{Date, Duration, Month as CalMonth, OffsetDateTime, UtcOffset, Weekday};

/// A calendar month in Helsinki time (EET, EEST in summer), the city's own months.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    year: i32,
    month: u8,
}

/// The last `weekday` of a month.
fn last_weekday(year: i32, month: CalMonth, weekday: Weekday) -> Option<Date> {
    let next = Date::from_calendar_date(year, month.next(), 1).ok()?;
    // December's next month is January of the same year here: only March and October are asked.
    let mut d = next.previous_day()?;
    while d.weekday() != weekday {
        d = d.previous_day()?;
    }
    Some(d)
}

/// Helsinki's offset from UTC at `t`: +3 h from 01:00 UTC on the last Sunday of March to 01:00
/// UTC on the last Sunday of October (the EU rule, directive 2000/84/EC), +2 h otherwise.
pub fn helsinki_offset(t: OffsetDateTime) -> UtcOffset {
    let t = t.to_offset(UtcOffset::UTC);
    let year = t.year();
    let switch = |month| {
        last_weekday(year, month, Weekday::Sunday)
            .and_then(|d| d.with_hms(1, 0, 0).ok())
            .map(|d| d.assume_utc())
    };
    let summer = matches!(
        (switch(CalMonth::March), switch(CalMonth::October)),
        (Some(start), Some(end)) if t >= start && t < end
    );
    // Both offsets are in range, so neither call fails.
    let hours = if summer { 3 } else { 2 };
    UtcOffset::from_hms(hours, 0, 0).unwrap_or(UtcOffset::UTC)
}

impl Month {
    /// The month, if `month` is 1–12 and the year has four digits.
    pub fn new(year: i32, month: u8) -> Option<Month> {
        ((1..=12).contains(&month) && (1000..=9999).contains(&year))
            .then_some(Month { year, month })
    }

    /// The Helsinki month that `t` falls in.
    pub fn of(t: OffsetDateTime) -> Month {
        let local = t.to_offset(helsinki_offset(t));
        Month {
            year: local.year(),
            month: u8::from(local.month()),
        }
    }

    /// The year.
    pub fn year(self) -> i32 {
        self.year
    }

    /// The month of the year, 1–12.
    pub fn month(self) -> u8 {
        self.month
    }

    /// The month after this one.
    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// The month before this one.
    pub fn previous(self) -> Month {
        if self.month == 1 {
            Month {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Month {
                year: self.year,
                month: self.month - 1,
            }
        }
    }

    /// The instant the month begins, in Helsinki.
    pub fn start(self) -> OffsetDateTime {
        let first = CalMonth::try_from(self.month)
            .ok()
            .and_then(|m| Date::from_calendar_date(self.year, m, 1).ok())
            .unwrap_or(Date::MIN);
        let noon = first.midnight().assume_utc() + Duration::hours(12);
        // Midnight local is 22:00 or 21:00 UTC the day before; the offset at noon on the first
        // is the offset at midnight (the switches are on the last Sundays, never the 1st).
        first.midnight().assume_offset(helsinki_offset(noon))
    }

    /// Whether the month has ended at `now`: only closed months are released.
    pub fn is_closed(self, now: OffsetDateTime) -> bool {
        now >= self.next().start()
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// Why a text is not a month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a month is written YYYY-MM, e.g. 2026-11")]
pub struct MonthError;

impl FromStr for Month {
    type Err = MonthError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (y, m) = s.split_once('-').ok_or(MonthError)?;
        if y.len() != 4 || m.len() != 2 || !(y.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit())
        {
            return Err(MonthError);
        }
        let year = y.parse().map_err(|_| MonthError)?;
        let month = m.parse().map_err(|_| MonthError)?;
        Month::new(year, month).ok_or(MonthError)
    }
}

macro_rules! measures {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal, $rebuilt:literal;)*) => {
        /// What a cell counts. The stored names are stable: statistics outlive releases.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Measure {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Measure {
            /// Every measure.
            pub const ALL: &'static [Measure] = &[$(Measure::$variant,)*];

            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Measure::$variant => $name,)*
                }
            }

            /// Whether `silta stats rebuild` recomputes it from the ledger. The others count
            /// values (a band, a stage, an outcome, a delay) that the ledger, which keeps
            /// field names and never values, does not hold.
            pub fn from_ledger(self) -> bool {
                match self {
                    $(Measure::$variant => $rebuilt,)*
                }
            }

            /// The measure with this stored name.
            pub fn parse(s: &str) -> Option<Measure> {
                match s {
                    $($name => Some(Measure::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

measures! {
    /// Reports received, by what became of them (category: a [`ReportFate`] code).
    Reports = "reports", true;
    /// Refused reports and unforwarded ones, by each policy that decided (category: policy id).
    ReportPolicies = "report_policies", true;
    /// Alerts delivered to a social-services organisation's outbox on the resident's consent
    /// (one per recipient).
    AlertsSent = "alerts_sent", true;
    /// Alerts delivered on a statutory basis, without consent (not counted in `AlertsSent`).
    StatutoryNotices = "statutory_notices", true;
    /// Support notices sent or refused (category: `forwarded` or a refusal code).
    Notices = "notices", true;
    /// Consents recorded (enrolments and renewals).
    ConsentsRecorded = "consents_recorded", true;
    /// Withdrawals of consent.
    ConsentsWithdrawn = "consents_withdrawn", true;
    /// Consents whose validity ends in the month, still standing (recorded at enrolment,
    /// taken back when a consent ends early): once the month is closed, the consents that
    /// expired in it.
    ConsentsExpiring = "consents_expiring", false;
    /// Consents that ended before their validity: withdrawn or superseded.
    ConsentsEndedEarly = "consents_ended_early", false;
    /// Alerts acknowledged, by time from the report to the acknowledgement (category: a
    /// [`DELAY_BUCKETS`] label).
    AckDelay = "ack_delay", false;
    /// Support notices, by outcome (category: the outcome code).
    NoticeOutcomes = "notice_outcomes", false;
    /// A case's first support notice, by time since the case's first alert (category: a
    /// [`DELAY_BUCKETS`] label).
    FirstNoticeDelay = "first_notice_delay", false;
    /// A case's first alert, by months overdue (category: a [`months_bucket`] label).
    FirstAlertMonthsOverdue = "first_alert_months_overdue", false;
    /// A case's first alert, by eviction stage (category: the stage code).
    FirstAlertStage = "first_alert_stage", false;
}

/// What became of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReportFate {
    /// Delivered to at least one recipient.
    Forwarded,
    /// Accepted, but no recipient held a valid consent (or none could receive it).
    NotForwarded,
    /// Refused: the request was invalid (a field, an idempotency key used twice).
    RefusedValidation,
    /// Refused: the flow is not declared, or not for this purpose (purpose limitation).
    RefusedPurpose,
    /// Refused: the caller's role may not send it.
    RefusedRole,
    /// Refused by a policy.
    RefusedPolicy,
    /// Refused for another reason (authentication, the store).
    RefusedOther,
}

impl ReportFate {
    /// Every fate, in the order tables show them.
    pub const ALL: [ReportFate; 7] = [
        ReportFate::Forwarded,
        ReportFate::NotForwarded,
        ReportFate::RefusedValidation,
        ReportFate::RefusedPurpose,
        ReportFate::RefusedRole,
        ReportFate::RefusedPolicy,
        ReportFate::RefusedOther,
    ];

    /// The stored code.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportFate::Forwarded => "forwarded",
            ReportFate::NotForwarded => "not_forwarded",
            ReportFate::RefusedValidation => "refused_validation",
            ReportFate::RefusedPurpose => "refused_purpose",
            ReportFate::RefusedRole => "refused_role",
            ReportFate::RefusedPolicy => "refused_policy",
            ReportFate::RefusedOther => "refused_other",
        }
    }

    /// The fate of a refusal with this audit reason code and deciding policies: a policy
    /// refusal for the purpose or legal basis is purpose limitation, one for the sender's role
    /// a refusal by role.
    pub fn of_refusal<S: AsRef<str>>(reason: &str, policy_ids: &[S]) -> ReportFate {
        let decided_by = |id: &str| policy_ids.iter().any(|p| p.as_ref() == id);
        match reason {
            "invalid-argument" | "idempotency-conflict" | "cardinality-violation" => {
                ReportFate::RefusedValidation
            }
            "undeclared-flow" => ReportFate::RefusedPurpose,
            "role-not-allowed" => ReportFate::RefusedRole,
            "policy-denied"
                if decided_by("purpose-limitation") || decided_by("legal-basis-matches-flow") =>
            {
                ReportFate::RefusedPurpose
            }
            "policy-denied" if decided_by("sender-role") => ReportFate::RefusedRole,
            "policy-denied" => ReportFate::RefusedPolicy,
            _ => ReportFate::RefusedOther,
        }
    }
}

/// Delay buckets (upper bounds exclusive, in seconds) for the time to an acknowledgement and
/// to a first support notice; the last is open.
pub const DELAY_BUCKETS: [(&str, i64); 9] = [
    ("lt_1h", 3_600),
    ("1h_4h", 4 * 3_600),
    ("4h_1d", 86_400),
    ("1d_2d", 2 * 86_400),
    ("2d_3d", 3 * 86_400),
    ("3d_7d", 7 * 86_400),
    ("7d_14d", 14 * 86_400),
    ("14d_30d", 30 * 86_400),
    ("ge_30d", i64::MAX),
];

/// The bucket of a delay (negative delays, from clock steps, count as the first).
pub fn delay_bucket(delay: Duration) -> &'static str {
    let s = delay.whole_seconds();
    DELAY_BUCKETS
        .iter()
        .find(|(_, upper)| s < *upper)
        .map_or("ge_30d", |(label, _)| label)
}

/// Months-overdue buckets, in order.
pub const MONTHS_BUCKETS: [&str; 6] = ["0", "1", "2", "3", "4_5", "ge_6"];

/// The bucket of a months-overdue count: early warning is the point, so the first months are
/// counted one by one.
pub fn months_bucket(months: u32) -> &'static str {
    match months {
        0 => "0",
        1 => "1",
        2 => "2",
        3 => "3",
        4 | 5 => "4_5",
        _ => "ge_6",
    }
}

/// Where a cell counts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CellKey {
    /// The Helsinki month of the event.
    pub month: Month,
    /// What is counted.
    pub measure: Measure,
    /// The flow; empty where the measure is not per flow.
    pub flow: String,
    /// The landlord organisation; empty where none is known (a refused support notice).
    pub landlord: String,
    /// The social-services organisation; empty where none is (a report not forwarded).
    pub recipient: String,
    /// The bucket, outcome or reason; empty where the measure has none.
    pub category: String,
}

/// A counter and its count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// Where it counts.
    pub key: CellKey,
    /// The count (a decrement is negative).
    pub n: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn months_follow_helsinki_time() {
        // 22:30 UTC on 30 November is 00:30 on 1 December in Helsinki (EET, +2).
        assert_eq!(
            Month::of(datetime!(2026-11-30 22:30 UTC)).to_string(),
            "2026-12"
        );
        assert_eq!(
            Month::of(datetime!(2026-11-30 21:59 UTC)).to_string(),
            "2026-11"
        );
        // 21:30 UTC on 31 July is 00:30 on 1 August (EEST, +3).
        assert_eq!(
            Month::of(datetime!(2026-07-31 21:30 UTC)).to_string(),
            "2026-08"
        );
        assert_eq!(
            Month::of(datetime!(2026-07-31 20:59 UTC)).to_string(),
            "2026-07"
        );
        // Summer time 2026: 29 March 01:00 UTC to 25 October 01:00 UTC.
        assert_eq!(
            helsinki_offset(datetime!(2026-03-29 00:59 UTC)).whole_hours(),
            2
        );
        assert_eq!(
            helsinki_offset(datetime!(2026-03-29 01:00 UTC)).whole_hours(),
            3
        );
        assert_eq!(
            helsinki_offset(datetime!(2026-10-25 00:59 UTC)).whole_hours(),
            3
        );
        assert_eq!(
            helsinki_offset(datetime!(2026-10-25 01:00 UTC)).whole_hours(),
            2
        );
    }

    #[test]
    fn a_month_starts_at_helsinki_midnight_and_closes_when_the_next_begins() {
        let nov: Month = "2026-11".parse().unwrap(); // a valid literal
        assert_eq!(nov.start(), datetime!(2026-10-31 22:00 UTC));
        assert_eq!(nov.next().start(), datetime!(2026-11-30 22:00 UTC));
        assert_eq!(
            "2026-08".parse::<Month>().unwrap().start(),
            datetime!(2026-07-31 21:00 UTC)
        ); // a valid literal
        assert!(!nov.is_closed(datetime!(2026-11-30 21:59 UTC)));
        assert!(nov.is_closed(datetime!(2026-11-30 22:00 UTC)));
        assert_eq!(nov.previous().next(), nov);
        assert_eq!(
            "2026-12".parse::<Month>().unwrap().next().to_string(),
            "2027-01"
        ); // a valid literal
        for bad in [
            "2026-13",
            "2026-00",
            "26-11",
            "2026-1",
            "2026/11",
            "2026-11-01",
            "",
            "２０２６-11",
        ] {
            assert!(bad.parse::<Month>().is_err(), "{bad}");
        }
    }

    #[test]
    fn buckets_cover_every_value() {
        assert_eq!(delay_bucket(Duration::seconds(-5)), "lt_1h");
        assert_eq!(delay_bucket(Duration::minutes(59)), "lt_1h");
        assert_eq!(delay_bucket(Duration::hours(1)), "1h_4h");
        assert_eq!(delay_bucket(Duration::days(29)), "14d_30d");
        assert_eq!(delay_bucket(Duration::days(400)), "ge_30d");
        assert_eq!(months_bucket(0), "0");
        assert_eq!(months_bucket(5), "4_5");
        assert_eq!(months_bucket(u32::MAX), "ge_6");
        for m in Measure::ALL {
            assert_eq!(Measure::parse(m.as_str()), Some(*m));
        }
    }
}
