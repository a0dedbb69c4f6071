//! `silta.v1.Audit`: the DPO's queries, checkpoints, proofs and exports over the ledger.
//!
//! Every entry returned is decoded from the canonical bytes the ledger hashes, and checked
//! against the query's filter, so an index column changed behind the gateway's back cannot
//! put a wrong entry into a report. A DPO's read is itself recorded in the ledger before it is
//! served: looking a resident up is processing too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use silta_core::audit::Outcome;
use silta_core::disclosure::Shown;
use silta_core::stats::{Month, MonthError};
use silta_core::validate::Violations;
use silta_core::{Domain, Hetu, Pseudonym, Role};
use silta_ledger::Hash;
use silta_ledger::checkpoint::Checkpoint;
use silta_ledger::entry::Entry;
use silta_store::{AuditFilter, LedgerEntry, StoreError, unix_ms as to_ms};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use crate::gateway::{Gateway, RequestContext};
use crate::ledger_proofs::{self, ProveError};
use crate::metrics::MismatchLabels;
use crate::proto;
use crate::proto::audit_server::Audit;
use crate::services::{context, finish, from_timestamp, timestamp};
use crate::status::ApiError;

/// Largest page of a query.
const MAX_LIMIT: u32 = 10_000;
/// Entries read from the store at a time during an export.
const EXPORT_PAGE: u32 = 1_000;

/// `silta.v1.Audit`.
#[derive(Clone)]
pub struct AuditService {
    gw: Arc<Gateway>,
}

impl AuditService {
    /// The service over `gw`.
    pub fn new(gw: Arc<Gateway>) -> Self {
        AuditService { gw }
    }
}

fn unavailable(e: StoreError) -> ApiError {
    ApiError::from(e)
}

fn proof_failed(e: ProveError) -> ApiError {
    tracing::error!(error = %e, "ledger proof could not be built");
    ApiError::Integrity("the stored ledger is missing nodes for this proof; verify the ledger")
}

/// How many failing entries a refusal names: enough to find the rows, and a bounded message.
const NAMED: usize = 20;

/// Counts and logs entries that failed `check`, and the refusal naming them. Indexes are the
/// ledger's own sequence numbers, never personal data.
fn mismatch(
    gw: &Gateway,
    rpc: &'static str,
    check: &'static str,
    indexes: Vec<u64>,
    checkpoint: u64,
) -> ApiError {
    tracing::error!(
        rpc,
        check,
        ?indexes,
        checkpoint,
        "ledger entries fail the check against the signed tree; the database was changed \
         outside the gateway"
    );
    gw.metrics
        .ledger_entry_mismatches
        .get_or_create(&MismatchLabels { rpc, check })
        .inc_by(indexes.len() as u64);
    ApiError::LedgerMismatch {
        indexes,
        checkpoint,
    }
}

/// Checks entries about to be served against the tree. Those under the signed checkpoint
/// must, hashed together with the stored nodes around them, give its root: a row changed in
/// the database (or a node changed to match it) cannot. Entries newer than the checkpoint
/// have no signed root yet, and are checked against their stored leaf hash only.
async fn check_against_tree(
    gw: &Gateway,
    rpc: &'static str,
    entries: &[LedgerEntry],
    signed: Option<&Checkpoint>,
) -> Result<(), ApiError> {
    let size = signed.map_or(0, |c| c.size);
    let (under, newer): (Vec<_>, Vec<_>) = entries.iter().partition(|e| e.index < size);
    if let Some(signed) = signed
        && !under.is_empty()
    {
        let leaves = under
            .iter()
            .map(|e| (e.index, silta_ledger::leaf_hash(&e.entry)))
            .collect();
        let bad = unproven(&*gw.store, signed, leaves)
            .await
            .map_err(proof_failed)?;
        if !bad.is_empty() {
            return Err(mismatch(gw, rpc, "checkpoint", bad, size));
        }
    }
    if !newer.is_empty() {
        let wanted: Vec<_> = newer.iter().map(|e| (0, e.index)).collect();
        let stored = gw.store.ledger_nodes(&wanted).await.map_err(unavailable)?;
        let bad: Vec<u64> = newer
            .iter()
            .zip(stored)
            .filter(|(e, leaf)| silta_ledger::leaf_hash(&e.entry) != *leaf)
            .map(|(e, _)| e.index)
            .take(NAMED)
            .collect();
        if !bad.is_empty() {
            return Err(mismatch(gw, rpc, "leaf", bad, size));
        }
    }
    Ok(())
}

