//! Token journal records (`STELETOK`): the server's bearer tokens and
//! client-certificate principals, each stored whole on every change (creation,
//! revocation). See FORMAT.md, "Token journal records".
//!
//! Put (kind 1): `u8 kind`, id, name, `u8 flags` (bit 0: a certificate principal,
//! which has no secret), `secret_hash` (the SHA-256 of the secret: 32 bytes, or 0
//! for a certificate principal), certificate subject, `u16 grants_count` and that
//! many grants, `u64 created_at_ms`, `u64 expires_at_ms` (0: never),
//! `u64 revoked_at_ms` (0: not revoked), the creator's principal; strings and
//! byte strings are a `u16` length then the bytes.
//!
//! The engine stores a token's grants as text; what they mean is the server's.

use super::journal::{JournalRecord, ReplayError};
use super::{DecodeError, Put, Reader, check_len};
use crate::limits::{
    CERTIFICATE_SUBJECT_SIZE_MAX, PRINCIPAL_SIZE_MAX, TOKEN_GRANT_SIZE_MAX, TOKEN_GRANTS_COUNT_MAX,
    TOKEN_ID_LEN, TOKEN_NAME_SIZE_MAX, TOKENS_COUNT_MAX,
};

/// The magic of the token journal.
pub const TOKEN_MAGIC: &[u8; 8] = b"STELETOK";
/// Record kind: the whole entry of a token (create or replace).
const KIND_PUT: u8 = 1;
/// Flag bit of a put record: the entry is a client-certificate principal.
const FLAG_CERTIFICATE: u8 = 1;
/// Length of a secret's SHA-256.
pub const SECRET_HASH_LEN: usize = 32;
/// Largest record body: a put with every field at its limit.
pub const TOKEN_RECORD_SIZE_MAX: u32 = (1
    + 2
    + TOKEN_ID_LEN
    + 2
    + TOKEN_NAME_SIZE_MAX
    + 1
    + 2
    + SECRET_HASH_LEN
    + 2
    + CERTIFICATE_SUBJECT_SIZE_MAX
    + 2
    + TOKEN_GRANTS_COUNT_MAX * (2 + TOKEN_GRANT_SIZE_MAX)
    + 3 * 8
    + 2
    + PRINCIPAL_SIZE_MAX) as u32;

/// A token or a client-certificate principal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenEntry {
    /// The public id: [`TOKEN_ID_LEN`] characters of `[A-Za-z0-9]`.
    pub id: String,
    /// A label chosen by its creator.
    pub name: String,
    /// The SHA-256 of the secret; `None` for a certificate principal.
    pub secret_hash: Option<[u8; SECRET_HASH_LEN]>,
    /// The client-certificate subject of a certificate principal; empty for a token.
    pub certificate_subject: String,
    /// `<group>:<topic pattern>` grants, as given.
    pub grants: Vec<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When it stops being valid; 0 never.
    pub expires_at_ms: u64,
    /// When it was revoked; 0 not revoked.
    pub revoked_at_ms: u64,
    /// The principal that created it.
    pub created_by: String,
}

/// One change of the token journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRecord {
    /// The whole entry after the change.
    Put(Box<TokenEntry>),
}

fn decode_string(reader: &mut Reader<'_>, size_max: usize) -> Result<String, DecodeError> {
    Ok(reader.str16(size_max)?.to_string())
}

fn decode_put(reader: &mut Reader<'_>) -> Result<TokenEntry, DecodeError> {
    let id = decode_string(reader, TOKEN_ID_LEN)?;
    if id.len() != TOKEN_ID_LEN || !id.bytes().all(|byte| byte.is_ascii_alphanumeric()) {
        return Err(DecodeError::Invalid("a token id is 16 ASCII letters and digits"));
    }
    let name = decode_string(reader, TOKEN_NAME_SIZE_MAX)?;
    let flags = reader.u8()?;
    if flags & !FLAG_CERTIFICATE != 0 {
        return Err(DecodeError::Invalid("unknown token flags"));
    }
    let hash = reader.bytes16(SECRET_HASH_LEN)?;
    let secret_hash = match (flags & FLAG_CERTIFICATE != 0, hash.len()) {
        (true, 0) => None,
        (false, SECRET_HASH_LEN) => {
            let mut bytes = [0; SECRET_HASH_LEN];
            bytes.copy_from_slice(hash);
            Some(bytes)
        }
        _ => {
            return Err(DecodeError::Invalid(
                "a token has a 32-byte hash, a principal none",
            ));
        }
    };
    let certificate_subject = decode_string(reader, CERTIFICATE_SUBJECT_SIZE_MAX)?;
    if secret_hash.is_none() == certificate_subject.is_empty() {
        return Err(DecodeError::Invalid(
            "a certificate principal, and only one, names a subject",
        ));
    }
    let grants_count = reader.u16()? as usize;
    check_len(grants_count as u64, TOKEN_GRANTS_COUNT_MAX as u64)?;
    let mut grants = Vec::with_capacity(grants_count);
    for _ in 0..grants_count {
        grants.push(decode_string(reader, TOKEN_GRANT_SIZE_MAX)?);
    }
    Ok(TokenEntry {
        id,
        name,
        secret_hash,
        certificate_subject,
        grants,
        created_at_ms: reader.u64()?,
        expires_at_ms: reader.u64()?,
        revoked_at_ms: reader.u64()?,
        created_by: decode_string(reader, PRINCIPAL_SIZE_MAX)?,
    })
}

