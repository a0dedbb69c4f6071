//! The load generator: a tonic client over mTLS sending `ReportRentArrears`, closed-loop (N
//! callers, each sending its next report when the last is answered) or open-loop (a fixed rate,
//! latency counted from when each request was due, so a stalled server cannot hide its queue).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use silta_server::proto::landlord_client::LandlordClient;
use silta_server::proto::social_services_client::SocialServicesClient;
use silta_server::proto::{self, EvictionStage};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Microsecond latency histogram, 1 µs to 60 s, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts (low ≥ 1, high ≥ 2 × low, sigfig ≤ 5).
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid constant bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Synthetic identity codes: individual numbers 900–999 (never given to a real person), 100 per
/// day of birth from 1 January 1960 on, each with its correct check character.
pub(crate) fn synthetic_hetu(i: usize) -> String {
    const CHECK: &[u8; 31] = b"0123456789ABCDEFHJKLMNPRSTUVWXY";
    let day = time::Date::from_calendar_date(1960, time::Month::January, 1)
        .expect("valid constant date")
        + time::Duration::days(i64::try_from(i / 100).unwrap_or(0));
    let n = 900 + u32::try_from(i % 100).unwrap_or(0);
    let yy = day.year() % 100;
    let marker = if day.year() < 2000 { '-' } else { 'A' };
    let base = format!("{:02}{:02}{yy:02}", day.day(), u8::from(day.month()));
    let value = base.parse::<u32>().unwrap_or(0) * 1000 + n;
    let check = char::from(CHECK[(value % 31) as usize]);
    format!("{base}{marker}{n:03}{check}")
}

/// The residents reports are about: `2 × enrolled` codes, of which the even-numbered ones are
/// clients of social services with consent, so half of all reports raise an alert.
pub(crate) struct Population {
    pub(crate) hetus: Vec<String>,
    /// When the last report about resident `i` was sent, in µs since `epoch` (0: never).
    sent_at: Vec<AtomicU64>,
    epoch: Instant,
    /// Subject pseudonym (social services' domain) → resident index.
    pseudonyms: Mutex<HashMap<String, usize>>,
    next: AtomicU64,
    /// This run's part of every idempotency key, so reruns against one database never collide.
    run: String,
}

impl Population {
    pub(crate) fn new(enrolled: usize) -> Arc<Population> {
        let n = enrolled * 2;
        let mut nonce = [0u8; 4];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce);
        Arc::new(Population {
            hetus: (0..n).map(synthetic_hetu).collect(),
            sent_at: (0..n).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            pseudonyms: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            // Letters only (a–p per nibble): digits here followed by the counter could spell an
            // identity code ("…120385-1234"), which the gateway rightly refuses in a key.
            run: nonce
                .iter()
                .flat_map(|b| [b >> 4, b & 0x0f])
                .map(|n| char::from(b'a' + n))
                .collect(),
        })
    }

    /// The next report: residents in turn, so the same one comes round again only after every
    /// other has been reported (long after its alert was delivered).
    fn next_report(&self) -> (usize, proto::ReportRentArrearsRequest) {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        let i = usize::try_from(k).unwrap_or(0) % self.hetus.len();
        (
            i,
            proto::ReportRentArrearsRequest {
                idempotency_key: format!("bench-{}-{k}", self.run),
                hetu: self.hetus[i].clone(),
                tenancy_ref: format!("KALLIO-{}-B-{}", i % 97, i % 13),
                arrears_cents: 184_250,
                months_overdue: 3,
                eviction_stage: EvictionStage::Warning.into(),
                landlord_contact_office: "Kallio customer service".into(),
                free_text_note: String::new(),
                purpose: "eviction-prevention".into(),
                legal_basis: "gdpr-6-1-a-consent".into(),
            },
        )
    }

    fn mark_sent(&self, i: usize, at: Instant) {
        self.sent_at[i].store(micros(at - self.epoch), Ordering::Relaxed);
    }

    fn delivery_latency(&self, pseudonym: &str, now: Instant) -> Option<u64> {
        let i = *self.pseudonyms.lock().ok()?.get(pseudonym)?;
        let sent = self.sent_at[i].load(Ordering::Relaxed);
        (sent != 0).then(|| micros(now - self.epoch).saturating_sub(sent).max(1))
    }
}

