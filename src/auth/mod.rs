//! JWT verification at the Socket.IO handshake and at `session:refresh`: token → [`Identity`].
//!
//! The algorithms are pinned by configuration: a token whose header names any other algorithm
//! (`none` included) is refused before its signature is looked at, which also closes the
//! HS-vs-RS confusion attack (an HS256 token "signed" with the RSA public key). With one key
//! (`JWT_SECRET`, `JWT_PUBLIC_KEY_FILE`) the `kid` header is ignored; with a key set
//! (`JWT_JWKS_URL`, [`jwks`]) it chooses the key, and the key's type must fit the algorithm.

pub mod fetch;
pub mod jwks;

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, errors::ErrorKind};
use serde::Deserialize;

use crate::config::{Config, JwtAlgorithm, JwtKey};
use crate::validate::is_valid_id;

/// Who a socket belongs to, from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `sub`: the user id.
    pub user_id: String,
    /// `roleContextId`, if the token has one.
    pub role_context_id: Option<String>,
    /// `email`, if the token has one.
    pub email: Option<String>,
    /// `exp`, seconds since the Unix epoch.
    pub exp: u64,
}

/// Why a token was refused; `Display` is the `connect_error` message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token in `auth.token` nor in the Authorization header.
    #[error(
        "UNAUTHORIZED: missing token (send it as auth.token or an Authorization: Bearer header)"
    )]
    Missing,
    /// `exp` has passed.
    #[error("UNAUTHORIZED: token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("UNAUTHORIZED: token not yet valid")]
    NotYetValid,
    /// Signature does not verify.
    #[error("UNAUTHORIZED: bad signature")]
    BadSignature,
    /// Header algorithm differs from the configured one.
    #[error("UNAUTHORIZED: algorithm not allowed")]
    WrongAlgorithm,
    /// `iss` or `aud` does not match.
    #[error("UNAUTHORIZED: wrong {0}")]
    WrongClaim(&'static str),
    /// The token's `kid` is not in the key set (after the refetch it may cause).
    #[error("UNAUTHORIZED: unknown signing key")]
    UnknownKey,
    /// JWKS mode, and no key set was ever fetched.
    #[error("UNAUTHORIZED: key set unavailable")]
    KeySetUnavailable,
    /// `session:refresh` with a token of another user.
    #[error("UNAUTHORIZED: the token belongs to another user")]
    OtherUser,
    /// Anything else wrong with the token.
    #[error("UNAUTHORIZED: invalid token: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(rename = "roleContextId")]
    role_context_id: Option<String>,
    email: Option<String>,
}

/// Where verification keys come from.
#[derive(Clone)]
enum Keys {
    /// One configured key (`JWT_SECRET` or `JWT_PUBLIC_KEY_FILE`).
    One(DecodingKey),
    /// A fetched key set (`JWT_JWKS_URL`).
    Set(Arc<jwks::Jwks>),
}

/// Verifies tokens with the node's key (or key set) and pinned algorithms.
#[derive(Clone)]
pub struct Authenticator {
    keys: Keys,
    /// The pinned algorithms; each verification narrows `validation` to the token's one.
    algorithms: Vec<Algorithm>,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
    }
}