/// The entries among `leaves` (index, leaf hash) that cannot be proven under `signed`, at most
/// [`NAMED`]; none in the common case, at the cost of one check. On a mismatch, halves are
/// checked until the failing entries are found: O(m·log k) checks for m of k entries. A node
/// changed in the database makes its neighbours unprovable too, and they are named with it.
async fn unproven(
    store: &dyn silta_store::Store,
    signed: &Checkpoint,
    leaves: Vec<(u64, Hash)>,
) -> Result<Vec<u64>, ProveError> {
    let mut bad = Vec::new();
    let mut todo = vec![leaves];
    while let Some(mut set) = todo.pop() {
        if bad.len() >= NAMED {
            break;
        }
        let known: BTreeMap<u64, Hash> = set.iter().copied().collect();
        if ledger_proofs::root_over(store, signed.size, &known).await? == signed.root {
            continue;
        }
        if let [(index, _)] = set.as_slice() {
            bad.push(*index);
            continue;
        }
        let right = set.split_off(set.len() / 2);
        todo.push(right);
        todo.push(set);
    }
    bad.sort_unstable();
    Ok(bad)
}

/// Whether a canonical entry matches the filter its row was selected by.
fn matches(e: &Entry, f: &AuditFilter) -> bool {
    let org_ok = f
        .organisation
        .as_ref()
        .is_none_or(|o| &e.actor_org == o || e.recipients.contains(o));
    org_ok
        && (f.subjects.is_empty() || e.subject.as_ref().is_some_and(|s| f.subjects.contains(s)))
        && f.flow_id
            .as_ref()
            .is_none_or(|x| e.flow_id.as_ref() == Some(x))
        && f.outcome.as_ref().is_none_or(|x| &e.outcome == x)
        && f.from.is_none_or(|t| e.time_ms >= to_ms(t))
        && f.until.is_none_or(|t| e.time_ms < to_ms(t))
}

fn to_proto_entry(
    gw: &Gateway,
    e: LedgerEntry,
    filter: &AuditFilter,
    checkpoint: u64,
) -> Result<proto::AuditEntry, ApiError> {
    let refuse =
        |check: &'static str| mismatch(gw, "Audit.Query", check, vec![e.index], checkpoint);
    let decoded = Entry::decode(&e.entry).map_err(|_| refuse("decode"))?;
    if !matches(&decoded, filter) {
        return Err(refuse("index"));
    }
    let time =
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(decoded.time_ms) * 1_000_000).ok();
    Ok(proto::AuditEntry {
        index: e.index,
        time: time.map(timestamp),
        request_id: decoded.request_id,
        actor_organisation: decoded.actor_org,
        actor_role: decoded.actor_role,
        actor_person: decoded.actor_person.unwrap_or_default(),
        action: decoded.action,
        flow_id: decoded.flow_id.unwrap_or_default(),
        outcome: decoded.outcome,
        reason: decoded.reason,
        policy_ids: decoded.policy_ids,
        subject_pseudonym: decoded.subject.unwrap_or_default(),
        fields: decoded.fields,
        recipients: decoded.recipients,
        leaf_hash: silta_ledger::leaf_hash(&e.entry).to_vec(),
        entry: e.entry,
    })
}

