//! Verification keys from a JSON Web Key Set (`JWT_JWKS_URL`, docs/protocol.md §1): what an
//! identity provider (Auth0, Keycloak, Cognito, Entra, Firebase) publishes and rotates.
//!
//! The model: one cached set per node, replaced whole by each successful fetch, so a key the
//! provider removed stops verifying at the next fetch and a key it added verifies from then on.
//! Fetches happen
//! - every `JWT_JWKS_REFRESH_SECS` ([`run`]), sooner while the endpoint fails;
//! - at once when a token names a `kid` the set lacks (a key added since the last fetch), at
//!   most once per `JWT_JWKS_MIN_REFETCH_SECS` for the whole node, whatever the number of such
//!   tokens: a flood of tokens with made-up `kid`s costs one fetch per interval, and the tokens
//!   waiting meanwhile are answered from the set that fetch brought.
//!
//! A failed fetch keeps the cached set (a provider's outage does not lock users out); a node
//! that never fetched a set refuses every token (`UNAUTHORIZED: key set unavailable`) and is
//! not ready. HMAC (`oct`) keys and encryption keys in the set are ignored: JWKS verification
//! is asymmetric only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::AuthError;
use super::fetch::{self, JwksUrl};
use crate::clock;

/// Longest wait between retries while the endpoint fails (or before the first set arrives).
const MAX_RETRY: Duration = Duration::from_secs(30);

/// One verification key of the set.
#[derive(Clone)]
pub struct Key {
    /// The key, ready for `jsonwebtoken::decode`.
    pub decoding: DecodingKey,
    /// The JWK's own `alg`, when it names one: a token must then use exactly it.
    pub alg: Option<Algorithm>,
}

/// The keys of one fetched set, by `kid`.
#[derive(Clone, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Key>,
    /// Every usable key, named or not (a token without `kid` needs the set to hold one).
    all: Vec<Key>,
}

impl KeySet {
    /// Parses a JWKS document; keys that cannot verify signatures here (HMAC, encryption, an
    /// unsupported curve) are skipped with a warning, a document that is not a key set is an
    /// error.
    pub fn parse(body: &[u8]) -> Result<KeySet, String> {
        let set: JwkSet =
            serde_json::from_slice(body).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
        let mut out = KeySet::default();
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone();
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                tracing::warn!(?kid, "JWKS: ignoring a symmetric (oct) key");
                continue;
            }
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let alg = match jwk.common.key_algorithm {
                None => None,
                Some(a) => match signing_alg(a) {
                    Some(a) => Some(a),
                    None => {
                        tracing::warn!(?kid, alg = ?a, "JWKS: ignoring a key of another algorithm");
                        continue;
                    }
                },
            };
            let decoding = match DecodingKey::from_jwk(jwk) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(?kid, error = %e, "JWKS: ignoring a key that does not load");
                    continue;
                }
            };
            let key = Key { decoding, alg };
            if let Some(kid) = kid {
                out.by_kid.insert(kid, key.clone());
            }
            out.all.push(key);
        }
        Ok(out)
    }

    /// How many usable keys the set holds.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Whether the set holds no usable key.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The key a token names, or for a token without `kid` the set's only key.
    fn find(&self, kid: Option<&str>) -> Result<Key, AuthError> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned().ok_or(AuthError::UnknownKey),
            None if self.all.len() == 1 => Ok(self.all[0].clone()),
            None => Err(AuthError::Invalid(format!(
                "the token has no kid and the key set holds {} keys",
                self.all.len()
            ))),
        }
    }
}