/// One measured run.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) elapsed: Duration,
    pub(crate) latency: Histogram<u64>,
}

impl Run {
    pub(crate) fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// Latency at `q` (0..1) in milliseconds.
    pub(crate) fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

#[derive(Default)]
struct Tally {
    requests: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Sends reports through `channels` (callers spread over them round-robin).
#[derive(Clone)]
pub(crate) struct Load {
    channels: Vec<Channel>,
    population: Arc<Population>,
}

impl Load {
    pub(crate) fn new(channels: Vec<Channel>, population: Arc<Population>) -> Load {
        Load {
            channels,
            population,
        }
    }

    /// `concurrency` callers, each sending its next report as soon as the last is answered,
    /// for `duration`.
    pub(crate) async fn closed(&self, concurrency: usize, duration: Duration) -> Run {
        let start = Instant::now();
        let deadline = start + duration;
        let mut tasks = Vec::with_capacity(concurrency);
        for c in 0..concurrency {
            let mut client = LandlordClient::new(self.channels[c % self.channels.len()].clone());
            let population = self.population.clone();
            tasks.push(tokio::spawn(async move {
                let mut latency = histogram();
                let mut tally = Tally::default();
                while Instant::now() < deadline {
                    let (i, report) = population.next_report();
                    let sent = Instant::now();
                    population.mark_sent(i, sent);
                    let outcome = client.report_rent_arrears(report).await;
                    let _ = latency.record(micros(sent.elapsed()));
                    tally.count(outcome.map(drop));
                }
                (latency, tally)
            }));
        }
        collect(tasks, start).await
    }