/// The stored checkpoint of `size` (0: the latest), its signature checked with this node's
/// keyring: the note, the checkpoint it vouches for and the key that signed it (after a key
/// promotion, older checkpoints keep theirs). `None` if none was published there. The Audit
/// service and the DPO console read checkpoints through this one check.
pub(crate) async fn verified_checkpoint(
    gw: &Gateway,
    size: u64,
) -> Result<Option<(String, Checkpoint, String)>, ApiError> {
    let stored = match size {
        0 => gw.store.latest_checkpoint().await,
        size => gw.store.checkpoint_at(size).await,
    }
    .map_err(unavailable)?;
    let Some(stored) = stored else {
        return Ok(None);
    };
    let body = stored
        .note
        .split_once("\n\n")
        .map(|(b, _)| format!("{b}\n"))
        .unwrap_or_default();
    let origin = Checkpoint::parse(&body)
        .map_err(|e| {
            tracing::error!(error = %e, "stored checkpoint does not parse");
            ApiError::Integrity("a stored checkpoint is malformed; verify the ledger")
        })?
        .origin;
    let (verifier_key, checkpoint) =
        crate::checkpoints::signing_key_of(&gw.pseudonymiser, &origin, &stored.note).ok_or_else(
            || {
                tracing::error!(
                    size = stored.size,
                    "a stored checkpoint verifies with no key of this node's keyring"
                );
                ApiError::Integrity(
                    "a stored checkpoint is signed by no key of this gateway; verify the ledger",
                )
            },
        )?;
    if checkpoint.size != stored.size {
        tracing::error!(
            size = stored.size,
            "a stored checkpoint's row disagrees with its note"
        );
        return Err(ApiError::Integrity(
            "a stored checkpoint's row disagrees with its signed note; verify the ledger",
        ));
    }
    Ok(Some((stored.note, checkpoint, verifier_key)))
}

/// Whether the policies let `ctx`'s caller read statistics (`policies/access.cedar`); a
/// refusal is recorded in the ledger.
pub(crate) async fn may_read_statistics(
    gw: &Gateway,
    ctx: &RequestContext,
) -> Result<(), ApiError> {
    let verdict = gw.policies().may_read_statistics(&ctx.caller);
    if verdict.allowed {
        return Ok(());
    }
    let err = ApiError::PolicyDenied {
        message: format!(
            "{}: your client certificate names role {}; {}",
            ctx.action,
            ctx.caller.role,
            gw.policies().reasons(&["statistics-readers".to_owned()])
        ),
        policy_ids: verdict.policy_ids,
    };
    Err(gw.deny(ctx, err, None).await)
}

/// Released statistics of `months`, for `ctx`'s caller: the policies decide who reads them
/// (`policies/access.cedar`), only closed months are released, and the read is recorded in the
/// ledger (`statistics-read`, one entry for all of `months`) before anything is returned. The
/// Audit service and the DPO console release statistics through this one function.
pub(crate) async fn read_statistics(
    gw: &Gateway,
    ctx: &RequestContext,
    months: &[Month],
) -> Result<Vec<crate::statistics::MonthRelease>, ApiError> {
    may_read_statistics(gw, ctx).await?;
    let now = OffsetDateTime::now_utc();
    let mut releases = Vec::with_capacity(months.len());
    for month in months {
        let release =
            crate::statistics::read_month(&*gw.store, *month, gw.statistics.threshold, now).await;
        match release {
            Ok(r) => releases.push(r),
            Err(crate::statistics::StatsError::NotClosed(_)) => {
                let err = ApiError::FailedPrecondition(
                    "the month has not ended: only closed months are released; ask for an \
                     earlier month",
                );
                return Err(gw.deny(ctx, err, None).await);
            }
            Err(crate::statistics::StatsError::Store(e)) => return Err(unavailable(e)),
        }
    }
    gw.record(ctx, Outcome::Allow, "statistics-read", None)
        .await?;
    Ok(releases)
}

impl AuditService {
    /// The size of the latest checkpoint; proofs and exports are anchored to checkpoints.
    async fn checkpointed_size(&self) -> Result<u64, ApiError> {
        match self
            .gw
            .store
            .latest_checkpoint()
            .await
            .map_err(unavailable)?
        {
            Some(c) => Ok(c.size),
            None => Err(ApiError::FailedPrecondition(
                "no checkpoint has been published yet; try again in a few seconds",
            )),
        }
    }

