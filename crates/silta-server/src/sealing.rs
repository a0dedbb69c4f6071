//! The recipients' keys for sealed identity ([`silta_core::sealed`]): who may be told who a
//! resident is, and the public key the code is sealed to for them.

use std::collections::BTreeMap;

use silta_core::OrgId;
use silta_core::policy::Policies;
use silta_core::sealed::{RecipientKey, SealedIdentity};

use crate::config::StatutoryRecipient;

/// Each statutory recipient's public key, from `[[statutory_recipients]]`.
#[derive(Debug, Default)]
pub struct RecipientKeys(BTreeMap<OrgId, RecipientKey>);

impl RecipientKeys {
    /// Reads the configured keys; an error names the entry and the key.
    pub fn from_config(list: &[StatutoryRecipient]) -> Result<Self, String> {
        let mut keys = BTreeMap::new();
        for (i, r) in list.iter().enumerate() {
            let org = OrgId::new(&r.org)
                .map_err(|e| format!("statutory_recipients[{i}].org {:?}: {e}", r.org))?;
            let (key_name, text) = match (&r.hpke_public_key, &r.hpke_public_key_file) {
                (Some(text), None) => ("hpke_public_key", text.clone()),
                (None, Some(path)) => (
                    "hpke_public_key_file",
                    std::fs::read_to_string(path).map_err(|e| {
                        format!(
                            "statutory_recipients[{i}].hpke_public_key_file (org {org}): {}: {e}",
                            path.display()
                        )
                    })?,
                ),
                _ => {
                    return Err(format!(
                        "statutory_recipients[{i}] (org {org}): set exactly one of hpke_public_key and hpke_public_key_file"
                    ));
                }
            };
            let key = RecipientKey::from_base64(&text)
                .map_err(|e| format!("statutory_recipients[{i}].{key_name} (org {org}): {e}"))?;
            if keys.insert(org.clone(), key).is_some() {
                return Err(format!(
                    "statutory_recipients[{i}].org: {org} is listed twice; give each organisation one key"
                ));
            }
        }
        Ok(RecipientKeys(keys))
    }

    /// Whether every organisation a flow discloses identity to has a key: without one, its
    /// alerts could not say whom they concern.
    pub fn check(&self, policies: &Policies) -> Result<(), String> {
        for flow in policies.flows().iter().filter(|f| f.discloses_identity) {
            if let Some(org) = flow.recipients.iter().find(|o| !self.0.contains_key(*o)) {
                return Err(format!(
                    "flow {:?} discloses the resident's identity to {org}, which has no key: add [[statutory_recipients]] with org = \"{org}\" and hpke_public_key (the recipient makes it with `silta keys recipient-keypair`)",
                    flow.id
                ));
            }
        }
        Ok(())
    }

    /// The key of `org`.
    pub fn get(&self, org: &OrgId) -> Option<&RecipientKey> {
        self.0.get(org)
    }
}

/// `payload` (an outbox payload, JSON) with `sealed` added under `sealed_identity`, the
/// binary parts base64.
pub(crate) fn with_sealed(payload: &str, sealed: &SealedIdentity) -> Option<String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut v: serde_json::Value = serde_json::from_str(payload).ok()?;
    v.as_object_mut()?.insert(
        "sealed_identity".to_owned(),
        serde_json::json!({
            "suite": sealed.suite,
            "key_id": sealed.key_id,
            "enc": b64.encode(&sealed.enc),
            "ciphertext": b64.encode(&sealed.ciphertext),
        }),
    );
    serde_json::to_string(&v).ok()
}