/// The JWS algorithms a JWK's `alg` may name for a signing key.
fn signing_alg(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The node's cached key set and its fetch discipline (module doc).
pub struct Jwks {
    url: JwksUrl,
    refresh: Duration,
    min_refetch: Duration,
    set: RwLock<Option<Arc<KeySet>>>,
    /// Unix ms of the last successful fetch; 0 before the first.
    fetched_at_ms: AtomicU64,
    /// Whether the last fetch failed (the cached set, if any, is what verifies).
    failing: AtomicBool,
    /// When the last on-demand fetch started: held across that fetch, so tokens with unknown
    /// `kid`s queue behind one fetch instead of each starting their own.
    on_demand: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// A key set not fetched yet: [`run`] fetches it.
    pub fn new(url: JwksUrl, refresh: Duration, min_refetch: Duration) -> Jwks {
        Jwks {
            url,
            refresh,
            min_refetch,
            set: RwLock::new(None),
            fetched_at_ms: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            on_demand: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether a set was ever fetched (readiness: without one no token can verify).
    pub fn available(&self) -> bool {
        self.current().is_some()
    }

    /// Seconds since the last successful fetch, `None` before the first.
    pub fn age_secs(&self) -> Option<f64> {
        match self.fetched_at_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some(clock::now_ms().saturating_sub(at) as f64 / 1000.0),
        }
    }

    fn current(&self) -> Option<Arc<KeySet>> {
        // A panic while holding the lock can only have happened mid-assignment of an Arc: the
        // value is whole either way.
        self.set
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Fetches the set now and replaces the cached one; on failure keeps it and says why.
    pub async fn fetch(&self) -> Result<usize, String> {
        let result = match fetch::get(&self.url).await {
            Ok(body) => KeySet::parse(&body),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(set) => {
                let n = set.len();
                *self
                    .set
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(set));
                self.fetched_at_ms.store(clock::now_ms(), Ordering::Relaxed);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(url = %self.url.as_str(), keys = n, "JWKS endpoint answers again");
                }
                crate::metrics::jwks_fetch(true);
                Ok(n)
            }
            Err(e) => {
                self.failing.store(true, Ordering::Relaxed);
                tracing::warn!(
                    url = %self.url.as_str(), error = %e, cached = self.available(),
                    "JWKS fetch failed; the cached keys (if any) keep verifying"
                );
                crate::metrics::jwks_fetch(false);
                Err(e)
            }
        }
    }

    /// The key for a token's `kid`, fetching the set first when the token names a key the set
    /// lacks (or there is no set yet) and the node's on-demand budget allows.
    pub async fn key(&self, kid: Option<&str>) -> Result<Key, AuthError> {
        if let Some(set) = self.current() {
            match set.find(kid) {
                Err(AuthError::UnknownKey) => {}
                found => return found,
            }
        }
        self.fetch_on_demand().await;
        match self.current() {
            Some(set) => set.find(kid),
            None => Err(AuthError::KeySetUnavailable),
        }
    }

    /// One fetch at most per `min_refetch` for the whole node; callers that arrive while one
    /// runs wait for it and then use what it brought.
    async fn fetch_on_demand(&self) {
        let mut last = self.on_demand.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_refetch) {
            return;
        }
        *last = Some(Instant::now());
        self.fetch().await.ok();
    }
}

/// Keeps the set fresh until `cancel`: a fetch now, then every `refresh`; while fetches fail,
/// retries after 1 s, 2 s, … up to 30 s (never later than `refresh`).
pub async fn run(jwks: Arc<Jwks>, cancel: CancellationToken) {
    let mut retry = Duration::from_secs(1);
    loop {
        let wait = match jwks.fetch().await {
            Ok(_) => {
                retry = Duration::from_secs(1);
                jwks.refresh
            }
            Err(_) => {
                let wait = retry.min(jwks.refresh);
                retry = (retry * 2).min(MAX_RETRY);
                wait
            }
        };
        let until = Instant::now() + wait;
        // The age gauge moves every second, so an alert sees a stale set while it ages.
        loop {
            crate::metrics::jwks_age(jwks.age_secs());
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(until.min(Instant::now() + Duration::from_secs(1))) => {}
            }
            if Instant::now() >= until {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_JWK: &str = r#"{"kty":"RSA","kid":"k1","alg":"RS256","use":"sig","n":"u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw","e":"AQAB"}"#;

    #[test]
    fn sets_are_parsed_keys_found_by_kid_and_hmac_keys_ignored() {
        let doc = format!(
            r#"{{"keys":[{RSA_JWK},{{"kty":"oct","kid":"h","k":"c2VjcmV0"}},{{"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"}}]}}"#
        );
        let set = KeySet::parse(doc.as_bytes()).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.find(Some("k1")).is_ok());
        assert_eq!(set.find(Some("h")).err(), Some(AuthError::UnknownKey));
        // One key: a token without kid may use it.
        assert!(set.find(None).is_ok());
    }

    #[test]
    fn a_token_without_kid_needs_a_set_of_one() {
        let two = RSA_JWK.replace("\"k1\"", "\"k2\"");
        let doc = format!(r#"{{"keys":[{RSA_JWK},{two}]}}"#);
        let set = KeySet::parse(doc.as_bytes()).unwrap();
        assert_eq!(set.len(), 2);
        assert!(matches!(set.find(None), Err(AuthError::Invalid(_))));
        assert!(set.find(Some("k2")).is_ok());
    }

    #[test]
    fn documents_that_are_not_key_sets_are_errors() {
        for bad in ["", "[]", "{\"keys\":3}", "not json"] {
            assert!(KeySet::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(KeySet::parse(br#"{"keys":[]}"#).unwrap().is_empty());
    }
}