impl Authenticator {
    /// Builds the verifier from the validated config, or names the bad setting. A key set is
    /// not fetched here: [`Authenticator::key_set`] hands it to its refresher task.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let (keys, algorithms) = match config.jwt_key()? {
            JwtKey::Secret(s) => (
                Keys::One(DecodingKey::from_secret(s.as_bytes())),
                vec![Algorithm::HS256],
            ),
            JwtKey::PublicKeyPem(pem, JwtAlgorithm::RS256) => (
                Keys::One(
                    DecodingKey::from_rsa_pem(&pem)
                        .map_err(|e| format!("invalid setting JWT_PUBLIC_KEY_FILE: {e}"))?,
                ),
                vec![Algorithm::RS256],
            ),
            JwtKey::PublicKeyPem(pem, JwtAlgorithm::ES256) => (
                Keys::One(
                    DecodingKey::from_ec_pem(&pem)
                        .map_err(|e| format!("invalid setting JWT_PUBLIC_KEY_FILE: {e}"))?,
                ),
                vec![Algorithm::ES256],
            ),
            JwtKey::PublicKeyPem(_, JwtAlgorithm::HS256) => {
                return Err("invalid setting JWT_ALGORITHM: HS256 needs JWT_SECRET".into());
            }
            JwtKey::Jwks(url, algs) => (
                Keys::Set(Arc::new(jwks::Jwks::new(
                    url,
                    Duration::from_secs(config.jwt_jwks_refresh_secs),
                    Duration::from_secs(config.jwt_jwks_min_refetch_secs),
                ))),
                algs.into_iter().map(algorithm).collect(),
            ),
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.leeway = config.jwt_leeway_secs;
        validation.validate_nbf = true;
        // A configured issuer/audience must also be present: a token without it is refused.
        let mut required = vec!["exp", "sub"];
        match &config.jwt_issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &config.jwt_audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            // docs/protocol.md §8: when no audience is configured, a token's `aud` is not checked.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Authenticator {
            keys,
            algorithms,
            validation,
        })
    }

    /// The key set to keep fresh ([`jwks::run`]) and to ask about readiness, in JWKS mode.
    pub fn key_set(&self) -> Option<Arc<jwks::Jwks>> {
        match &self.keys {
            Keys::Set(set) => Some(set.clone()),
            Keys::One(_) => None,
        }
    }

    /// The configured leeway in seconds (the expiry timer waits for it too).
    pub fn leeway_secs(&self) -> u64 {
        self.validation.leeway
    }

    /// Verifies a token and returns who it belongs to. In JWKS mode a token naming a key the
    /// set lacks may wait for one (bounded) fetch of the set.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::WrongAlgorithm);
        }
        let key = match &self.keys {
            Keys::One(key) => key.clone(),
            Keys::Set(set) => {
                let key = set.key(header.kid.as_deref()).await?;
                // A key published for one algorithm verifies only that one; its type must fit
                // the token's (an RSA key never checks an ES256 signature).
                if key.alg.is_some_and(|a| a != header.alg)
                    || key.decoding.family() != header.alg.family()
                {
                    return Err(AuthError::WrongAlgorithm);
                }
                key.decoding
            }
        };
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let data = decode::<Claims>(token, &key, &validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                AuthError::WrongAlgorithm
            }
            ErrorKind::InvalidIssuer => AuthError::WrongClaim("issuer"),
            ErrorKind::InvalidAudience => AuthError::WrongClaim("audience"),
            ErrorKind::MissingRequiredClaim(c) => AuthError::Invalid(format!("missing {c}")),
            _ => AuthError::Invalid(e.to_string()),
        })?;
        let c = data.claims;
        if !is_valid_id(&c.sub) {
            return Err(AuthError::Invalid(
                "sub must be 1-128 characters of [A-Za-z0-9_.:@-]".into(),
            ));
        }
        if let Some(role) = &c.role_context_id
            && !is_valid_id(role)
        {
            return Err(AuthError::Invalid(
                "roleContextId must be 1-128 characters of [A-Za-z0-9_.:@-]".into(),
            ));
        }
        Ok(Identity {
            user_id: c.sub,
            role_context_id: c.role_context_id,
            email: c.email,
            exp: c.exp,
        })
    }

    /// Verifies a `session:refresh` token of the socket of `current`: like a handshake token,
    /// and of the same user. The new identity keeps the socket's role and email claims as the
    /// new token states them.
    pub async fn verify_refresh(
        &self,
        current: &Identity,
        token: &str,
    ) -> Result<Identity, AuthError> {
        let next = self.verify(token).await?;
        if next.user_id != current.user_id {
            return Err(AuthError::OtherUser);
        }
        Ok(next)
    }
}

/// Extracts a bearer token from an `Authorization` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Signs an HS256 token: used by the `fanout-token` tool and the tests, never by a node.
pub fn mint_hs256(
    secret: &str,
    sub: &str,
    exp: u64,
    role_context_id: Option<&str>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut claims = serde_json::json!({ "sub": sub, "exp": exp });
    if let Some(role) = role_context_id {
        claims["roleContextId"] = role.into();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        let c = Config::try_from_args(["fanout", "--api-key", "k", "--jwt-secret", "s3cret"])
            .expect("config");
        Authenticator::from_config(&c).expect("auth")
    }

    #[tokio::test]
    async fn good_and_expired_tokens() {
        let a = auth();
        let t = mint_hs256("s3cret", "alice", now_secs() + 60, Some("r1")).unwrap();
        let id = a.verify(&t).await.unwrap();
        assert_eq!(id.user_id, "alice");
        assert_eq!(id.role_context_id.as_deref(), Some("r1"));
        let t = mint_hs256("s3cret", "alice", now_secs() - 60, None).unwrap();
        assert_eq!(a.verify(&t).await, Err(AuthError::Expired));
        let t = mint_hs256("other", "alice", now_secs() + 60, None).unwrap();
        assert_eq!(a.verify(&t).await, Err(AuthError::BadSignature));
    }

    #[tokio::test]
    async fn a_refresh_must_be_for_the_same_user() {
        let a = auth();
        let alice = a
            .verify(&mint_hs256("s3cret", "alice", now_secs() + 60, None).unwrap())
            .await
            .unwrap();
        let exp = now_secs() + 600;
        let later = mint_hs256("s3cret", "alice", exp, None).unwrap();
        assert_eq!(
            a.verify_refresh(&alice, &later).await.map(|i| i.exp),
            Ok(exp)
        );
        let bob = mint_hs256("s3cret", "bob", now_secs() + 600, None).unwrap();
        assert_eq!(
            a.verify_refresh(&alice, &bob).await,
            Err(AuthError::OtherUser)
        );
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
