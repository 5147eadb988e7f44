//! Authentication and authorization of `stele.v1.Stele` calls.
//!
//! A call's credential is a bearer token in the `authorization` metadata
//! ([`token`]) or, over mTLS, a client certificate registered as a principal.
//! [`Authenticator::caller`] turns it into a [`Caller`] (or UNAUTHENTICATED),
//! and the caller allows the RPC's group on each topic the call touches (or
//! PERMISSION_DENIED), following the one table in [`rpc`]. Under
//! [`AuthMode::None`] every caller is anonymous and holds every grant.
//!
//! Invariant: a refused call is refused before the handler does anything else,
//! so it writes nothing.
//! Invariant: no client-visible message says why a credential failed, nor
//! whether a token exists; the audit log does, without the secret.
//! Invariant: the in-memory credentials equal the token store after every
//! change, and every change is announced on `changes`, so that open streams of
//! a revoked token end at once.

pub mod audit;
pub mod grant;
pub mod rpc;
pub mod token;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tonic::Status;

use stele_engine::error::{Error, Result};
use stele_engine::io::StdStorage;
use stele_engine::limits::{CERTIFICATE_SUBJECT_SIZE_MAX, TOKEN_NAME_SIZE_MAX};
use stele_engine::token::{TokenEntry, TokenStore};
use stele_wire::status::{permission_denied, unauthenticated};

use audit::{AuditEvent, AuditLog, AuditTarget};
use grant::{Grants, Group};
use rpc::{Rpc, TopicFrom};

/// Whether calls need a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Every caller may do everything (the laptop default).
    #[default]
    None,
    /// Every call of `stele.v1.Stele` needs a valid token or client certificate.
    Required,
}

impl std::str::FromStr for AuthMode {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<AuthMode, String> {
        match text {
            "none" => Ok(AuthMode::None),
            "required" => Ok(AuthMode::Required),
            _ => Err(format!("unknown auth mode {text:?}; use none or required")),
        }
    }
}

/// The security settings of a server.
#[derive(Clone, Default)]
pub struct AuthConfig {
    /// Whether calls need a credential.
    pub mode: AuthMode,
    /// A token (made with `stele token generate`) to store with every grant
    /// when the store is empty: the first administrator.
    pub bootstrap_token: Option<String>,
    /// Where the audit log goes.
    pub audit: AuditTarget,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("mode", &self.mode)
            .field(
                "bootstrap_token",
                &self.bootstrap_token.as_ref().map(|_| "<redacted>"),
            )
            .field("audit", &self.audit)
            .finish()
    }
}

/// A stored credential with its grants parsed.
#[derive(Debug)]
struct Credential {
    entry: TokenEntry,
    grants: Grants,
}

impl Credential {
    fn is_valid(&self, now_ms: u64) -> bool {
        self.entry.revoked_at_ms == 0 && (self.entry.expires_at_ms == 0 || now_ms < self.entry.expires_at_ms)
    }
}

/// Every credential, by token id and by certificate subject.
#[derive(Debug, Default)]
struct Credentials {
    by_id: HashMap<String, Arc<Credential>>,
    by_subject: HashMap<String, Arc<Credential>>,
}

