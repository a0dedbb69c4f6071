//! The repository's policies, loaded and decided the way the gateway does.

use silta_core::consent::{ConsentRecord, ConsentState};
use silta_core::policy::{
    ConsentStatus, ConsentView, DecisionInput, MessageKind, Policies, SourceFile,
};
use silta_core::report::EvictionStage;
use silta_core::{Caller, OrgId, Role};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const NOW: OffsetDateTime = datetime!(2026-11-23 12:00 UTC);

fn caller(org: &str, role: Role) -> Caller {
    Caller {
        org: OrgId::new(org).expect("valid"),
        role,
    }
}

fn view(status: ConsentStatus, covers_landlord: bool) -> ConsentView {
    ConsentView {
        status,
        consent_id: (status == ConsentStatus::Valid).then(|| "c-1".to_owned()),
        covers_landlord,
    }
}

fn decide(
    p: &Policies,
    flow: &str,
    sender: &Caller,
    purpose: &str,
    stage: Option<EvictionStage>,
    consent: &ConsentView,
) -> (bool, Vec<String>) {
    let flow = p.flow(flow).expect("declared flow");
    let input = DecisionInput {
        flow,
        sender,
        purpose,
        legal_basis: &flow.legal_basis,
        eviction_stage: stage,
    };
    let v = p.evaluate(&input, consent);
    (v.allowed, v.policy_ids)
}

#[test]
fn the_repository_policies_load_and_declare_every_message() {
    let p = Policies::builtin();
    for kind in MessageKind::ALL {
        assert!(
            p.flows().iter().any(|f| f.message == kind),
            "{kind:?} has no flow"
        );
    }
    assert_eq!(p.digest().len(), 64);
    assert!(
        p.flows().iter().any(|f| !f.requires_consent),
        "no statutory flow"
    );
}

#[test]
fn consent_flows_follow_the_consent_state_and_name_the_deciding_policy() {
    let p = Policies::builtin();
    let landlord = caller("city-housing", Role::Landlord);
    let purpose = "eviction-prevention";
    for flow in ["rent-arrears", "eviction-stage", "disturbance-notice"] {
        let stage = Some(EvictionStage::Warning);
        let (ok, ids) = decide(
            &p,
            flow,
            &landlord,
            purpose,
            stage,
            &view(ConsentStatus::Valid, false),
        );
        assert!(ok, "{flow}: {ids:?}");
        assert_eq!(ids.len(), 1, "{flow}: {ids:?}");
        assert!(ids[0].ends_with("-on-consent"), "{ids:?}");
        for (status, id) in [
            (ConsentStatus::Absent, "consent-absent"),
            (ConsentStatus::Withdrawn, "consent-withdrawn"),
            (ConsentStatus::Expired, "consent-expired"),
        ] {
            let (ok, ids) = decide(&p, flow, &landlord, purpose, stage, &view(status, false));
            assert!(!ok, "{flow} {status:?}");
            assert_eq!(ids, [id], "{flow} {status:?}");
        }
        let (ok, ids) = decide(
            &p,
            flow,
            &landlord,
            "debt-collection",
            stage,
            &view(ConsentStatus::Valid, true),
        );
        assert!(!ok);
        assert_eq!(ids, ["purpose-limitation"]);
        let ss = caller("helsinki-social", Role::SocialServices);
        let (ok, ids) = decide(
            &p,
            flow,
            &ss,
            purpose,
            stage,
            &view(ConsentStatus::Valid, true),
        );
        assert!(!ok);
        assert_eq!(ids, ["sender-role"]);
    }
}

#[test]
fn the_statutory_flow_needs_no_consent_but_only_carries_enforcement() {
    let p = Policies::builtin();
    let landlord = caller("city-housing", Role::Landlord);
    let flow = "eviction-enforcement-notice";
    let enforcement = Some(EvictionStage::EnforcementScheduled);
    let (ok, ids) = decide(
        &p,
        flow,
        &landlord,
        "eviction-prevention",
        enforcement,
        &ConsentView::ABSENT,
    );
    assert!(ok, "{ids:?}");
    assert_eq!(ids, ["eviction-enforcement-notice-statutory"]);
    let (ok, ids) = decide(
        &p,
        flow,
        &landlord,
        "eviction-prevention",
        Some(EvictionStage::Warning),
        &ConsentView::ABSENT,
    );
    assert!(!ok);
    assert_eq!(ids, ["statutory-notice-only-at-enforcement"]);
    assert!(p.reasons(&ids).contains("enforcement date"));
}

