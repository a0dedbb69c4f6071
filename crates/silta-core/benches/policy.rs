//! The cost of one policy decision: building the Cedar entities for one request and
//! evaluating the repository's policy set, and the same decision remembered. Goal: ≤ 20 µs.
//! Run: `cargo bench -p silta-core --bench policy`.

#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use silta_core::policy::{ConsentStatus, ConsentView, DecisionInput, Policies};
use silta_core::report::EvictionStage;
use silta_core::{Caller, OrgId, Role};

fn bench(c: &mut Criterion) {
    let policies = Policies::builtin();
    let flow = policies.flow("rent-arrears").expect("declared");
    let landlord = Caller {
        org: OrgId::new("city-housing").expect("valid"),
        role: Role::Landlord,
    };
    let input = DecisionInput {
        flow,
        sender: &landlord,
        purpose: "eviction-prevention",
        legal_basis: &flow.legal_basis,
        eviction_stage: Some(EvictionStage::Warning),
    };
    let valid = ConsentView {
        status: ConsentStatus::Valid,
        consent_id: Some("c-1".into()),
        covers_landlord: false,
    };
    assert!(policies.evaluate(&input, &valid).allowed);
    let withdrawn = ConsentView {
        status: ConsentStatus::Withdrawn,
        ..ConsentView::ABSENT
    };
    // Cedar itself, every time: entities built, policies evaluated.
    c.bench_function("policy_decision_cedar_permit", |b| {
        b.iter(|| policies.evaluate_uncached(&input, &valid))
    });
    c.bench_function("policy_decision_cedar_deny_withdrawn", |b| {
        b.iter(|| policies.evaluate_uncached(&input, &withdrawn))
    });
    // What the gateway pays per decision once a (sender, flow, consent state) was seen.
    c.bench_function("policy_decision_remembered", |b| {
        b.iter(|| policies.evaluate(&input, &valid))
    });
    c.bench_function("policy_set_load", |b| b.iter(Policies::builtin));
}

criterion_group!(benches, bench);
criterion_main!(benches);
