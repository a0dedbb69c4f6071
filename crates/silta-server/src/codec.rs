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

use std::marker::PhantomData;

use prost::Message;
use silta_core::validate::Violations;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use crate::status::ApiError;

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
        SiltaDecoder(PhantomData)
    }
}

/// Decodes `U`; see the module docs for its errors.
#[derive(Debug, Clone)]
pub struct SiltaDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for SiltaDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            let (field, problem) = describe(&e.to_string());
            // The handler that would name the request never ran: the id is made here, logged
            // and returned in `google.rpc.RequestInfo` as for any other refusal.
            let request_id = uuid::Uuid::new_v4().simple().to_string();
            tracing::warn!(
                request_id = %request_id,
                field = %field,
                problem = %problem,
                "refused a message that is not valid protobuf for its type"
            );
            let mut v = Violations::default();
            v.add(
                &field,
                format!(
                    "could not be decoded ({problem}); check its type against the .proto (strings must be UTF-8)"
                ),
            );
            let mut status = ApiError::InvalidArgument(v).into_status(&request_id);
            if let Ok(id) = request_id.parse() {
                status
                    .metadata_mut()
                    .insert(crate::services::REQUEST_ID_HEADER, id);
            }
            status
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
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