    /// `size` if a checkpoint was published at it (0: the latest); otherwise a refusal naming
    /// `field`, since a proof to an unsigned size cannot be checked against anything.
    async fn signed_size(
        &self,
        ctx: &RequestContext,
        field: &str,
        size: u64,
    ) -> Result<u64, ApiError> {
        if size == 0 {
            return self.checkpointed_size().await;
        }
        match self
            .gw
            .store
            .checkpoint_at(size)
            .await
            .map_err(unavailable)?
        {
            Some(_) => Ok(size),
            None => {
                let err = ApiError::field(
                    field,
                    "must be the size of a published checkpoint (see GetCheckpoint), or 0 for the latest",
                );
                Err(self.gw.deny(ctx, err, None).await)
            }
        }
    }

    async fn query_filter(
        &self,
        ctx: &RequestContext,
        r: &proto::AuditQueryRequest,
    ) -> Result<AuditFilter, ApiError> {
        let mut v = Violations::default();
        // A person's entries carry the audit pseudonym of the key version in use when each was
        // written: search under every version from there on.
        let p = &self.gw.pseudonymiser;
        let subject = match (r.subject_hetu.is_empty(), r.subject_pseudonym.is_empty()) {
            (true, true) => None,
            (false, true) => Hetu::parse(&r.subject_hetu, self.gw.hetu_rules)
                .map_err(|e| v.add("subject_hetu", e.to_string()))
                .ok()
                .map(|h| p.pseudonyms(&h, &Domain::Audit)),
            (true, false) => match Pseudonym::parse(&r.subject_pseudonym) {
                Some(given) => Some(p.forward(&given, &Domain::Audit)),
                None => {
                    v.add("subject_pseudonym", "must be an audit pseudonym (ps<version>.<32 characters of a-z and 2-7>), as found in earlier results");
                    None
                }
            },
            (false, false) => {
                v.add(
                    "subject_pseudonym",
                    "set subject_hetu or subject_pseudonym, not both",
                );
                None
            }
        };
        for (field, value) in [("organisation", &r.organisation), ("flow_id", &r.flow_id)] {
            if value.len() > 128 || silta_core::hetu::contains_hetu(value) {
                v.add(
                    field,
                    "must be at most 128 characters, with no personal identity code",
                );
            }
        }
        if !matches!(r.outcome.as_str(), "" | "allow" | "deny") {
            v.add("outcome", "must be \"allow\", \"deny\" or empty");
        }
        if r.limit > MAX_LIMIT {
            v.add("limit", format!("must be at most {MAX_LIMIT}"));
        }
        let from = r
            .from_time
            .as_ref()
            .and_then(|t| from_timestamp(&mut v, "from_time", Some(t)));
        let until = r
            .until_time
            .as_ref()
            .and_then(|t| from_timestamp(&mut v, "until_time", Some(t)));
        if let (Some(from), Some(until)) = (from, until)
            && until <= from
        {
            // An empty window is a mistake, not a question with no answer.
            v.add(
                "until_time",
                "must be after from_time (the window is [from_time, until_time))",
            );
        }
        if !v.0.is_empty() {
            return Err(self.gw.deny(ctx, ApiError::InvalidArgument(v), None).await);
        }
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Ok(AuditFilter {
            subjects: subject
                .map(|set| set.all().iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            organisation: nonempty(&r.organisation),
            flow_id: nonempty(&r.flow_id),
            outcome: nonempty(&r.outcome),
            from,
            until,
            start_index: r.start_index,
            end_index: None,
            limit: if r.limit == 0 { 1_000 } else { r.limit },
        })
    }
}

type EntryStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::AuditEntry, Status>> + Send>>;
type ExportStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::ExportItem, Status>> + Send>>;

#[tonic::async_trait]
impl Audit for AuditService {
    type QueryStream = EntryStream;

