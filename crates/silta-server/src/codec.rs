//! The protobuf codec of silta's services: tonic-prost's, except for a request that does not
//! decode.
//!
//! tonic-prost answers such a request `INTERNAL`, following gRPC's status table, which reads as
//! the gateway's fault; the fix is the caller's (a string that is not UTF-8, a field sent with
//! the wrong wire type, a truncated message). silta answers `INVALID_ARGUMENT` with a
//! `google.rpc.BadRequest` naming the field, like any other bad input, and logs the refusal
//! with a request id. It is not in the audit ledger: no handler ran, so no caller is known to
//! it.
//! The generated clients share this codec: a response that does not decode is the same error
//! on their side.
//!
//! A call carries one request message (silta has no client-streaming RPC) and, unless the
//! method streams its response, one response message. tonic's server reads the first request
//! and then drains the body for trailers, decoding and dropping whatever else it holds, so a
//! second request would be silently ignored. The decoder refuses it instead: `UNIMPLEMENTED`,
//! gRPC's code for a cardinality violation (see [`ApiError::ExtraMessage`]). Only the items of
//! a streamed response ([`STREAM_ITEMS`]) may come many to a call.

use std::any::TypeId;
use std::marker::PhantomData;

use prost::Message;
use silta_core::validate::Violations;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use crate::proto;
use crate::status::ApiError;

/// The [`TypeId`] of a generated message type.
type TypeIdOf = fn() -> TypeId;

/// The messages a call may carry many of: the items of the server-streaming responses. Every
/// other message is the one request or the one response of its call. A test holds the list to
/// the contract.
const STREAM_ITEMS: [(&str, TypeIdOf); 4] = [
    ("silta.v1.AuditEntry", TypeId::of::<proto::AuditEntry>),
    ("silta.v1.ExportItem", TypeId::of::<proto::ExportItem>),
    ("silta.v1.SupportNotice", TypeId::of::<proto::SupportNotice>),
    ("silta.v1.Alert", TypeId::of::<proto::Alert>),
];

/// tonic's codec for silta's messages (named in `build.rs`).
#[derive(Debug, Clone)]
pub struct SiltaCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SiltaCodec<T, U> {
    fn default() -> Self {
        SiltaCodec(PhantomData)
    }
}

impl<T, U> Codec for SiltaCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = SiltaDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        // tonic makes a decoder per call and direction, so it counts one call's messages.
        let id = TypeId::of::<U>();
        SiltaDecoder {
            many: STREAM_ITEMS.iter().any(|(_, item)| item() == id),
            decoded: false,
            message: PhantomData,
        }
    }
}

/// Decodes `U`; see the module docs for its errors.
#[derive(Debug, Clone)]
pub struct SiltaDecoder<U> {
    /// Whether a call may carry more than one `U`.
    many: bool,
    /// Whether this call carried a `U` already.
    decoded: bool,
    message: PhantomData<U>,
}

impl<U: Message + Default> Decoder for SiltaDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if self.decoded && !self.many {
            let (request_id, status) = refusal(ApiError::ExtraMessage);
            tracing::warn!(
                request_id = %request_id,
                "refused a call that carried more than one message where its method takes one"
            );
            return Err(status);
        }
        let message = U::decode(buf).map_err(|e| {
            let (field, problem) = describe(&e.to_string());
            let mut v = Violations::default();
            v.add(
                &field,
                format!(
                    "could not be decoded ({problem}); check its type against the .proto (strings must be UTF-8)"
                ),
            );
            let (request_id, status) = refusal(ApiError::InvalidArgument(v));
            tracing::warn!(
                request_id = %request_id,
                field = %field,
                problem = %problem,
                "refused a message that is not valid protobuf for its type"
            );
            status
        })?;
        self.decoded = true;
        Ok(Some(message))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// A new request id and the status of `error` for it. The handler that would name the request
/// never ran: the id is made here, for the caller to log, and returned in
/// `google.rpc.RequestInfo` and `x-request-id` as for any other refusal.
fn refusal(error: ApiError) -> (String, Status) {
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let mut status = error.into_status(&request_id);
    if let Ok(id) = request_id.parse() {
        status
            .metadata_mut()
            .insert(crate::services::REQUEST_ID_HEADER, id);
    }
    (request_id, status)
}

/// The field path (`consent.valid_until`) and the problem from prost's error text, which reads
/// `failed to decode Protobuf message: Outer.field: Inner.field: problem`. A message that fails
/// before any field is named is `(message)`.
fn describe(text: &str) -> (String, String) {
    let mut rest = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(text);
    let mut path: Vec<&str> = Vec::new();
    while let Some((head, tail)) = rest.split_once(": ") {
        let Some((message, field)) = head.split_once('.') else {
            break;
        };
        let ident =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !(ident(message) && ident(field)) {
            break;
        }
        path.push(field);
        rest = tail;
    }
    // prost names the innermost field first.
    path.reverse();
    let field = if path.is_empty() {
        "(message)".to_owned()
    } else {
        path.join(".")
    };
    // prost's texts are fixed phrases and numbers; still, nothing shaped like an identity code
    // leaves through an error.
    let problem = if silta_core::hetu::contains_hetu(rest) {
        "malformed".to_owned()
    } else {
        rest.to_owned()
    };
    (field, problem)
}

#[cfg(test)]
mod tests {
    use super::describe;

    /// `STREAM_ITEMS` names exactly the items of the contract's streamed responses, and no
    /// message is streamed in one place and single in another.
    #[test]
    fn the_stream_items_are_the_contract() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor");
        let methods: Vec<_> = set
            .file
            .iter()
            .filter(|f| f.package() == "silta.v1")
            .flat_map(|f| f.service.iter())
            .flat_map(|s| s.method.iter())
            .collect();
        // A client stream would make its request type one that comes many to a call.
        assert!(
            methods.iter().all(|m| !m.client_streaming()),
            "a client-streaming RPC: add its request type to STREAM_ITEMS"
        );
        let mut streamed: Vec<&str> = methods
            .iter()
            .filter(|m| m.server_streaming())
            .map(|m| m.output_type().trim_start_matches('.'))
            .collect();
        streamed.sort_unstable();
        streamed.dedup();
        let mut listed: Vec<&str> = super::STREAM_ITEMS.iter().map(|(n, _)| *n).collect();
        listed.sort_unstable();
        assert_eq!(listed, streamed);
        for m in &methods {
            let single = [
                Some(m.input_type()),
                (!m.server_streaming()).then(|| m.output_type()),
            ];
            for name in single.into_iter().flatten() {
                assert!(
                    !listed.contains(&name.trim_start_matches('.')),
                    "{name} is both streamed and single"
                );
            }
        }
    }

    #[test]
    fn prost_errors_name_the_field_path() {
        assert_eq!(
            describe(
                "failed to decode Protobuf message: ReportRentArrearsRequest.hetu: invalid string value: data is not UTF-8 encoded"
            ),
            (
                "hetu".to_owned(),
                "invalid string value: data is not UTF-8 encoded".to_owned()
            )
        );
        assert_eq!(
            describe(
                "failed to decode Protobuf message: Timestamp.seconds: Consent.valid_until: EnrolClientRequest.consent: invalid wire type: LengthDelimited (expected Varint)"
            )
            .0,
            "consent.valid_until.seconds"
        );
        assert_eq!(
            describe("failed to decode Protobuf message: buffer underflow"),
            ("(message)".to_owned(), "buffer underflow".to_owned())
        );
    }
}
