//! The canonical byte encoding of a ledger entry: what the leaf hash covers.
//!
//! Version 1, all integers big-endian, every field always present, in this order:
//!
//! ```text
//! u8      version = 1
//! i64     time, Unix milliseconds (UTC)
//! str     request id
//! str     actor organisation
//! str     actor role
//! opt     acting person            (opt = u8 0 absent | u8 1 then str)
//! str     action (RPC name)
//! opt     flow id
//! str     outcome ("allow" | "deny")
//! str     reason code
//! list    deciding policy ids      (list = u16 count, then that many str)
//! opt     subject, pseudonym in the audit domain
//! list    field names disclosed
//! list    recipient organisations
//! ```
//!
//! `str` is a u16 length then that many bytes of UTF-8. Encoding is deterministic (one entry has
//! one encoding) and decoding is strict: a wrong version, a truncated or overlong field,
//! invalid UTF-8 or trailing bytes are errors, so two different byte strings never decode to
//! the same entry.

/// The encoding version written by [`Entry::encode`].
pub const VERSION: u8 = 1;

/// One audit decision, as the ledger records it. It holds pseudonyms and field *names* only.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// Unix milliseconds (UTC).
    pub time_ms: i64,
    /// The request's id.
    pub request_id: String,
    /// The calling organisation.
    pub actor_org: String,
    /// Its role.
    pub actor_role: String,
    /// The acting person, when known.
    pub actor_person: Option<String>,
    /// The RPC or internal action.
    pub action: String,
    /// The flow, when the action is an exchange.
    pub flow_id: Option<String>,
    /// `allow` or `deny`.
    pub outcome: String,
    /// Stable reason code.
    pub reason: String,
    /// Deciding policy ids.
    pub policy_ids: Vec<String>,
    /// Subject pseudonym in the audit domain.
    pub subject: Option<String>,
    /// Names of fields disclosed.
    pub fields: Vec<String>,
    /// Recipient organisations.
    pub recipients: Vec<String>,
}

/// Why bytes are not a valid entry, or an entry cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// An unknown encoding version.
    #[error("unknown entry version {0}")]
    Version(u8),
    /// The bytes end inside a field.
    #[error("entry is truncated")]
    Truncated,
    /// A text field is not UTF-8.
    #[error("entry text is not UTF-8")]
    Utf8,
    /// An option tag other than 0 or 1.
    #[error("entry has a bad presence tag")]
    Tag,
    /// Bytes after the last field.
    #[error("entry has trailing bytes")]
    Trailing,
    /// A text longer than 65,535 bytes or a list longer than 65,535 items.
    #[error("entry field too long to encode")]
    TooLong,
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), EntryError> {
    let len = u16::try_from(s.len()).map_err(|_| EntryError::TooLong)?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) -> Result<(), EntryError> {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s)?;
        }
    }
    Ok(())
}

fn put_list(out: &mut Vec<u8>, items: &[String]) -> Result<(), EntryError> {
    let n = u16::try_from(items.len()).map_err(|_| EntryError::TooLong)?;
    out.extend_from_slice(&n.to_be_bytes());
    items.iter().try_for_each(|s| put_str(out, s))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EntryError> {
        if self.0.len() < n {
            return Err(EntryError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, EntryError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, EntryError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn i64(&mut self) -> Result<i64, EntryError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(i64::from_be_bytes(b))
    }
    fn str(&mut self) -> Result<String, EntryError> {
        let n = usize::from(self.u16()?);
        std::str::from_utf8(self.take(n)?)
            .map(str::to_owned)
            .map_err(|_| EntryError::Utf8)
    }
    fn skip_str(&mut self) -> Result<(), EntryError> {
        let n = usize::from(self.u16()?);
        std::str::from_utf8(self.take(n)?)
            .map(|_| ())
            .map_err(|_| EntryError::Utf8)
    }
    fn skip_opt(&mut self) -> Result<(), EntryError> {
        match self.u8()? {
            0 => Ok(()),
            1 => self.skip_str(),
            _ => Err(EntryError::Tag),
        }
    }
    fn skip_list(&mut self) -> Result<(), EntryError> {
        (0..self.u16()?).try_for_each(|_| self.skip_str())
    }
    fn opt(&mut self) -> Result<Option<String>, EntryError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.str().map(Some),
            _ => Err(EntryError::Tag),
        }
    }
    fn list(&mut self) -> Result<Vec<String>, EntryError> {
        (0..self.u16()?).map(|_| self.str()).collect()
    }
}

