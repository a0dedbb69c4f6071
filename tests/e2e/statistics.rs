//! Programme statistics: counted exactly, rebuilt from the ledger to the same figures, released
//! to analysts and the DPO only, with no person in them.

use std::collections::{BTreeMap, BTreeSet};

use silta_core::stats::{Month, months_bucket};
use silta_server::proto;
use silta_server::proto::{EvictionStage, SupportOutcome};
use silta_store::Store;
use silta_tests::*;
use tokio_stream::StreamExt;
use tonic::Code;

/// A counter as the test names it: month, measure, flow, landlord, recipient, category.
type Key = (String, String, String, String, String, String);

fn key(m: &str, measure: &str, flow: &str, landlord: &str, recipient: &str, cat: &str) -> Key {
    (
        m.to_owned(),
        measure.to_owned(),
        flow.to_owned(),
        landlord.to_owned(),
        recipient.to_owned(),
        cat.to_owned(),
    )
}

async fn counters(store: &dyn Store, until: Month) -> BTreeMap<Key, i64> {
    store
        .stat_cells(until)
        .await
        .expect("statistics read")
        .into_iter()
        .map(|c| {
            let k = c.key;
            (
                (
                    k.month.to_string(),
                    k.measure.as_str().to_owned(),
                    k.flow,
                    k.landlord,
                    k.recipient,
                    k.category,
                ),
                c.n,
            )
        })
        .collect()
}

/// What the test sent, counted by the test itself.
#[derive(Default)]
struct Expected(BTreeMap<Key, i64>);

impl Expected {
    fn add(&mut self, k: Key, n: i64) {
        *self.0.entry(k).or_insert(0) += n;
    }
}