#[test]
fn support_notices_need_consent_that_covers_the_landlord() {
    let p = Policies::builtin();
    let ss = caller("helsinki-social", Role::SocialServices);
    let purpose = "eviction-prevention";
    let (ok, _) = decide(
        &p,
        "support-notice",
        &ss,
        purpose,
        None,
        &view(ConsentStatus::Valid, true),
    );
    assert!(ok);
    let (ok, ids) = decide(
        &p,
        "support-notice",
        &ss,
        purpose,
        None,
        &view(ConsentStatus::Valid, false),
    );
    assert!(!ok);
    assert_eq!(ids, ["support-notice-needs-consent-to-tell-landlord"]);
    let (ok, ids) = decide(
        &p,
        "support-notice",
        &ss,
        purpose,
        None,
        &view(ConsentStatus::Withdrawn, true),
    );
    assert!(!ok);
    assert_eq!(ids, ["consent-withdrawn"]);
}

#[test]
fn precheck_refuses_only_what_no_consent_could_allow() {
    let p = Policies::builtin();
    let landlord = caller("city-housing", Role::Landlord);
    let flow = p.flow("rent-arrears").expect("declared");
    let input = |purpose| DecisionInput {
        flow,
        sender: &landlord,
        purpose,
        legal_basis: &flow.legal_basis,
        eviction_stage: Some(EvictionStage::None),
    };
    assert!(p.precheck(&input("eviction-prevention")).is_ok());
    let refused = p
        .precheck(&input("debt-collection"))
        .expect_err("wrong purpose");
    assert_eq!(refused.policy_ids, ["purpose-limitation"]);
}

#[test]
fn the_consent_view_prefers_a_valid_consent_then_the_latest_state() {
    let rec = |id: &str, state, from_days: i64, until_days: i64| ConsentRecord {
        consent_id: id.into(),
        recipient: OrgId::new("ss-a").expect("valid"),
        purpose: "eviction-prevention".into(),
        valid_from: NOW + Duration::days(from_days),
        valid_until: NOW + Duration::days(until_days),
        state,
        covers_landlord: false,
        flows: vec!["rent-arrears".into()],
    };
    use ConsentState::*;
    let v = ConsentView::of(
        &[rec("a", Withdrawn, -10, 10), rec("b", Active, -5, 20)],
        NOW,
    );
    assert_eq!(
        (v.status, v.consent_id.as_deref()),
        (ConsentStatus::Valid, Some("b"))
    );
    let v = ConsentView::of(
        &[rec("a", Active, -10, -1), rec("b", Withdrawn, -5, 20)],
        NOW,
    );
    assert_eq!(v.status, ConsentStatus::Withdrawn);
    let v = ConsentView::of(
        &[rec("a", Withdrawn, -10, 1), rec("b", Active, -5, -1)],
        NOW,
    );
    assert_eq!(v.status, ConsentStatus::Expired);
    let v = ConsentView::of(&[rec("a", Superseded, -10, 10)], NOW);
    assert_eq!(v.status, ConsentStatus::Absent);
    // A withdrawn consent keeps what it said about the landlord: a refusal then names the
    // withdrawal alone.
    let told = ConsentRecord {
        covers_landlord: true,
        ..rec("a", Withdrawn, -10, 10)
    };
    let v = ConsentView::of(&[told], NOW);
    assert_eq!(
        (v.status, v.covers_landlord),
        (ConsentStatus::Withdrawn, true)
    );
    let v = ConsentView::of(&[rec("a", Active, 1, 10)], NOW);
    assert_eq!(v.status, ConsentStatus::Absent);
}

