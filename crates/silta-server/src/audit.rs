//! `silta.v1.Audit`: the DPO's queries, checkpoints, proofs and exports over the ledger.
//!
//! Every entry returned is decoded from the canonical bytes the ledger hashes, never from the
//! index columns, so what the DPO reads is what the checkpoints vouch for. A DPO's query is
//! itself recorded in the ledger: looking a resident up is processing too.

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use silta_core::audit::Outcome;
use silta_core::validate::Violations;
use silta_core::{Domain, Hetu, Role};
use silta_ledger::Hash;
use silta_ledger::checkpoint::Checkpoint;
use silta_ledger::entry::Entry;
use silta_ledger::proof::{consistency_proof, inclusion_proof};
use silta_ledger::tree::{MissingNode, NodeSource};
use silta_store::{AuditFilter, LedgerEntry, StoreError};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use crate::gateway::{Gateway, RequestContext};
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

/// Records which perfect subtrees a proof needs, so they can be read in one go.
struct Recorder(RefCell<Vec<(u32, u64)>>);

impl NodeSource for Recorder {
    type Error = Infallible;
    fn node(&self, level: u32, index: u64) -> Result<Hash, Infallible> {
        self.0.borrow_mut().push((level, index));
        Ok([0; 32])
    }
}

/// The subtrees read for a proof.
struct Fetched(HashMap<(u32, u64), Hash>);

impl NodeSource for Fetched {
    type Error = MissingNode;
    fn node(&self, level: u32, index: u64) -> Result<Hash, MissingNode> {
        self.0
            .get(&(level, index))
            .copied()
            .ok_or(MissingNode { level, index })
    }
}