const RENT: &str = "rent-arrears";
const EVICTION: &str = "eviction-stage";
const DISTURBANCE: &str = "disturbance-notice";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_synthetic_month_is_counted_exactly_and_rebuilt_from_the_ledger() {
    let gw = TestGateway::start().await;
    let m = Month::of(time::OffsetDateTime::now_utc());
    let ms = m.to_string();
    let hetus = valid_hetus();
    let mut want = Expected::default();

    // Residents 0-19 consent to SOCIAL_A, 20-29 to SOCIAL_B; the others are nobody's clients.
    let recipient_of = |i: usize| match i {
        0..=19 => Some(SOCIAL_A),
        20..=29 => Some(SOCIAL_B),
        _ => None,
    };
    let mut consent_ids = BTreeMap::new();
    for (i, hetu) in hetus.iter().enumerate() {
        let Some(org) = recipient_of(i) else { continue };
        let receipt = gw
            .social(org)
            .await
            .enrol_client(enrol(hetu))
            .await
            .expect("enrolled")
            .into_inner();
        consent_ids.insert(i, receipt.consent_id);
        want.add(key(&ms, "consents_recorded", "", "", org, ""), 1);
    }
    let expires = Month::of(time::OffsetDateTime::now_utc() + time::Duration::days(365));
    want.add(
        key(
            &expires.to_string(),
            "consents_expiring",
            "",
            "",
            SOCIAL_A,
            "",
        ),
        20,
    );
    want.add(
        key(
            &expires.to_string(),
            "consents_expiring",
            "",
            "",
            SOCIAL_B,
            "",
        ),
        10,
    );

    // A report's effect on the counters, whichever flow it is on.
    let forwarded =
        |want: &mut Expected, flow: &str, landlord: &str, resident: usize| match recipient_of(
            resident,
        ) {
            Some(org) => {
                want.add(key(&ms, "reports", flow, landlord, "", "forwarded"), 1);
                want.add(key(&ms, "alerts_sent", flow, landlord, org, ""), 1);
            }
            None => want.add(key(&ms, "reports", flow, landlord, "", "not_forwarded"), 1),
        };

    // Phase 1, in order: every landlord's first report on every resident opens the cases.
    for landlord in [LANDLORD, LANDLORD_B] {
        let mut client = gw.landlord(landlord).await;
        for (i, hetu) in hetus.iter().enumerate() {
            let months = u32::try_from(i % 7).expect("small");
            let mut r = report(&format!("first-{i}"), hetu);
            r.months_overdue = months;
            client.report_rent_arrears(r).await.expect("accepted");
            forwarded(&mut want, RENT, landlord, i);
            if let Some(org) = recipient_of(i) {
                want.add(
                    key(
                        &ms,
                        "first_alert_months_overdue",
                        RENT,
                        landlord,
                        org,
                        months_bucket(months),
                    ),
                    1,
                );
                want.add(
                    key(&ms, "first_alert_stage", RENT, landlord, org, "warning"),
                    1,
                );
            }
        }
    }

    // Phase 2, concurrently: thousands of reports on three flows, some refused.
    const REPORTS: usize = 2_400;
    const TASKS: usize = 8;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let lls = [gw.landlord(LANDLORD).await, gw.landlord(LANDLORD_B).await];
        let hetus = hetus.clone();
        tasks.push(tokio::spawn(async move {
            let mut lls = lls;
            for i in (t..REPORTS).step_by(TASKS) {
                let hetu = &hetus[i % hetus.len()];
                let client = &mut lls[i % 2];
                let k = format!("r-{i}");
                let result = match i % 4 {
                    _ if i % 97 == 0 => {
                        let mut r = report(&k, hetu);
                        r.months_overdue = 999;
                        client.report_rent_arrears(r).await.map(|_| ())
                    }
                    _ if i % 89 == 0 => {
                        let mut r = report(&k, hetu);
                        r.purpose = "debt-collection".into();
                        client.report_rent_arrears(r).await.map(|_| ())
                    }
                    0 | 1 => {
                        let mut r = report(&k, hetu);
                        r.months_overdue = u32::try_from(i % 7).expect("small");
                        client.report_rent_arrears(r).await.map(|_| ())
                    }
                    2 => client
                        .report_eviction_stage(eviction(
                            &k,
                            hetu,
                            EvictionStage::CourtApplication,
                            CONSENT,
                        ))
                        .await
                        .map(|_| ()),
                    _ => client
                        .report_disturbance(disturbance(&k, hetu))
                        .await
                        .map(|_| ()),
                };
                let refused = i % 97 == 0 || (i % 89 == 0);
                match (refused, result) {
                    (false, Ok(())) => {}
                    (true, Err(s)) => assert!(
                        matches!(s.code(), Code::InvalidArgument | Code::PermissionDenied),
                        "{i}: {s:?}"
                    ),
                    (_, other) => panic!("report {i}: {other:?}"),
                }
            }
        }));
    }
    for i in 0..REPORTS {
        let resident = i % hetus.len();
        let landlord = [LANDLORD, LANDLORD_B][i % 2];
        if i % 97 == 0 {
            // Refused before its flow is known.
            want.add(
                key(&ms, "reports", "", landlord, "", "refused_validation"),
                1,
            );
        } else if i % 89 == 0 {
            want.add(
                key(&ms, "reports", RENT, landlord, "", "refused_purpose"),
                1,
            );
        } else {
            let flow = [RENT, RENT, EVICTION, DISTURBANCE][i % 4];
            forwarded(&mut want, flow, landlord, resident);
        }
    }
    for t in tasks {
        t.await.expect("reporting task");
    }

    // SOCIAL_A acknowledges every alert it received, at once: each within the first hour.
    let to_a: i64 = want
        .0
        .iter()
        .filter(|(k, _)| k.1 == "alerts_sent" && k.4 == SOCIAL_A)
        .map(|(_, n)| n)
        .sum();
    let mut social_a = gw.social(SOCIAL_A).await;
    let mut stream = social_a
        .subscribe_alerts(proto::SubscribeAlertsRequest { after_sequence: 0 })
        .await
        .expect("subscribed")
        .into_inner();
    let mut alerts = Vec::new();
    while alerts.len() < usize::try_from(to_a).expect("count") {
        let next = tokio::time::timeout(std::time::Duration::from_secs(30), stream.next())
            .await
            .expect("alerts keep coming")
            .expect("stream open")
            .expect("alert");
        alerts.push(next);
    }
    drop(stream);
    let last = alerts.last().expect("alerts").sequence;
    let acked = social_a
        .ack_alerts(proto::AckAlertsRequest {
            up_to_sequence: last,
            sequences: vec![],
        })
        .await
        .expect("acked")
        .into_inner();
    assert_eq!(i64::try_from(acked.acknowledged).expect("count"), to_a);
    for (k, n) in want.0.clone() {
        if k.1 == "alerts_sent" && k.4 == SOCIAL_A {
            want.add(key(&ms, "ack_delay", &k.2, &k.3, SOCIAL_A, "lt_1h"), n);
        }
    }

    // Support notices on the first ten cases (their first alerts came first), with every
    // outcome; then a second notice on the first case, which is not its first.
    let outcomes = [
        SupportOutcome::SupportEngaged,
        SupportOutcome::PaymentCommitment,
        SupportOutcome::ClientNotReached,
        SupportOutcome::CaseClosed,
    ];
    let codes = [
        "support_engaged",
        "payment_commitment",
        "client_not_reached",
        "case_closed",
    ];
    // Phase 1 was sent in order, LANDLORD first: SOCIAL_A's first ten alerts open LANDLORD's
    // cases of residents 0-9.
    let cases: Vec<(String, &str)> = alerts
        .iter()
        .take(10)
        .map(|a| (a.case_ref.clone(), LANDLORD))
        .collect();
    let distinct: BTreeSet<&String> = cases.iter().map(|(c, _)| c).collect();
    assert_eq!(distinct.len(), 10, "ten cases");
    for (n, (case_ref, landlord)) in cases
        .iter()
        .take(10)
        .chain(cases.iter().take(1))
        .enumerate()
    {
        let outcome = outcomes[n % 4];
        let mut notice = proto::SendSupportNoticeRequest {
            idempotency_key: format!("n-{n}"),
            case_ref: case_ref.clone(),
            purpose: "eviction-prevention".into(),
            legal_basis: CONSENT.into(),
            outcome: outcome.into(),
            ..Default::default()
        };
        if outcome == SupportOutcome::PaymentCommitment {
            notice.commitment_cents = 50_000;
            notice.commitment_month = "2027-03".into();
        }
        social_a
            .send_support_notice(notice)
            .await
            .expect("notice sent");
        want.add(
            key(
                &ms,
                "notices",
                "support-notice",
                landlord,
                SOCIAL_A,
                "forwarded",
            ),
            1,
        );
        want.add(
            key(
                &ms,
                "notice_outcomes",
                "support-notice",
                landlord,
                SOCIAL_A,
                codes[n % 4],
            ),
            1,
        );
        if n < 10 {
            want.add(
                key(
                    &ms,
                    "first_notice_delay",
                    "support-notice",
                    landlord,
                    SOCIAL_A,
                    "lt_1h",
                ),
                1,
            );
        }
    }

    // SOCIAL_B's client 20 withdraws: the consent ended early and will not expire.
    gw.social(SOCIAL_B)
        .await
        .withdraw_consent(proto::WithdrawConsentRequest {
            target: Some(proto::withdraw_consent_request::Target::ConsentId(
                consent_ids[&20].clone(),
            )),
        })
        .await
        .expect("withdrawn");
    want.add(key(&ms, "consents_withdrawn", "", "", SOCIAL_B, ""), 1);
    want.add(key(&ms, "consents_ended_early", "", "", SOCIAL_B, ""), 1);
    want.add(
        key(
            &expires.to_string(),
            "consents_expiring",
            "",
            "",
            SOCIAL_B,
            "",
        ),
        -1,
    );

    if Month::of(time::OffsetDateTime::now_utc()) != m {
        eprintln!("the month turned during the test; its counts span two months, not compared");
        return;
    }
    let store = silta_server::open_store(&gw.config.store)
        .await
        .expect("store");
    let live = counters(&*store, expires).await;
    // Every counter the test can count independently, exactly; the policies that decided
    // refusals are checked apart (their ids are the policy set's).
    let comparable: BTreeMap<Key, i64> = live
        .iter()
        .filter(|(k, _)| k.1 != "report_policies")
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    let expected: BTreeMap<Key, i64> = want.0.into_iter().filter(|(_, n)| *n != 0).collect();
    assert_eq!(comparable, expected);
    let purpose_refusals: i64 = live
        .iter()
        .filter(|(k, _)| k.1 == "report_policies" && k.5 == "purpose-limitation")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        purpose_refusals,
        i64::try_from((0..REPORTS).filter(|i| i % 89 == 0 && i % 97 != 0).count()).expect("small")
    );

    // The rebuild recomputes every ledger-derived counter to the same figure.
    let rebuilt = silta_server::statistics::rebuild(&*store)
        .await
        .expect("rebuild");
    assert!(rebuilt.entries > REPORTS as u64, "{rebuilt:?}");
    assert_eq!(counters(&*store, expires).await, live);

    // No pseudonym, case reference or identity code in the table, nor in what is released.
    let orgs: BTreeSet<&str> = ["", LANDLORD, LANDLORD_B, SOCIAL_A, SOCIAL_B].into();
    for k in live.keys() {
        assert!(
            orgs.contains(k.3.as_str()) && orgs.contains(k.4.as_str()),
            "{k:?}"
        );
        assert!(
            ["", RENT, EVICTION, DISTURBANCE, "support-notice"].contains(&k.2.as_str()),
            "{k:?}"
        );
    }
    let stored = gw
        .query_strings(
            "SELECT month || ' ' || measure || ' ' || flow_id || ' ' || landlord_org || ' ' || \
             recipient_org || ' ' || category FROM stat_cells",
        )
        .await
        .join("\n");
    let cells = store.stat_cells(m).await.expect("cells");
    let release = silta_server::statistics::release_month(&cells, m, 5);
    let csv = silta_server::stats_render::csv(&ms, &release.tables);
    let svg = silta_server::stats_render::svg(&silta_server::statistics::chart(
        std::slice::from_ref(&release),
    ));
    for text in [&stored, &csv, &svg] {
        for hetu in &hetus {
            assert!(
                !text.contains(hetu.as_str()),
                "an identity code in the statistics"
            );
        }
        for a in &alerts {
            assert!(
                !text.contains(&a.case_ref),
                "a case reference in the statistics"
            );
            assert!(
                !text.contains(&a.subject_pseudonym),
                "a pseudonym in the statistics"
            );
        }
    }
    store.close().await;
}

