//! The cost of one group-commit transaction (64 ledger appends, then a durable commit) on
//! SQLite and on PostgreSQL, measured in one run so the two compare. PostgreSQL is measured when
//! `SILTA_TEST_POSTGRES_URL` names a server; every PostgreSQL write transaction takes the
//! cluster-wide advisory lock, so this is also the cost of that lock.
//! Run: `SILTA_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p silta-store --bench commit`.

#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use silta_core::audit::{AuditRecord, Outcome};
use silta_core::{Caller, OrgId, Role};
use silta_store::testing::TempDatabase;
use silta_store::{PostgresStore, SqliteStore, Store};

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
}

criterion_group!(benches, bench);
criterion_main!(benches);
