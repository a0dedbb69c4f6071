//! Offline verification throughput: decode every entry, hash it, fold it into the tree and
//! check the checkpoints, as `silta audit verify` does. Goal: ≥ 1 M entries/s.
//! Run: `cargo bench -p silta-ledger --bench verify`.

#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use silta_ledger::checkpoint::{Checkpoint, NoteSigner, NoteVerifier};
use silta_ledger::entry::Entry;
use silta_ledger::tree::Frontier;
use silta_ledger::verify::verify_export;

const ENTRIES: u64 = 100_000;

fn entry(i: u64) -> Vec<u8> {
    // The shape of a real disclosure record.
    Entry {
        time_ms: 1_795_000_000_000 + i64::try_from(i).unwrap_or(0),
        request_id: format!("{i:032x}"),
        actor_org: "city-housing".into(),
        actor_role: "landlord".into(),
        actor_person: None,
        action: "Landlord.ReportRentArrears".into(),
        flow_id: Some("rent-arrears".into()),
        outcome: "allow".into(),
        reason: "consent".into(),
        policy_ids: vec!["builtin/rent-arrears-requires-valid-consent".into()],
        subject: Some("ps1.k3zyzxx5yfe4azqixa7riyku4kmpb5us".into()),
        fields: [
            "report_month",
            "arrears_band",
            "months_overdue",
            "eviction_stage",
            "landlord_contact_office",
        ]
        .map(String::from)
        .to_vec(),
        recipients: vec!["helsinki-social".into()],
    }
    .encode()
    .expect("encodes")
}

fn bench(c: &mut Criterion) {
    let entries: Vec<Vec<u8>> = (0..ENTRIES).map(entry).collect();
    let signer = NoteSigner::from_seed("bench/audit", &[3; 32]).expect("signer");
    let verifier = NoteVerifier::parse(&signer.verifier_key()).expect("key");
    // A checkpoint every 1,000 entries, as the gateway publishes by default.
    let mut frontier = Frontier::new();
    let mut notes = Vec::new();
    for e in &entries {
        frontier.append(silta_ledger::leaf_hash(e), |_, _, _| {});
        if frontier.size().is_multiple_of(1_000) {
            let cp = Checkpoint {
                origin: "bench/audit".into(),
                size: frontier.size(),
                root: frontier.root(),
            };
            notes.push(signer.sign(&cp.body()).expect("signed"));
        }
    }
    let notes: Vec<&str> = notes.iter().map(String::as_str).collect();
    let mut group = c.benchmark_group("ledger");
    group.throughput(Throughput::Elements(ENTRIES));
    group.sample_size(20);
    group.bench_function("verify_export_100k", |b| {
        b.iter(|| {
            verify_export(
                entries.iter().map(Vec::as_slice),
                &notes,
                &verifier,
                "bench/audit",
            )
            .expect("verifies")
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