#[tokio::test]
async fn statistics_are_released_for_closed_months_to_analysts_and_the_dpo_only() {
    let gw = TestGateway::start().await;
    let now = time::OffsetDateTime::now_utc();
    let this = Month::of(now);
    let last = this.previous();
    // Last month's counters, as if the gateway had counted them then: one landlord with many
    // forwarded reports, one with two (a small count, suppressed).
    gw.tamper(&format!(
        "INSERT INTO stat_cells VALUES
           ('{last}', 'reports', 'rent-arrears', 'landlord-a', '', 'forwarded', 40),
           ('{last}', 'reports', 'rent-arrears', 'landlord-a', '', 'not_forwarded', 12),
           ('{last}', 'reports', 'rent-arrears', 'landlord-b', '', 'forwarded', 2),
           ('{last}', 'reports', 'rent-arrears', 'landlord-b', '', 'not_forwarded', 9)"
    ))
    .await;
    let ledger_before = gw.query_strings("SELECT action FROM audit").await.len();

    for org in [ANALYST, DPO] {
        let release = gw
            .audit(org)
            .await
            .statistics(proto::StatisticsRequest {
                month: last.to_string(),
            })
            .await
            .unwrap_or_else(|s| panic!("{org}: {s:?}"))
            .into_inner();
        assert_eq!(release.month, last.to_string());
        assert_eq!(release.threshold, 5);
        let ids: Vec<&str> = release.tables.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "reports",
                "report_policies",
                "alerts_sent",
                "statutory_notices",
                "ack_delay",
                "support_notices",
                "notice_outcomes",
                "first_notice_delay",
                "first_alert_months_overdue",
                "first_alert_stage",
                "consents",
                "consents_active"
            ]
        );
        let reports = &release.tables[0];
        let b = reports
            .rows
            .iter()
            .find(|r| r.label == "rent-arrears · landlord-b")
            .expect("row");
        let a = reports
            .rows
            .iter()
            .find(|r| r.label == "rent-arrears · landlord-a")
            .expect("row");
        // 2 is under the threshold; its partners in the row and the column go with it, so
        // that neither the row total nor the column total gives it away.
        assert!(b.values[0].suppressed && b.values[0].count == 0);
        assert!(b.values[1].suppressed, "the row's partner");
        assert!(
            a.values[0].suppressed && a.values[1].suppressed,
            "the column partners"
        );
        assert_eq!(a.total.as_ref().map(|t| t.count), Some(52));
        assert_eq!(b.total.as_ref().map(|t| t.count), Some(11));
    }
    let ledger = gw
        .query_strings("SELECT action || ' ' || reason FROM audit")
        .await;
    assert_eq!(ledger.len(), ledger_before + 2);
    assert!(
        ledger
            .iter()
            .filter(|a| *a == "Audit.Statistics statistics-read")
            .count()
            == 2
    );

    // The month still running is not released; a malformed month names the field.
    let mut analyst = gw.audit(ANALYST).await;
    let err = analyst
        .statistics(proto::StatisticsRequest {
            month: this.to_string(),
        })
        .await
        .expect_err("an open month");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    for bad in ["2026-13", "", "november", "2026-11-01"] {
        let err = analyst
            .statistics(proto::StatisticsRequest { month: bad.into() })
            .await
            .expect_err("malformed");
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
        let details = tonic_types::StatusExt::get_error_details(&err);
        let fields: Vec<&str> = details
            .bad_request()
            .map(|b| {
                b.field_violations
                    .iter()
                    .map(|v| v.field.as_str())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(fields, ["month"], "{bad}");
    }

    // The analyst reads statistics and nothing else; other roles do not read them.
    let err = analyst
        .get_retention(proto::GetRetentionRequest {})
        .await
        .expect_err("an analyst is not the DPO");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = gw
        .social(ANALYST)
        .await
        .enrol_client(enrol(&valid_hetus()[0]))
        .await
        .expect_err("an analyst enrols no one");
    assert_eq!(err.code(), Code::PermissionDenied);
    for org in [LANDLORD, SOCIAL_A] {
        let err = gw
            .audit(org)
            .await
            .statistics(proto::StatisticsRequest {
                month: last.to_string(),
            })
            .await
            .expect_err("not for this role");
        assert_eq!(err.code(), Code::PermissionDenied, "{org}");
    }
}