    async fn query(
        &self,
        req: Request<proto::AuditQueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        let started = Instant::now();
        let ctx = context(&self.gw, &req, "Audit.Query").await?;
        let result = async {
            self.gw.authorize(&ctx, Role::Dpo).await?;
            let filter = self.query_filter(&ctx, req.get_ref()).await?;
            // Read before the entries: every entry it covers is then among them or older.
            let signed = verified_checkpoint(&self.gw, 0).await?.map(|(_, c, _)| c);
            let entries = self
                .gw
                .store
                .ledger_entries(&filter)
                .await
                .map_err(unavailable)?;
            check_against_tree(&self.gw, "Audit.Query", &entries, signed.as_ref()).await?;
            let size = signed.map_or(0, |c| c.size);
            let items = entries
                .into_iter()
                .map(|e| to_proto_entry(&self.gw, e, &filter, size))
                .collect::<Result<Vec<_>, _>>()?;
            // Recorded after the read (a query does not list itself) but before anything is
            // served: a read that cannot be recorded is not served.
            // Named under the version in use, like every record this node writes now.
            let in_use = self.gw.pseudonymiser.observed_version();
            let subject = filter
                .subjects
                .iter()
                .map(|s| Pseudonym::from_stored(s.clone()))
                .find(|p| p.version() == Some(in_use))
                .or_else(|| filter.subjects.last().cloned().map(Pseudonym::from_stored));
            self.gw
                .record(&ctx, Outcome::Allow, "ledger-query", subject)
                .await?;
            Ok(Box::pin(tokio_stream::iter(items.into_iter().map(Ok))) as EntryStream)
        }
        .await;
        finish(&self.gw.metrics, &ctx, started, result)
    }

    async fn get_checkpoint(
        &self,
        req: Request<proto::GetCheckpointRequest>,
    ) -> Result<Response<proto::SignedCheckpoint>, Status> {
        let started = Instant::now();
        let ctx = context(&self.gw, &req, "Audit.GetCheckpoint").await?;
        let result = async {
            self.gw.authorize(&ctx, Role::Dpo).await?;
            let (note, checkpoint, verifier_key) =
                match verified_checkpoint(&self.gw, req.get_ref().size).await? {
                    Some(found) => found,
                    None if req.get_ref().size == 0 => {
                        return Err(ApiError::FailedPrecondition(
                            "no checkpoint has been published yet; try again in a few seconds",
                        ));
                    }
                    None => {
                        return Err(ApiError::NotFound(
                            "no checkpoint was published at that size; ask for size 0 (the latest)",
                        ));
                    }
                };
            Ok(proto::SignedCheckpoint {
                note,
                size: checkpoint.size,
                root_hash: checkpoint.root.to_vec(),
                origin: checkpoint.origin,
                verifier_key,
            })
        }
        .await;
        finish(&self.gw.metrics, &ctx, started, result)
    }

    async fn get_inclusion_proof(
        &self,
        req: Request<proto::GetInclusionProofRequest>,
    ) -> Result<Response<proto::InclusionProof>, Status> {
        let started = Instant::now();
        let ctx = context(&self.gw, &req, "Audit.GetInclusionProof").await?;
        let result = async {
            self.gw.authorize(&ctx, Role::Dpo).await?;
            let r = req.get_ref();
            let size = self.signed_size(&ctx, "tree_size", r.tree_size).await?;
            if r.index >= size {
                let err = ApiError::field("index", format!("must be below the tree size ({size})"));
                return Err(self.gw.deny(&ctx, err, None).await);
            }
            let (leaf, hashes) = ledger_proofs::inclusion(&*self.gw.store, r.index, size)
                .await
                .map_err(proof_failed)?;
            Ok(proto::InclusionProof {
                index: r.index,
                tree_size: size,
                leaf_hash: leaf.to_vec(),
                hashes: hashes.iter().map(|h| h.to_vec()).collect(),
            })
        }
        .await;
        finish(&self.gw.metrics, &ctx, started, result)
    }

