//! The cost of one group-commit transaction (64 ledger appends, then a durable commit), and of
//! the store's side of a batch of 64 reports (with and without reading the lookups ahead), on
//! SQLite and on PostgreSQL, measured in one run so they compare. PostgreSQL is measured when
//! `SILTA_TEST_POSTGRES_URL` names a server; every PostgreSQL write transaction takes the
//! cluster-wide advisory lock, so this is also the cost of that lock.
//! Run: `SILTA_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p silta-store --bench commit`.

#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use silta_core::audit::{AuditRecord, Outcome};
use silta_core::{Caller, OrgId, Pseudonym, Role};
use silta_store::testing::TempDatabase;
use silta_store::{Lookups, NewReport, PostgresStore, SqliteStore, Store};

const BATCH: usize = 64;

async fn batch(store: &dyn Store, caller: &Caller) {
    let mut tx = store.begin().await.expect("begin");
    for i in 0..BATCH {
        let record = AuditRecord::new(
            time::OffsetDateTime::now_utc(),
            &format!("req-{i}"),
            caller,
            "Landlord.ReportRentArrears",
            Outcome::Allow,
            "disclosed",
        );
        tx.append_audit(&record).await.expect("append");
    }
    tx.commit().await.expect("commit");
}

/// The store's side of a batch of 64 reports as the committer makes it: look up each
/// report's idempotency key and the resident's consents, store the report, append its audit
/// entry, commit; with the lookups read ahead in one query each (`prefetch`) or one by one.
async fn reports(store: &dyn Store, caller: &Caller, round: u64, read_ahead: bool) {
    let keys: Vec<String> = (0..BATCH).map(|i| format!("k-{round}-{i}")).collect();
    let subjects: Vec<Pseudonym> = (0..BATCH)
        .map(|i| Pseudonym::from_stored(format!("ps1.subject{i}")))
        .collect();
    let mut tx = store.begin().await.expect("begin");
    if read_ahead {
        tx.prefetch(&Lookups {
            reports: keys.iter().map(|k| (&caller.org, k.as_str())).collect(),
            consents: subjects
                .iter()
                .map(|s| (s, "eviction-prevention"))
                .collect(),
        })
        .await
        .expect("prefetch");
    }
    let now = time::OffsetDateTime::now_utc();
    for (i, (key, subject)) in keys.iter().zip(&subjects).enumerate() {
        assert!(
            tx.find_report(&caller.org, key)
                .await
                .expect("find")
                .is_none()
        );
        tx.consents_for(subject, "eviction-prevention")
            .await
            .expect("consents");
        tx.insert_report(&NewReport {
            report_id: &format!("r-{round}-{i}"),
            landlord: &caller.org,
            idempotency_key: key,
            fingerprint: &[7; 32],
            received_at: now,
        })
        .await
        .expect("report");
        let record = AuditRecord::new(
            now,
            key,
            caller,
            "Landlord.ReportRentArrears",
            Outcome::Deny,
            "no-consent",
        );
        tx.append_audit(&record).await.expect("append");
    }
    tx.commit().await.expect("commit");
}

fn bench_reports(c: &mut Criterion, rt: &tokio::runtime::Runtime, caller: &Caller) {
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = rt
        .block_on(SqliteStore::open(&dir.path().join("reports.db")))
        .expect("sqlite");
    let pg_db = rt.block_on(TempDatabase::create("report batch bench"));
    let pg = pg_db
        .as_ref()
        .map(|db| rt.block_on(PostgresStore::open(&db.url)).expect("postgres"));
    let mut group = c.benchmark_group("batch_of_64_reports");
    group.sample_size(20);
    let round = std::cell::Cell::new(0u64);
    let next = || {
        round.set(round.get() + 1);
        round.get()
    };
    for read_ahead in [true, false] {
        let name = if read_ahead {
            "read ahead"
        } else {
            "one by one"
        };
        group.bench_function(format!("sqlite, {name}"), |b| {
            b.iter(|| rt.block_on(reports(&sqlite, caller, next(), read_ahead)))
        });
        if let Some(pg) = &pg {
            group.bench_function(format!("postgres, {name}"), |b| {
                b.iter(|| rt.block_on(reports(pg, caller, next(), read_ahead)))
            });
        }
    }
    group.finish();
    if let (Some(pg), Some(db)) = (pg, pg_db) {
        rt.block_on(pg.close());
        rt.block_on(db.drop_now());
    }
    rt.block_on(sqlite.close());
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let caller = Caller {
        org: OrgId::new("city-housing").expect("valid"),
        role: Role::Landlord,
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = rt
        .block_on(SqliteStore::open(&dir.path().join("bench.db")))
        .expect("sqlite");
    let mut group = c.benchmark_group("commit_64_appends");
    group.sample_size(20);
    group.bench_function("sqlite", |b| {
        b.iter(|| rt.block_on(batch(&sqlite, &caller)))
    });
    if let Some(db) = rt.block_on(TempDatabase::create("commit bench")) {
        let pg = rt.block_on(PostgresStore::open(&db.url)).expect("postgres");
        group.bench_function("postgres", |b| b.iter(|| rt.block_on(batch(&pg, &caller))));
        rt.block_on(pg.close());
        rt.block_on(db.drop_now());
    }
    group.finish();
    rt.block_on(sqlite.close());
    bench_reports(c, &rt, &caller);
}

criterion_group!(benches, bench);
criterion_main!(benches);
