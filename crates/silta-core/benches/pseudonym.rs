//! The cost of one pseudonym and of validating one report. Goal: pseudonym ≤ 2 µs.
//! Run: `cargo bench -p silta-core --bench pseudonym`.

#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use silta_core::report::{EvictionStage, RentArrearsInput, ReportHeader, validate_rent_arrears};
use silta_core::{Domain, Hetu, HetuRules, MasterSecret, OrgId, Pseudonymiser};

fn bench(c: &mut Criterion) {
    let rules = HetuRules {
        allow_temporary: true,
    };
    let secret: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let p = Pseudonymiser::new(MasterSecret::from_bytes(&secret).expect("strong"), 1);
    let hetu = Hetu::parse("150385-9345", rules).expect("valid");
    let org = Domain::Org(OrgId::new("helsinki-social").expect("valid"));
    let _ = p.pseudonym(&hetu, &org); // derive and cache the domain key, as a running gateway has
    c.bench_function("pseudonym", |b| b.iter(|| p.pseudonym(&hetu, &org)));
    c.bench_function("hetu_parse", |b| {
        b.iter(|| Hetu::parse("150385-9345", rules))
    });
    let input = RentArrearsInput {
        header: ReportHeader {
            idempotency_key: "r-2026-11-0001",
            hetu: "150385-9345",
            tenancy_ref: "KALLIO-12-B-34",
            purpose: "eviction-prevention",
            legal_basis: "gdpr-6-1-a-consent",
            landlord_contact_office: "Kallio customer service",
        },
        arrears_cents: 184_250,
        months_overdue: 3,
        eviction_stage: Some(EvictionStage::Warning),
        free_text_note: "Tenant mentioned losing their job in September.",
    };
    c.bench_function("validate_report", |b| {
        b.iter(|| validate_rent_arrears(&input, rules))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