    /// Reports at `rate` per second for `duration`, however slowly they are answered; each
    /// latency runs from when its request was due.
    pub(crate) async fn open(&self, rate: f64, duration: Duration) -> Run {
        let start = Instant::now();
        let period = Duration::from_secs_f64(1.0 / rate);
        // A count of requests: finite, non-negative and far below 2^53 (rate and duration are
        // bounded by the caller), so the conversion is exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let total = (rate * duration.as_secs_f64()).round().max(0.0) as u64;
        let mut tasks = Vec::new();
        let mut next = 0usize;
        for k in 0..total {
            let due = start + period.mul_f64(k as f64);
            tokio::time::sleep_until(due.into()).await;
            let mut client = LandlordClient::new(self.channels[next].clone());
            next = (next + 1) % self.channels.len();
            let population = self.population.clone();
            tasks.push(tokio::spawn(async move {
                let (i, report) = population.next_report();
                population.mark_sent(i, due);
                let outcome = client.report_rent_arrears(report).await;
                (micros(due.elapsed()), outcome.map(drop))
            }));
        }
        let mut latency = histogram();
        let mut tally = Tally::default();
        for task in tasks {
            match task.await {
                Ok((us, outcome)) => {
                    let _ = latency.record(us);
                    tally.count(outcome);
                }
                Err(e) => tally.count(Err(tonic::Status::internal(e.to_string()))),
            }
        }
        Run {
            requests: tally.requests,
            errors: tally.errors,
            first_error: tally.first_error,
            elapsed: start.elapsed(),
            latency,
        }
    }
}

impl Tally {
    fn count(&mut self, outcome: Result<(), tonic::Status>) {
        self.requests += 1;
        if let Err(status) = outcome {
            self.errors += 1;
            self.first_error
                .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
        }
    }
}

async fn collect(
    tasks: Vec<tokio::task::JoinHandle<(Histogram<u64>, Tally)>>,
    start: Instant,
) -> Run {
    let mut latency = histogram();
    let mut total = Tally::default();
    for task in tasks {
        match task.await {
            Ok((h, t)) => {
                let _ = latency.add(&h);
                total.requests += t.requests;
                total.errors += t.errors;
                if total.first_error.is_none() {
                    total.first_error = t.first_error;
                }
            }
            Err(e) => {
                total.errors += 1;
                total.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    Run {
        requests: total.requests,
        errors: total.errors,
        first_error: total.first_error,
        elapsed: start.elapsed(),
        latency,
    }
}

/// Enrols the even-numbered residents with consent, `concurrency` at a time.
pub(crate) async fn enrol(
    social: &Channel,
    population: &Arc<Population>,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let indices: Vec<usize> = (0..population.hetus.len()).step_by(2).collect();
    let chunks: Vec<Vec<usize>> = indices
        .chunks(indices.len().div_ceil(concurrency).max(1))
        .map(<[usize]>::to_vec)
        .collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let mut client = SocialServicesClient::new(social.clone());
        let population = population.clone();
        tasks.push(tokio::spawn(async move {
            let now = time::OffsetDateTime::now_utc();
            let ts = |t: time::OffsetDateTime| prost_types::Timestamp {
                seconds: t.unix_timestamp(),
                nanos: 0,
            };
            for i in chunk {
                let enrolled = client
                    .enrol_client(proto::EnrolClientRequest {
                        hetu: population.hetus[i].clone(),
                        consent: Some(proto::Consent {
                            purpose: "eviction-prevention".into(),
                            given_at: Some(ts(now - time::Duration::minutes(10))),
                            valid_until: Some(ts(now + time::Duration::days(365))),
                            evidence_ref: format!("SOS-BENCH-{i:06}"),
                            notice_version: "2026-01".into(),
                            share_outcome_with_landlord: false,
                        }),
                    })
                    .await
                    .with_context(|| format!("enrolling resident {i}"))?
                    .into_inner();
                population
                    .pseudonyms
                    .lock()
                    .map_err(|_| anyhow::anyhow!("pseudonym map poisoned"))?
                    .insert(enrolled.subject_pseudonym, i);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(start.elapsed())
}

/// A social-services subscriber: reads every alert, records how long after its report was sent
/// it arrived, and acknowledges what it has read every 100 ms.
pub(crate) struct Subscriber {
    delivery: Arc<Mutex<Histogram<u64>>>,
    alerts: Arc<AtomicU64>,
    failed: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
}

impl Subscriber {
    pub(crate) async fn start(
        social: Channel,
        population: Arc<Population>,
    ) -> anyhow::Result<Self> {
        let mut client = SocialServicesClient::new(social);
        let mut stream = client
            .subscribe_alerts(proto::SubscribeAlertsRequest { after_sequence: 0 })
            .await?
            .into_inner();
        let delivery = Arc::new(Mutex::new(histogram()));
        let alerts = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let highest = Arc::new(AtomicU64::new(0));
        {
            let (delivery, alerts, failed, highest) = (
                delivery.clone(),
                alerts.clone(),
                failed.clone(),
                highest.clone(),
            );
            tokio::spawn(async move {
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(alert) => {
                            let now = Instant::now();
                            if let Some(us) =
                                population.delivery_latency(&alert.subject_pseudonym, now)
                                && let Ok(mut h) = delivery.lock()
                            {
                                let _ = h.record(us);
                            }
                            alerts.fetch_add(1, Ordering::Relaxed);
                            highest.fetch_max(alert.sequence, Ordering::Relaxed);
                        }
                        Err(status) => {
                            if let Ok(mut f) = failed.lock() {
                                f.get_or_insert(format!(
                                    "{:?}: {}",
                                    status.code(),
                                    status.message()
                                ));
                            }
                            break;
                        }
                    }
                }
            });
        }
        {
            let (stop, failed) = (stop.clone(), failed.clone());
            tokio::spawn(async move {
                let mut acked = 0;
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let up_to = highest.load(Ordering::Relaxed);
                    if up_to > acked {
                        let outcome = client
                            .ack_alerts(proto::AckAlertsRequest {
                                up_to_sequence: up_to,
                                sequences: vec![],
                            })
                            .await;
                        match outcome {
                            Ok(_) => acked = up_to,
                            Err(status) => {
                                if let Ok(mut f) = failed.lock() {
                                    f.get_or_insert(format!(
                                        "ack: {:?}: {}",
                                        status.code(),
                                        status.message()
                                    ));
                                }
                            }
                        }
                    }
                }
            });
        }
        Ok(Subscriber {
            delivery,
            alerts,
            failed,
            stop,
        })
    }

    /// The delivery latencies recorded since the last call, and starts afresh.
    pub(crate) fn take_delivery(&self) -> Histogram<u64> {
        match self.delivery.lock() {
            Ok(mut h) => std::mem::replace(&mut *h, histogram()),
            Err(_) => histogram(),
        }
    }

    pub(crate) fn alerts(&self) -> u64 {
        self.alerts.load(Ordering::Relaxed)
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.failed.lock().ok().and_then(|f| f.clone())
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