    async fn get_consistency_proof(
        &self,
        req: Request<proto::GetConsistencyProofRequest>,
    ) -> Result<Response<proto::ConsistencyProof>, Status> {
        let started = Instant::now();
        let ctx = context(&self.gw, &req, "Audit.GetConsistencyProof").await?;
        let result = async {
            self.gw.authorize(&ctx, Role::Dpo).await?;
            let r = req.get_ref();
            let to = self.signed_size(&ctx, "to_size", r.to_size).await?;
            if r.from_size > to {
                let err = ApiError::field("from_size", format!("must be at most to_size ({to})"));
                return Err(self.gw.deny(&ctx, err, None).await);
            }
            if r.from_size > 0 {
                self.signed_size(&ctx, "from_size", r.from_size).await?;
            }
            let hashes = ledger_proofs::consistency(&*self.gw.store, r.from_size, to)
                .await
                .map_err(proof_failed)?;
            Ok(proto::ConsistencyProof {
                from_size: r.from_size,
                to_size: to,
                hashes: hashes.iter().map(|h| h.to_vec()).collect(),
            })
        }
        .await;
        finish(&self.gw.metrics, &ctx, started, result)
    }

    async fn get_retention(
        &self,
        req: Request<proto::GetRetentionRequest>,
    ) -> Result<Response<proto::RetentionReport>, Status> {
        let started = Instant::now();
        let ctx = context(&self.gw, &req, "Audit.GetRetention").await?;
        let result = async {
            self.gw.authorize(&ctx, Role::Dpo).await?;
            let now = OffsetDateTime::now_utc();
            let kinds = crate::retention::status(
                &*self.gw.store,
                &self.gw.policies,
                &self.gw.retention,
                now,
            )
            .await
            .map_err(unavailable)?;
            self.gw
                .record(&ctx, Outcome::Allow, "retention-status", None)
                .await?;
            Ok(proto::RetentionReport {
                as_of: Some(timestamp(now)),
                kinds: kinds
                    .into_iter()
                    .map(|k| proto::RecordRetention {
                        kind: k.kind.to_owned(),
                        flow_id: k.flow_id.unwrap_or_default(),
                        rule: k.rule,
                        kept_for_seconds: k.kept_for_s,
                        rows: k.count.rows,
                        oldest: k.count.oldest.map(timestamp),
                        due: k.count.due,
                    })
                    .collect(),
            })
        }
        .await;
        finish(&self.gw.metrics, &ctx, started, result)
    }

    async fn statistics(
        &self,
        req: Request<proto::StatisticsRequest>,
    ) -> Result<Response<proto::StatisticsRelease>, Status> {
        let started = Instant::now();
        let ctx = context(&self.gw, &req, "Audit.Statistics").await?;
        let result = async {
            // The policies decide who reads the statistics; the analyst may read them and
            // nothing else: every other RPC here asks for the DPO. Asked before the month is
            // read, so a caller who may not read statistics learns nothing of the request.
            may_read_statistics(&self.gw, &ctx).await?;
            let month: Month = match req.get_ref().month.parse() {
                Ok(m) => m,
                Err(e @ MonthError) => {
                    let mut v = Violations::default();
                    v.add("month", e.to_string());
                    return Err(self.gw.deny(&ctx, ApiError::InvalidArgument(v), None).await);
                }
            };
            let releases = read_statistics(&self.gw, &ctx, &[month]).await?;
            let Some(release) = releases.first() else {
                return Err(ApiError::Integrity("a month read returned no release"));
            };
            Ok(to_proto_release(release))
        }
        .await;
        finish(&self.gw.metrics, &ctx, started, result)
    }

    type ExportStream = ExportStream;