impl JournalRecord for TokenRecord {
    const MAGIC: &'static [u8; 8] = TOKEN_MAGIC;
    const BODY_SIZE_MAX: u32 = TOKEN_RECORD_SIZE_MAX;
    const ENTRIES_COUNT_MAX: usize = TOKENS_COUNT_MAX;
    type Key = String;
    type Value = TokenEntry;
    type Context = ();
    type Index = ();

    fn encode(&self, out: &mut Vec<u8>) {
        let TokenRecord::Put(entry) = self;
        out.put_u8(KIND_PUT);
        out.put_bytes16(entry.id.as_bytes());
        out.put_bytes16(entry.name.as_bytes());
        out.put_u8(if entry.secret_hash.is_none() {
            FLAG_CERTIFICATE
        } else {
            0
        });
        out.put_bytes16(entry.secret_hash.as_ref().map_or(&[][..], |hash| &hash[..]));
        out.put_bytes16(entry.certificate_subject.as_bytes());
        out.put_u16(entry.grants.len() as u16);
        for grant in &entry.grants {
            out.put_bytes16(grant.as_bytes());
        }
        out.put_u64(entry.created_at_ms);
        out.put_u64(entry.expires_at_ms);
        out.put_u64(entry.revoked_at_ms);
        out.put_bytes16(entry.created_by.as_bytes());
    }

    fn decode(body: &[u8], _context: ()) -> Result<TokenRecord, DecodeError> {
        let mut reader = Reader::new(body);
        let record = match reader.u8()? {
            KIND_PUT => TokenRecord::Put(Box::new(decode_put(&mut reader)?)),
            _ => return Err(DecodeError::Invalid("unknown token record kind")),
        };
        if reader.remaining() != 0 {
            return Err(DecodeError::Invalid("trailing bytes in a token record"));
        }
        Ok(record)
    }

    fn key(&self) -> &String {
        let TokenRecord::Put(entry) = self;
        &entry.id
    }

    fn apply(
        &self,
        current: Option<&TokenEntry>,
        _index: &(),
        _context: (),
    ) -> Result<Option<TokenEntry>, ReplayError> {
        let TokenRecord::Put(entry) = self;
        // A revocation is final, and a token's secret never changes.
        if let Some(current) = current
            && ((current.revoked_at_ms != 0 && entry.revoked_at_ms == 0)
                || current.secret_hash != entry.secret_hash)
        {
            return Err(ReplayError::Invalid(DecodeError::Invalid(
                "a token record un-revokes a token or changes its secret",
            )));
        }
        Ok(Some(TokenEntry::clone(entry)))
    }

    fn snapshot(_id: &String, entry: &TokenEntry) -> TokenRecord {
        TokenRecord::Put(Box::new(entry.clone()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::format::journal::replay;

    fn entry() -> TokenEntry {
        TokenEntry {
            id: "AbCdEfGh12345678".to_string(),
            name: "ci".to_string(),
            secret_hash: Some([7; SECRET_HASH_LEN]),
            certificate_subject: String::new(),
            grants: vec!["read:orders.*".to_string(), "write:orders".to_string()],
            created_at_ms: 1_700_000_000_000,
            expires_at_ms: 1_800_000_000_000,
            revoked_at_ms: 0,
            created_by: "bootstrap".to_string(),
        }
    }

    #[test]
    fn records_roundtrip_and_bad_bodies_are_refused() {
        // Goal: every field survives encoding; a trailing byte, a bad id or a
        // principal with a hash is refused.
        let principal = TokenEntry {
            secret_hash: None,
            certificate_subject: "orders-service".to_string(),
            ..entry()
        };
        for entry in [entry(), principal] {
            let record = TokenRecord::Put(Box::new(entry));
            let mut body = Vec::new();
            record.encode(&mut body);
            assert_eq!(TokenRecord::decode(&body, ()), Ok(record.clone()));
            body.push(0);
            assert!(TokenRecord::decode(&body, ()).is_err());
        }
        for bad in [
            TokenEntry {
                id: "short".to_string(),
                ..entry()
            },
            TokenEntry {
                certificate_subject: "both".to_string(),
                ..entry()
            },
            TokenEntry {
                secret_hash: None,
                ..entry()
            },
        ] {
            let mut body = Vec::new();
            TokenRecord::Put(Box::new(bad.clone())).encode(&mut body);
            assert!(TokenRecord::decode(&body, ()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replay_refuses_to_unrevoke_or_rekey() {
        // Goal: a journal cannot bring a revoked token back or swap its secret.
        let mut tokens = BTreeMap::new();
        let encode = |entry: TokenEntry| {
            let mut body = Vec::new();
            TokenRecord::Put(Box::new(entry)).encode(&mut body);
            body
        };
        let revoked = TokenEntry {
            revoked_at_ms: 5,
            ..entry()
        };
        replay::<TokenRecord>(&mut tokens, &mut (), (), &encode(revoked.clone())).expect("revoke");
        assert!(replay::<TokenRecord>(&mut tokens, &mut (), (), &encode(entry())).is_err());
        let rekeyed = TokenEntry {
            secret_hash: Some([8; SECRET_HASH_LEN]),
            ..revoked.clone()
        };
        assert!(replay::<TokenRecord>(&mut tokens, &mut (), (), &encode(rekeyed)).is_err());
        assert_eq!(tokens.get(&entry().id), Some(&revoked));
    }
}