impl Credentials {
    fn of(entries: Vec<TokenEntry>) -> Credentials {
        let mut credentials = Credentials::default();
        for entry in entries {
            // Grants were checked when stored; one that no longer parses grants nothing.
            let grants = Grants::parse(&entry.grants).unwrap_or_default();
            let credential = Arc::new(Credential { entry, grants });
            if credential.entry.secret_hash.is_none() {
                // A revoked principal must not shadow a live one of the same subject.
                let live = credential.entry.revoked_at_ms == 0;
                let keep = credentials
                    .by_subject
                    .get(&credential.entry.certificate_subject)
                    .is_some_and(|other| other.entry.revoked_at_ms == 0 && !live);
                if !keep {
                    credentials.by_subject.insert(
                        credential.entry.certificate_subject.clone(),
                        Arc::clone(&credential),
                    );
                }
            }
            credentials.by_id.insert(credential.entry.id.clone(), credential);
        }
        credentials
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
enum Principal {
    /// `--auth none`.
    Anonymous,
    /// A bearer token.
    Token(Arc<Credential>),
    /// A registered client certificate.
    Certificate(Arc<Credential>),
}

/// What an unknown id's presented hash is compared with (no SHA-256 equals it
/// but by chance).
const UNKNOWN_HASH: [u8; stele_engine::token::SECRET_HASH_LEN] = [0; stele_engine::token::SECRET_HASH_LEN];

impl Principal {
    /// `token:<id>`, `certificate:<subject>` or `anonymous`: how the audit log
    /// and WhoAmI name it.
    fn text(&self) -> String {
        match self {
            Principal::Anonymous => "anonymous".to_string(),
            Principal::Token(credential) => format!("token:{}", credential.entry.id),
            Principal::Certificate(credential) => {
                format!("certificate:{}", credential.entry.certificate_subject)
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// The server's authenticator: the token store, its credentials in memory, the
/// audit log.
pub struct Authenticator {
    mode: AuthMode,
    /// `None` for [`Authenticator::anonymous`].
    store: Option<TokenStore>,
    credentials: RwLock<Arc<Credentials>>,
    changes: watch::Sender<u64>,
    audit: AuditLog,
    all: Grants,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("mode", &self.mode).finish()
    }
}

/// What a new token is.
#[derive(Debug, Clone, Default)]
pub struct NewToken {
    /// A label.
    pub name: String,
    /// `<group>:<pattern>` grants.
    pub grants: Vec<String>,
    /// Lifetime; `None` never expires.
    pub expires_in: Option<Duration>,
    /// A client-certificate subject instead of a secret.
    pub certificate_subject: Option<String>,
}

impl Authenticator {
    /// Opens the token store in `data_dir` and applies the bootstrap token.
    ///
    /// # Errors
    /// [`Error::Config`] for a malformed bootstrap token, or for
    /// [`AuthMode::Required`] with no token stored and none to bootstrap;
    /// errors opening the store or the audit log.
    pub fn open(data_dir: &Path, config: &AuthConfig) -> Result<Arc<Authenticator>> {
        let store = TokenStore::open(Arc::new(StdStorage), data_dir)?;
        let audit = AuditLog::start(&config.audit).map_err(|error| {
            Error::Config(format!("cannot open the audit log {:?}: {error}", config.audit))
        })?;
        if let Some(text) = &config.bootstrap_token {
            let parsed = token::parse(text.trim()).map_err(|error| {
                Error::Config(format!(
                    "the bootstrap token is malformed ({error}); make one with `stele token generate`"
                ))
            })?;
            if store.is_empty() {
                store.create(TokenEntry {
                    id: parsed.id.to_string(),
                    name: "bootstrap".to_string(),
                    secret_hash: Some(token::secret_hash(&parsed)),
                    certificate_subject: String::new(),
                    grants: Grants::all().texts(),
                    created_at_ms: now_ms(),
                    expires_at_ms: 0,
                    revoked_at_ms: 0,
                    created_by: "bootstrap".to_string(),
                })?;
                tracing::info!(token_id = parsed.id, "stored the bootstrap admin token");
            } else if store.get(parsed.id).is_none() {
                tracing::warn!(
                    "the bootstrap token is ignored: tokens exist already (issue more with `stele token create`)"
                );
            }
        }
        if config.mode == AuthMode::Required && store.is_empty() {
            return Err(Error::Config(
                "--auth required needs a first token: run `stele token generate > admin.token` and start with \
                 --bootstrap-token-file admin.token (or STELE_BOOTSTRAP_TOKEN)"
                    .to_string(),
            ));
        }
        let credentials = RwLock::new(Arc::new(Credentials::of(store.list())));
        Ok(Arc::new(Authenticator {
            mode: config.mode,
            store: Some(store),
            credentials,
            changes: watch::channel(0).0,
            audit,
            all: Grants::all(),
        }))
    }

    /// An authenticator of `--auth none` that keeps no tokens: every caller is
    /// anonymous, the token RPCs fail and nothing is audited.
    pub fn anonymous() -> Arc<Authenticator> {
        Arc::new(Authenticator {
            mode: AuthMode::None,
            store: None,
            credentials: RwLock::new(Arc::new(Credentials::default())),
            changes: watch::channel(0).0,
            audit: AuditLog::start(&AuditTarget::Off).expect("an audit log that is off opens"),
            all: Grants::all(),
        })
    }

    fn store(&self) -> Result<&TokenStore> {
        self.store
            .as_ref()
            .ok_or_else(|| Error::Config("this server keeps no tokens".to_string()))
    }

    fn credentials(&self) -> Arc<Credentials> {
        Arc::clone(
            &self
                .credentials
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Authenticates a call of `rpc`: its `authorization` metadata, else its
    /// client certificate's subject.
    ///
    /// # Errors
    /// UNAUTHENTICATED, the same for every reason.
    pub fn caller(
        self: &Arc<Self>,
        rpc: Rpc,
        metadata: &tonic::metadata::MetadataMap,
        peer: Option<SocketAddr>,
        certificate_subject: Option<&str>,
    ) -> std::result::Result<Caller, Status> {
        let principal = self.principal(rpc.name(), metadata, peer, certificate_subject)?;
        Ok(Caller {
            rpc,
            principal,
            peer,
            auth: Arc::clone(self),
        })
    }

    /// Authorizes a scrape of `/metrics`: under [`AuthMode::Required`], a
    /// credential holding `metrics:*`.
    ///
    /// # Errors
    /// UNAUTHENTICATED or PERMISSION_DENIED (audited).
    pub fn authorize_metrics(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        peer: Option<SocketAddr>,
        certificate_subject: Option<&str>,
    ) -> std::result::Result<(), Status> {
        let principal = self.principal("GET /metrics", metadata, peer, certificate_subject)?;
        let credential = match &principal {
            Principal::Anonymous => return Ok(()),
            Principal::Token(credential) | Principal::Certificate(credential) => credential,
        };
        if credential.grants.allows(Group::Metrics, "") {
            return Ok(());
        }
        self.audit.record(AuditEvent {
            principal: &principal.text(),
            peer,
            rpc: "GET /metrics",
            topic: None,
            result: "PERMISSION_DENIED",
            detail: Some("needs metrics:*"),
        });
        Err(permission_denied("metrics:*"))
    }

    /// Authenticates a call of a service other than `stele.v1.Stele` (server
    /// reflection, named `service` in the audit log): any valid credential.
    ///
    /// # Errors
    /// UNAUTHENTICATED, the same for every reason.
    pub fn authenticate(
        &self,
        service: &str,
        metadata: &tonic::metadata::MetadataMap,
        peer: Option<SocketAddr>,
        certificate_subject: Option<&str>,
    ) -> std::result::Result<(), Status> {
        self.principal(service, metadata, peer, certificate_subject)
            .map(|_| ())
    }

    fn principal(
        &self,
        rpc: &str,
        metadata: &tonic::metadata::MetadataMap,
        peer: Option<SocketAddr>,
        certificate_subject: Option<&str>,
    ) -> std::result::Result<Principal, Status> {
        if self.mode == AuthMode::None {
            return Ok(Principal::Anonymous);
        }
        let refuse = |principal: &str, reason: &str| {
            self.audit.record(AuditEvent {
                principal,
                peer,
                rpc,
                topic: None,
                result: "UNAUTHENTICATED",
                detail: Some(reason),
            });
            unauthenticated()
        };
        let credentials = self.credentials();
        if let Some(value) = metadata.get("authorization") {
            let Some(text) = value.to_str().ok().and_then(bearer) else {
                return Err(refuse(
                    "unauthenticated",
                    "the authorization value is not `Bearer <token>`",
                ));
            };
            let parsed = match token::parse(text) {
                Ok(parsed) => parsed,
                Err(error) => return Err(refuse("unauthenticated", &error.to_string())),
            };
            // Built only for a refusal: the accepted path allocates nothing.
            let principal = || format!("token:{}", parsed.id);
            // The hash is computed and compared whether or not the id exists,
            // so that the time taken does not tell either.
            let presented = token::secret_hash(&parsed);
            let credential = credentials.by_id.get(parsed.id);
            let stored = credential
                .and_then(|credential| credential.entry.secret_hash.as_ref())
                .unwrap_or(&UNKNOWN_HASH);
            let matches = token::hashes_equal(stored, &presented);
            let Some(credential) = credential else {
                return Err(refuse(&principal(), "unknown token"));
            };
            if !matches || credential.entry.secret_hash.is_none() {
                return Err(refuse(&principal(), "wrong secret"));
            }
            if !credential.is_valid(now_ms()) {
                let reason = if credential.entry.revoked_at_ms != 0 {
                    "revoked"
                } else {
                    "expired"
                };
                return Err(refuse(&principal(), reason));
            }
            return Ok(Principal::Token(Arc::clone(credential)));
        }
        if let Some(subject) = certificate_subject {
            let principal = || format!("certificate:{subject}");
            return match credentials.by_subject.get(subject) {
                Some(credential) if credential.is_valid(now_ms()) => {
                    Ok(Principal::Certificate(Arc::clone(credential)))
                }
                Some(_) => Err(refuse(&principal(), "principal revoked or expired")),
                None => Err(refuse(
                    &principal(),
                    "no principal registered for the certificate",
                )),
            };
        }
        Err(refuse("unauthenticated", "no credential"))
    }

    /// Every stored credential, revoked and expired ones included.
    pub fn list(&self) -> Vec<TokenEntry> {
        self.store.as_ref().map(TokenStore::list).unwrap_or_default()
    }

    /// Issues a token for `caller`, who may grant only what it holds. Blocks
    /// on the store's sync: call it off the async runtime.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad name, grant, subject or expiry, or
    /// a grant the caller does not hold; I/O errors.
    pub fn create(&self, caller: &Caller, new: NewToken) -> Result<(TokenEntry, Option<String>)> {
        check_token_name(&new.name)?;
        let grants = Grants::parse(&new.grants).map_err(Error::InvalidArgument)?;
        if let Some(missing) = grants.iter().find(|grant| !caller.grants().covers(grant)) {
            return Err(Error::InvalidArgument(format!(
                "cannot grant {missing}: a token can grant only what its creator holds"
            )));
        }
        let created_at_ms = now_ms();
        let expires_at_ms = match new.expires_in {
            None => 0,
            Some(lifetime) if lifetime.is_zero() => {
                return Err(Error::InvalidArgument(
                    "an expiry must be in the future".to_string(),
                ));
            }
            Some(lifetime) => created_at_ms.saturating_add(lifetime.as_millis() as u64),
        };
        let random = |error: getrandom::Error| Error::Config(format!("the random source failed: {error}"));
        let (id, secret, secret_hash, certificate_subject) = match new.certificate_subject {
            Some(subject) => {
                if subject.is_empty() || subject.len() > CERTIFICATE_SUBJECT_SIZE_MAX {
                    return Err(Error::InvalidArgument(format!(
                        "a certificate subject is 1 to {CERTIFICATE_SUBJECT_SIZE_MAX} bytes"
                    )));
                }
                if subject.chars().any(char::is_control) {
                    return Err(Error::InvalidArgument(
                        "a certificate subject has no control characters".to_string(),
                    ));
                }
                (token::generate_id().map_err(random)?, None, None, subject)
            }
            None => {
                let (id, text) = token::generate().map_err(random)?;
                let hash = token::secret_hash(&token::parse(&text).expect("a generated token parses"));
                (id, Some(text), Some(hash), String::new())
            }
        };
        let entry = TokenEntry {
            id,
            name: new.name,
            secret_hash,
            certificate_subject,
            grants: grants.texts(),
            created_at_ms,
            expires_at_ms,
            revoked_at_ms: 0,
            created_by: caller.principal(),
        };
        self.store()?.create(entry.clone())?;
        self.refresh();
        Ok((entry, secret))
    }

    /// Revokes a token; `None` for an unknown id. Blocks on the store's sync.
    ///
    /// # Errors
    /// I/O errors.
    pub fn revoke(&self, id: &str) -> Result<Option<TokenEntry>> {
        let revoked = self.store()?.revoke(id, now_ms())?;
        if revoked.is_some() {
            self.refresh();
        }
        Ok(revoked)
    }

    fn refresh(&self) {
        let credentials = Arc::new(Credentials::of(self.list()));
        *self
            .credentials
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = credentials;
        self.changes.send_modify(|generation| *generation += 1);
    }

    /// The token store (`None` when anonymous), for a backup.
    pub fn token_store(&self) -> Option<&TokenStore> {
        self.store.as_ref()
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }
}

/// The token of an `authorization` value `Bearer <token>` (the scheme in any case).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Token names: 1 to [`TOKEN_NAME_SIZE_MAX`] bytes of letters, digits, `.`, `_`, `-`.
fn check_token_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > TOKEN_NAME_SIZE_MAX {
        return Err(Error::InvalidArgument(format!(
            "a token name is 1 to {TOKEN_NAME_SIZE_MAX} bytes"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Error::InvalidArgument(format!(
            "token name {name:?} contains {bad:?}; use letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// An authenticated call.
#[derive(Debug, Clone)]
pub struct Caller {
    rpc: Rpc,
    principal: Principal,
    peer: Option<SocketAddr>,
    auth: Arc<Authenticator>,
}

impl Caller {
    /// `token:<id>`, `certificate:<subject>` or `anonymous`.
    pub fn principal(&self) -> String {
        self.principal.text()
    }

    /// The name of the caller's token or principal entry.
    pub fn name(&self) -> &str {
        match &self.principal {
            Principal::Anonymous => "",
            Principal::Token(credential) | Principal::Certificate(credential) => &credential.entry.name,
        }
    }

    /// The caller's grants.
    pub fn grants(&self) -> &Grants {
        match &self.principal {
            Principal::Anonymous => &self.auth.all,
            Principal::Token(credential) | Principal::Certificate(credential) => &credential.grants,
        }
    }

    /// Whether the server requires credentials.
    pub fn auth_required(&self) -> bool {
        self.auth.mode == AuthMode::Required
    }

    /// Allows the RPC's group on `topic`.
    ///
    /// # Errors
    /// PERMISSION_DENIED, audited.
    pub fn allow(&self, topic: &str) -> std::result::Result<(), Status> {
        let Some(group) = self.rpc.rule().group else {
            return Ok(());
        };
        let topic = match self.rpc.rule().topic {
            TopicFrom::None => "",
            _ => topic,
        };
        if self.grants().allows(group, topic) {
            return Ok(());
        }
        let grant = match self.rpc.rule().topic {
            TopicFrom::None => format!("{}:*", group.name()),
            _ => format!("{}:{topic}", group.name()),
        };
        self.auth.audit.record(AuditEvent {
            principal: &self.principal(),
            peer: self.peer,
            rpc: self.rpc.name(),
            topic: (!topic.is_empty()).then_some(topic),
            result: "PERMISSION_DENIED",
            detail: Some(&format!("needs {grant}")),
        });
        Err(permission_denied(&grant))
    }

    /// Allows an RPC about no topic (the token RPCs): a grant of its group on `*`.
    ///
    /// # Errors
    /// PERMISSION_DENIED, audited.
    pub fn allow_global(&self) -> std::result::Result<(), Status> {
        self.allow("")
    }

    /// Whether a listing shows `topic`: any grant reaching it (ListTopics), or
    /// one of the RPC's group (ListWebhooks).
    pub fn sees(&self, topic: &str) -> bool {
        match self.rpc.rule().group {
            Some(group) => self.grants().allows(group, topic),
            None => Group::ON_TOPICS
                .into_iter()
                .any(|group| self.grants().allows(group, topic)),
        }
    }

    /// Writes the call's outcome to the audit log when the RPC is audited
    /// (admin and token operations).
    pub fn audit<T>(
        &self,
        topic: Option<&str>,
        detail: Option<&str>,
        result: &std::result::Result<T, Status>,
    ) {
        if !self.rpc.is_audited() || !self.auth.audit.is_on() {
            return;
        }
        let outcome = match result {
            Ok(_) => "ok".to_string(),
            Err(status) => stele_wire::status::detail_of(status)
                .and_then(|detail| stele_wire::proto::ErrorCode::try_from(detail.code).ok())
                .map_or_else(
                    || format!("{:?}", status.code()),
                    |code| stele_wire::status::error_name(code).to_string(),
                ),
        };
        self.auth.audit.record(AuditEvent {
            principal: &self.principal(),
            peer: self.peer,
            rpc: self.rpc.name(),
            topic,
            result: &outcome,
            detail,
        });
    }

    /// Resolves when the caller's credential stops being valid (revoked or
    /// expired); never under `--auth none`. Streams select on it to end.
    pub async fn ended(&self) {
        let credential = match &self.principal {
            Principal::Anonymous => return std::future::pending().await,
            Principal::Token(credential) | Principal::Certificate(credential) => Arc::clone(credential),
        };
        let mut changes = self.auth.changes.subscribe();
        loop {
            let current = self.auth.credentials().by_id.get(&credential.entry.id).cloned();
            let Some(current) = current else {
                return;
            };
            let now = now_ms();
            if !current.is_valid(now) {
                return;
            }
            let expires_at_ms = current.entry.expires_at_ms;
            let until_expiry = async {
                if expires_at_ms == 0 {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_millis(expires_at_ms.saturating_sub(now))).await;
            };
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The authenticator is gone: so is the server.
                        return std::future::pending().await;
                    }
                }
                () = until_expiry => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(token: &str) -> tonic::metadata::MetadataMap {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
        metadata
    }

    fn required(bootstrap: &str, audit: AuditTarget) -> AuthConfig {
        AuthConfig {
            mode: AuthMode::Required,
            bootstrap_token: Some(bootstrap.to_string()),
            audit,
        }
    }

    #[test]
    fn required_auth_needs_a_first_token_and_a_well_formed_one() {
        // Goal: the server refuses to start locked out, or with a mistyped token.
        let dir = tempfile::tempdir().expect("tempdir");
        let config = AuthConfig {
            mode: AuthMode::Required,
            ..AuthConfig::default()
        };
        let error = Authenticator::open(dir.path(), &config).expect_err("no token");
        assert!(error.to_string().contains("stele token generate"), "{error}");
        let (_, token) = token::generate().expect("random");
        // The last character changed (to one it is not: a token ending in
        // `x` made this test pass its own token as the mistyped one, 1 in 62).
        let last = if token.ends_with('x') { 'y' } else { 'x' };
        let mistyped = format!("{}{last}", &token[..token.len() - 1]);
        assert!(Authenticator::open(dir.path(), &required(&mistyped, AuditTarget::Off)).is_err());
        assert!(Authenticator::open(dir.path(), &required(&token, AuditTarget::Off)).is_ok());
        // A later bootstrap token is ignored once tokens exist.
        let (_, later) = token::generate().expect("random");
        let auth = Authenticator::open(dir.path(), &required(&later, AuditTarget::Off)).expect("reopen");
        assert!(auth.caller(Rpc::WhoAmI, &metadata(&later), None, None).is_err());
        assert!(auth.caller(Rpc::WhoAmI, &metadata(&token), None, None).is_ok());
    }

    #[test]
    fn expired_revoked_and_wrong_secret_tokens_are_one_refusal() {
        // Goal: every failure is the same UNAUTHENTICATED; the audit log says why.
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, admin) = token::generate().expect("random");
        let audit_path = dir.path().join("audit.jsonl");
        let auth = Authenticator::open(
            dir.path(),
            &required(&admin, AuditTarget::File(audit_path.clone())),
        )
        .expect("open");
        let root = auth
            .caller(Rpc::CreateToken, &metadata(&admin), None, None)
            .expect("admin");
        // An entry that expired a second ago, stored directly.
        let (id, expired) = token::generate().expect("random");
        auth.store()
            .expect("store")
            .create(TokenEntry {
                id,
                name: "old".to_string(),
                secret_hash: Some(token::secret_hash(&token::parse(&expired).expect("parse"))),
                grants: vec!["read:*".to_string()],
                created_at_ms: now_ms() - 10_000,
                expires_at_ms: now_ms() - 1_000,
                ..TokenEntry::default()
            })
            .expect("store an expired token");
        auth.refresh();
        let new = |name: &str| NewToken {
            name: name.to_string(),
            grants: vec!["read:*".to_string()],
            ..NewToken::default()
        };
        let (revoked_entry, revoked) = auth.create(&root, new("revoked")).expect("create");
        let revoked = revoked.expect("a secret");
        auth.revoke(&revoked_entry.id).expect("revoke");
        let (live_entry, live) = auth.create(&root, new("live")).expect("create");
        let live = live.expect("a secret");
        // The right id with another token's secret: rebuild a well-formed token.
        let (_, other) = token::generate().expect("random");
        let forged = token::assemble(&live_entry.id, &other[23..23 + token::SECRET_LEN]);
        assert!(token::parse(&forged).is_ok());
        let refusals: Vec<String> = [
            expired.as_str(),
            revoked.as_str(),
            forged.as_str(),
            "stele_nonsense",
        ]
        .iter()
        .map(|token| {
            auth.caller(Rpc::Read, &metadata(token), None, None)
                .expect_err("refused")
                .message()
                .to_string()
        })
        .collect();
        assert!(refusals.windows(2).all(|pair| pair[0] == pair[1]), "{refusals:?}");
        assert!(auth.caller(Rpc::Read, &metadata(&live), None, None).is_ok());
        // Dropping the log writes every queued line.
        drop(root);
        drop(auth);
        let text = std::fs::read_to_string(&audit_path).expect("audit log");
        for reason in ["expired", "revoked", "wrong secret", "not a Stele token"] {
            assert!(text.contains(reason), "{reason} missing from {text}");
        }
        for secret in [&admin, &expired, &revoked, &live] {
            assert!(!text.contains(&secret[23..]), "a secret in the audit log");
        }
    }

    #[test]
    fn certificate_principals_authenticate_by_subject_until_revoked() {
        // Goal: a registered subject gets its grants; an unknown or revoked one nothing.
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, admin) = token::generate().expect("random");
        let auth = Authenticator::open(dir.path(), &required(&admin, AuditTarget::Off)).expect("open");
        let root = auth
            .caller(Rpc::CreateToken, &metadata(&admin), None, None)
            .expect("admin");
        let (entry, secret) = auth
            .create(
                &root,
                NewToken {
                    name: "orders-service".to_string(),
                    grants: vec!["write:orders".to_string()],
                    certificate_subject: Some("orders.internal".to_string()),
                    ..NewToken::default()
                },
            )
            .expect("register");
        assert!(secret.is_none());
        let empty = tonic::metadata::MetadataMap::new();
        let caller = auth
            .caller(Rpc::Append, &empty, None, Some("orders.internal"))
            .expect("certificate principal");
        assert_eq!(caller.principal(), "certificate:orders.internal");
        assert!(caller.allow("orders").is_ok());
        assert!(caller.allow("payments").is_err());
        assert!(
            auth.caller(Rpc::Append, &empty, None, Some("other.internal"))
                .is_err()
        );
        auth.revoke(&entry.id).expect("revoke");
        assert!(
            auth.caller(Rpc::Append, &empty, None, Some("orders.internal"))
                .is_err()
        );
    }

    #[test]
    fn reopening_the_audit_log_follows_a_rotation() {
        // Goal: after logrotate moves the file and the server reopens it,
        // new lines go to a new file at the old path and none is lost.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::start(&AuditTarget::File(path.clone())).expect("start");
        let event = |rpc| AuditEvent {
            principal: "token:x",
            peer: None,
            rpc,
            topic: None,
            result: "ok",
            detail: None,
        };
        log.record(event("Before"));
        let rotated = dir.path().join("audit.jsonl.1");
        std::fs::rename(&path, &rotated).expect("rotate");
        log.record(event("Between"));
        log.reopen();
        log.record(event("After"));
        drop(log);
        let old = std::fs::read_to_string(&rotated).expect("rotated file");
        let new = std::fs::read_to_string(&path).expect("new file");
        assert!(
            old.contains("Before") && old.contains("Between") && !old.contains("After"),
            "{old}"
        );
        assert!(new.contains("After") && !new.contains("Before"), "{new}");
    }

    #[test]
    fn the_audit_log_is_rate_limited_and_says_how_much_it_dropped() {
        // Goal: a flood of refusals writes at most the burst, then a count.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::start(&AuditTarget::File(path.clone())).expect("start");
        let event = AuditEvent {
            principal: "unauthenticated",
            peer: None,
            rpc: "Read",
            topic: None,
            result: "UNAUTHENTICATED",
            detail: None,
        };
        let flood = audit::LINES_BURST as usize * 3;
        for _ in 0..flood {
            log.record(event);
        }
        assert!(log.suppressed_count() > 0);
        drop(log);
        let lines = std::fs::read_to_string(&path).expect("audit log").lines().count();
        assert!(lines >= audit::LINES_BURST as usize / 2, "{lines} lines");
        assert!(lines < flood, "{lines} lines for {flood} events");
        assert!(lines as f64 <= audit::LINES_BURST + 1.0 + audit::LINES_PER_SECOND * 10.0);
    }
}