    async fn export(
        &self,
        req: Request<proto::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let started = Instant::now();
        let ctx = context(&self.gw, &req, "Audit.Export").await?;
        let result = async {
            self.gw.authorize(&ctx, Role::Dpo).await?;
            let r = req.get_ref();
            if r.from_index != 0 {
                let err = ApiError::field(
                    "from_index",
                    "only whole-ledger exports (from_index 0) are supported",
                );
                return Err(self.gw.deny(&ctx, err, None).await);
            }
            let to = self.signed_size(&ctx, "to_index", r.to_index).await?;
            let Some((_, signed, _)) = verified_checkpoint(&self.gw, to).await? else {
                return Err(ApiError::Integrity(
                    "a checkpoint listed a moment ago is gone; verify the ledger",
                ));
            };
            self.gw
                .record(&ctx, Outcome::Allow, "ledger-export", None)
                .await?;
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            let gw = Arc::clone(&self.gw);
            let request_id = ctx.request_id.clone();
            tokio::spawn(async move {
                let fail = |e: StoreError| Err(ApiError::from(e).into_status(&request_id));
                let mut start = 0;
                while start < to {
                    let filter = AuditFilter {
                        start_index: start,
                        end_index: Some(to),
                        limit: EXPORT_PAGE,
                        ..AuditFilter::default()
                    };
                    let page = match gw.store.ledger_entries(&filter).await {
                        Ok(p) if !p.is_empty() => p,
                        Ok(_) => break,
                        Err(e) => {
                            let _ = tx.send(fail(e)).await;
                            return;
                        }
                    };
                    // Each page is checked before any of it is sent: an export never
                    // carries an entry that the signed tree does not.
                    if let Err(e) =
                        check_against_tree(&gw, "Audit.Export", &page, Some(&signed)).await
                    {
                        let _ = tx.send(Err(e.into_status(&request_id))).await;
                        return;
                    }
                    for e in page {
                        start = e.index + 1;
                        let item = proto::export_item::Item::Entry(proto::ExportedEntry {
                            index: e.index,
                            entry: e.entry,
                        });
                        if tx
                            .send(Ok(proto::ExportItem { item: Some(item) }))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                let notes = async {
                    let checkpoints = gw.store.checkpoints(to).await?;
                    let handovers = gw.store.key_handovers().await?;
                    Ok::<_, silta_store::StoreError>(
                        checkpoints
                            .into_iter()
                            .map(|c| proto::export_item::Item::CheckpointNote(c.note))
                            .chain(
                                handovers
                                    .into_iter()
                                    .map(|h| proto::export_item::Item::KeyHandoverNote(h.note)),
                            )
                            .collect::<Vec<_>>(),
                    )
                };
                match notes.await {
                    Ok(items) => {
                        for item in items {
                            if tx
                                .send(Ok(proto::ExportItem { item: Some(item) }))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(fail(e)).await;
                    }
                }
            });
            Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as ExportStream)
        }
        .await;
        finish(&self.gw.metrics, &ctx, started, result)
    }
}

fn to_proto_value(v: Shown) -> proto::StatisticsValue {
    match v {
        Shown::Value(count) => proto::StatisticsValue {
            count,
            suppressed: false,
        },
        Shown::Suppressed => proto::StatisticsValue {
            count: 0,
            suppressed: true,
        },
    }
}

fn to_proto_release(r: &crate::statistics::MonthRelease) -> proto::StatisticsRelease {
    proto::StatisticsRelease {
        month: r.month.to_string(),
        threshold: u32::try_from(r.threshold).unwrap_or(u32::MAX),
        tables: r
            .tables
            .iter()
            .map(|t| proto::StatisticsTable {
                id: t.id.clone(),
                title: t.title.clone(),
                columns: t.columns.clone(),
                rows: t
                    .rows
                    .iter()
                    .zip(&t.cells)
                    .zip(&t.row_totals)
                    .map(|((label, cells), total)| proto::StatisticsRow {
                        label: label.clone(),
                        values: cells.iter().copied().map(to_proto_value).collect(),
                        total: Some(to_proto_value(*total)),
                    })
                    .collect(),
                column_totals: t
                    .column_totals
                    .iter()
                    .copied()
                    .map(to_proto_value)
                    .collect(),
                total: Some(to_proto_value(t.total)),
            })
            .collect(),
        quantiles: r
            .quantiles
            .iter()
            .map(|q| proto::DelayQuantiles {
                table: q.table.clone(),
                row: q.row.clone(),
                median: q.median.clone().unwrap_or_default(),
                p90: q.p90.clone().unwrap_or_default(),
            })
            .collect(),
    }
}