impl Entry {
    /// The canonical bytes.
    pub fn encode(&self) -> Result<Vec<u8>, EntryError> {
        let mut out = Vec::with_capacity(256);
        out.push(VERSION);
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        put_str(&mut out, &self.request_id)?;
        put_str(&mut out, &self.actor_org)?;
        put_str(&mut out, &self.actor_role)?;
        put_opt(&mut out, self.actor_person.as_deref())?;
        put_str(&mut out, &self.action)?;
        put_opt(&mut out, self.flow_id.as_deref())?;
        put_str(&mut out, &self.outcome)?;
        put_str(&mut out, &self.reason)?;
        put_list(&mut out, &self.policy_ids)?;
        put_opt(&mut out, self.subject.as_deref())?;
        put_list(&mut out, &self.fields)?;
        put_list(&mut out, &self.recipients)?;
        Ok(out)
    }

    /// Checks that `bytes` are a valid entry, exactly as [`Entry::decode`] would, without
    /// allocating: what offline verification needs at millions of entries a second.
    pub fn check(bytes: &[u8]) -> Result<(), EntryError> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(EntryError::Version(version));
        }
        r.i64()?;
        r.skip_str()?; // request id
        r.skip_str()?; // actor org
        r.skip_str()?; // actor role
        r.skip_opt()?; // actor person
        r.skip_str()?; // action
        r.skip_opt()?; // flow id
        r.skip_str()?; // outcome
        r.skip_str()?; // reason
        r.skip_list()?; // policy ids
        r.skip_opt()?; // subject
        r.skip_list()?; // fields
        r.skip_list()?; // recipients
        if r.0.is_empty() {
            Ok(())
        } else {
            Err(EntryError::Trailing)
        }
    }

    /// Decodes canonical bytes, strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self, EntryError> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(EntryError::Version(version));
        }
        let entry = Entry {
            time_ms: r.i64()?,
            request_id: r.str()?,
            actor_org: r.str()?,
            actor_role: r.str()?,
            actor_person: r.opt()?,
            action: r.str()?,
            flow_id: r.opt()?,
            outcome: r.str()?,
            reason: r.str()?,
            policy_ids: r.list()?,
            subject: r.opt()?,
            fields: r.list()?,
            recipients: r.list()?,
        };
        if !r.0.is_empty() {
            return Err(EntryError::Trailing);
        }
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Entry {
        Entry {
            time_ms: 1_795_000_000_000,
            request_id: "r1".into(),
            actor_org: "city-housing".into(),
            actor_role: "landlord".into(),
            actor_person: None,
            action: "Landlord.ReportRentArrears".into(),
            flow_id: Some("rent-arrears".into()),
            outcome: "allow".into(),
            reason: "consent".into(),
            policy_ids: vec!["p1".into()],
            subject: Some("ps1.abc".into()),
            fields: vec!["arrears_band".into(), "months_overdue".into()],
            recipients: vec!["social-a".into()],
        }
    }

    #[test]
    fn round_trips_and_rejects_every_malformation() {
        let bytes = sample().encode().expect("encodes");
        assert_eq!(Entry::decode(&bytes), Ok(sample()));
        assert_eq!(Entry::decode(&[2]), Err(EntryError::Version(2)));
        for cut in 0..bytes.len() {
            assert!(Entry::decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Entry::decode(&longer), Err(EntryError::Trailing));
    }

    proptest! {
        #[test]
        fn check_agrees_with_decode(bytes in proptest::collection::vec(any::<u8>(), 0..300), e in any::<i64>()) {
            prop_assert_eq!(Entry::check(&bytes), Entry::decode(&bytes).map(|_| ()));
            let valid = Entry { time_ms: e, ..sample() }.encode().expect("encodes");
            prop_assert_eq!(Entry::check(&valid), Ok(()));
        }

        #[test]
        fn decoding_never_panics_and_encoding_is_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(entry) = Entry::decode(&bytes) {
                // One entry, one encoding: what decodes re-encodes to the same bytes.
                prop_assert_eq!(entry.encode().expect("encodes"), bytes);
            }
        }

        #[test]
        fn any_entry_round_trips(org in "\\PC{0,20}", person in proptest::option::of("\\PC{0,10}"), t in any::<i64>(), n in 0usize..4) {
            let e = Entry { time_ms: t, actor_org: org, actor_person: person, fields: vec!["f".into(); n], ..sample() };
            prop_assert_eq!(Entry::decode(&e.encode().expect("encodes")), Ok(e));
        }
    }
}