fn to_proto_entry(e: LedgerEntry) -> Result<proto::AuditEntry, ApiError> {
    let decoded = Entry::decode(&e.entry).map_err(|err| {
        tracing::error!(index = e.index, error = %err, "stored ledger entry does not decode");
        ApiError::Unavailable
    })?;
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

fn unavailable(e: StoreError) -> ApiError {
    ApiError::from(e)
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

    async fn fetch(&self, wanted: Vec<(u32, u64)>) -> Result<Fetched, ApiError> {
        let hashes = self
            .gw
            .store
            .ledger_nodes(&wanted)
            .await
            .map_err(unavailable)?;
        Ok(Fetched(wanted.into_iter().zip(hashes).collect()))
    }

    async fn query_filter(
        &self,
        ctx: &RequestContext,
        r: &proto::AuditQueryRequest,
    ) -> Result<AuditFilter, ApiError> {
        let mut v = Violations::default();
        let subject = match (r.subject_hetu.is_empty(), r.subject_pseudonym.is_empty()) {
            (true, true) => None,
            (false, true) => Hetu::parse(&r.subject_hetu, self.gw.hetu_rules)
                .map_err(|e| v.add("subject_hetu", format!("personal identity code {e}")))
                .ok()
                .map(|h| {
                    self.gw
                        .pseudonymiser
                        .pseudonym(&h, &Domain::Audit)
                        .to_string()
                }),
            (true, false) => Some(r.subject_pseudonym.clone()),
            (false, false) => {
                v.add(
                    "subject_pseudonym",
                    "set subject_hetu or subject_pseudonym, not both",
                );
                None
            }
        };
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
        if !v.0.is_empty() {
            return Err(self.gw.deny(ctx, ApiError::InvalidArgument(v), None).await);
        }
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Ok(AuditFilter {
            subject,
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
        let ctx = context(&req, "Audit.Query")?;
        let result = async {
            self.gw.authorize(&ctx, Role::Dpo).await?;
            let filter = self.query_filter(&ctx, req.get_ref()).await?;
            let entries = self
                .gw
                .store
                .ledger_entries(&filter)
                .await
                .map_err(unavailable)?;
            // Recorded after the read, so a query does not list itself; the next one will show
            // that the DPO looked this subject up.
            let subject = filter
                .subject
                .clone()
                .map(silta_core::Pseudonym::from_stored);
            self.gw
                .record(&ctx, Outcome::Allow, "ledger-query", subject)
                .await;
            let request_id = ctx.request_id.clone();
            let items: Vec<Result<proto::AuditEntry, Status>> = entries
                .into_iter()
                .map(|e| to_proto_entry(e).map_err(|err| err.into_status(&request_id)))
                .collect();
            Ok(Box::pin(tokio_stream::iter(items)) as EntryStream)
        }
        .await;
        finish(&ctx, started, result)
    }

    async fn get_checkpoint(
        &self,
        req: Request<proto::GetCheckpointRequest>,
    ) -> Result<Response<proto::SignedCheckpoint>, Status> {
        let started = Instant::now();
        let ctx = context(&req, "Audit.GetCheckpoint")?;
        let result = async {
            self.gw.authorize(&ctx, Role::Dpo).await?;
            let size = match req.get_ref().size {
                0 => self.checkpointed_size().await?,
                s => s,
            };
            let stored = self
                .gw
                .store
                .checkpoints(size)
                .await
                .map_err(unavailable)?
                .into_iter()
                .find(|c| c.size == size)
                .ok_or(ApiError::NotFound(
                    "no checkpoint was published at that size; ask for size 0 (the latest)",
                ))?;
            let body = stored
                .note
                .split_once("\n\n")
                .map(|(b, _)| format!("{b}\n"))
                .unwrap_or_default();
            let checkpoint = Checkpoint::parse(&body).map_err(|e| {
                tracing::error!(error = %e, "stored checkpoint does not parse");
                ApiError::Unavailable
            })?;
            Ok(proto::SignedCheckpoint {
                note: stored.note,
                size: checkpoint.size,
                root_hash: checkpoint.root.to_vec(),
                origin: checkpoint.origin,
                verifier_key: self.gw.checkpoint_verifier_key.clone(),
            })
        }
        .await;
        finish(&ctx, started, result)
    }

    async fn get_inclusion_proof(
        &self,
        req: Request<proto::GetInclusionProofRequest>,
    ) -> Result<Response<proto::InclusionProof>, Status> {
        let started = Instant::now();
        let ctx = context(&req, "Audit.GetInclusionProof")?;
        let result = async {
            self.gw.authorize(&ctx, Role::Dpo).await?;
            let r = req.get_ref();
            let latest = self.checkpointed_size().await?;
            let size = if r.tree_size == 0 {
                latest
            } else {
                r.tree_size
            };
            if size > latest {
                return Err(ApiError::field(
                    "tree_size",
                    format!(
                        "must be at most the latest checkpoint's size ({latest}); 0 means that size"
                    ),
                ));
            }
            if r.index >= size {
                return Err(ApiError::field(
                    "index",
                    format!("must be below the tree size ({size})"),
                ));
            }
            let recorder = Recorder(RefCell::new(Vec::new()));
            // The sizes were checked above, so the recording pass only lists the nodes.
            let _ = inclusion_proof(&recorder, r.index, size);
            let fetched = self.fetch(recorder.0.into_inner()).await?;
            let hashes = match inclusion_proof(&fetched, r.index, size) {
                Ok(Ok(p)) => p,
                _ => return Err(ApiError::Unavailable),
            };
            let leaf = self
                .fetch(vec![(0, r.index)])
                .await?
                .node(0, r.index)
                .map_err(|_| ApiError::Unavailable)?;
            Ok(proto::InclusionProof {
                index: r.index,
                tree_size: size,
                leaf_hash: leaf.to_vec(),
                hashes: hashes.iter().map(|h| h.to_vec()).collect(),
            })
        }
        .await;
        finish(&ctx, started, result)
    }

    async fn get_consistency_proof(
        &self,
        req: Request<proto::GetConsistencyProofRequest>,
    ) -> Result<Response<proto::ConsistencyProof>, Status> {
        let started = Instant::now();
        let ctx = context(&req, "Audit.GetConsistencyProof")?;
        let result = async {
            self.gw.authorize(&ctx, Role::Dpo).await?;
            let r = req.get_ref();
            let latest = self.checkpointed_size().await?;
            let to = if r.to_size == 0 { latest } else { r.to_size };
            if to > latest {
                return Err(ApiError::field(
                    "to_size",
                    format!(
                        "must be at most the latest checkpoint's size ({latest}); 0 means that size"
                    ),
                ));
            }
            if r.from_size > to {
                return Err(ApiError::field(
                    "from_size",
                    format!("must be at most to_size ({to})"),
                ));
            }
            let recorder = Recorder(RefCell::new(Vec::new()));
            let _ = consistency_proof(&recorder, r.from_size, to);
            let fetched = self.fetch(recorder.0.into_inner()).await?;
            let hashes = match consistency_proof(&fetched, r.from_size, to) {
                Ok(Ok(p)) => p,
                _ => return Err(ApiError::Unavailable),
            };
            Ok(proto::ConsistencyProof {
                from_size: r.from_size,
                to_size: to,
                hashes: hashes.iter().map(|h| h.to_vec()).collect(),
            })
        }
        .await;
        finish(&ctx, started, result)
    }

    type ExportStream = ExportStream;

    async fn export(
        &self,
        req: Request<proto::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let started = Instant::now();
        let ctx = context(&req, "Audit.Export")?;
        let result = async {
            self.gw.authorize(&ctx, Role::Dpo).await?;
            let r = req.get_ref();
            if r.from_index != 0 {
                return Err(ApiError::field(
                    "from_index",
                    "only whole-ledger exports (from_index 0) are supported",
                ));
            }
            let latest = self.checkpointed_size().await?;
            let to = if r.to_index == 0 { latest } else { r.to_index };
            if to > latest {
                return Err(ApiError::field(
                    "to_index",
                    format!(
                        "must be at most the latest checkpoint's size ({latest}); 0 means that size"
                    ),
                ));
            }
            self.gw
                .record(&ctx, Outcome::Allow, "ledger-export", None)
                .await;
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
                match gw.store.checkpoints(to).await {
                    Ok(cps) => {
                        for c in cps {
                            let item = proto::export_item::Item::CheckpointNote(c.note);
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
        finish(&ctx, started, result)
    }
}