fn builtin_with(name: &str, edit: impl Fn(&str) -> String) -> Vec<SourceFile> {
    silta_core::policy::BUILTIN_FILES
        .iter()
        .map(|(n, t)| {
            SourceFile::new(
                format!("p/{n}"),
                if *n == name { edit(t) } else { (*t).to_owned() },
            )
        })
        .collect()
}

#[test]
fn broken_sets_are_refused_with_file_line_and_reason() {
    let cases: Vec<(Vec<SourceFile>, &str, &str)> = vec![
        (
            builtin_with("principles.cedar", |t| {
                t.replace("resource.flow_purpose", "resource.flow_porpoise")
            }),
            "p/principles.cedar:",
            "flow_porpoise",
        ),
        (
            builtin_with("principles.cedar", |t| {
                t.replace("ConsentState::\"absent\"", "\"absent\"")
            }),
            "p/principles.cedar:",
            "policy \"consent-absent\"",
        ),
        (
            builtin_with("flows.toml", |t| {
                t.replacen(
                    "months_overdue = \"pass\"",
                    "months_overdue = \"pass\"\nfree_text_note = \"pass\"",
                    1,
                )
            }),
            "p/flows.toml:",
            "free text never crosses",
        ),
        (
            builtin_with("flows.toml", |t| {
                t.replacen(
                    "months_overdue = \"pass\"",
                    "months_overdue = \"pass\"\nshoe_size = \"pass\"",
                    1,
                )
            }),
            "p/flows.toml:",
            "undeclared field \"shoe_size\"",
        ),
        (
            builtin_with("flows.toml", |t| {
                t.replacen("arrears_cents = \"band\"", "arrears_cents = \"pass\"", 1)
            }),
            "p/flows.toml:",
            "may cross only as a band",
        ),
        (
            builtin_with("landlord-to-social-services.cedar", |t| {
                t.replacen(
                    "Purpose::\"eviction-prevention\"",
                    "Purpose::\"marketing\"",
                    1,
                )
            }),
            "p/landlord-to-social-services.cedar:",
            "marketing",
        ),
        (
            builtin_with("flows.toml", |t| {
                t.replacen(
                    "purpose = \"eviction-prevention\"",
                    "purpose = \"marketing\"",
                    1,
                )
            }),
            "p/flows.toml:",
            "unknown purpose \"marketing\"",
        ),
        (
            // The first flow, rent-arrears, is on consent: it may not disclose identity.
            builtin_with("flows.toml", |t| {
                t.replacen(
                    "retention_days = 90",
                    "discloses_identity = true\nretention_days = 90",
                    1,
                )
            }),
            "p/flows.toml:",
            "`discloses_identity` is only allowed on a legal basis without consent",
        ),
        (
            builtin_with("support-notices.cedar", |t| {
                t.replacen("@id(\"support-notice-on-consent\")", "", 1)
            }),
            "p/support-notices.cedar:",
            "@id",
        ),
        (
            builtin_with("principles.cedar", |t| {
                t.replacen("forbid (principal", "forbid (principal,,", 1)
            }),
            "p/principles.cedar:",
            "",
        ),
    ];
    for (files, file, needle) in cases {
        let err = Policies::load(&files).expect_err(needle).to_string();
        assert!(err.contains(file), "{needle}: {err}");
        assert!(err.contains(needle), "{needle}: {err}");
        let located = err.lines().all(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|n| n.parse::<u32>().is_ok())
        });
        assert!(located, "no line number: {err}");
    }
}

#[test]
fn only_analysts_and_the_dpo_may_read_the_statistics() {
    let policies = Policies::builtin();
    for (role, allowed) in [
        (Role::Analyst, true),
        (Role::Dpo, true),
        (Role::Landlord, false),
        (Role::SocialServices, false),
        (Role::Gateway, false),
    ] {
        let caller = Caller {
            org: OrgId::new("some-org").expect("valid org"),
            role,
        };
        let v = policies.may_read_statistics(&caller);
        assert_eq!(v.allowed, allowed, "{role}");
        let expected = if allowed {
            "statistics-readers"
        } else {
            "default-deny"
        };
        assert_eq!(v.policy_ids, [expected], "{role}");
    }
}
