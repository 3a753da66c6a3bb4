//! JWT verification at the Socket.IO handshake: token → [`Identity`].
//!
//! The algorithm is pinned by configuration: a token whose header names any other algorithm
//! (`none` included) is refused before its signature is looked at, which also closes the
//! HS-vs-RS confusion attack (an HS256 token "signed" with the RSA public key). The `kid`
//! header is ignored: there is exactly one key.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, errors::ErrorKind};
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

/// Verifies tokens with the node's one key and algorithm.
#[derive(Clone)]
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Builds the verifier from the validated config, or names the bad setting.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let (key, alg) = match config.jwt_key()? {
            JwtKey::Secret(s) => (DecodingKey::from_secret(s.as_bytes()), Algorithm::HS256),
            JwtKey::PublicKeyPem(pem, JwtAlgorithm::RS256) => (
                DecodingKey::from_rsa_pem(&pem)
                    .map_err(|e| format!("invalid setting JWT_PUBLIC_KEY_FILE: {e}"))?,
                Algorithm::RS256,
            ),
            JwtKey::PublicKeyPem(pem, JwtAlgorithm::ES256) => (
                DecodingKey::from_ec_pem(&pem)
                    .map_err(|e| format!("invalid setting JWT_PUBLIC_KEY_FILE: {e}"))?,
                Algorithm::ES256,
            ),
            JwtKey::PublicKeyPem(_, JwtAlgorithm::HS256) => {
                return Err("invalid setting JWT_ALGORITHM: HS256 needs JWT_SECRET".into());
            }
        };
        let mut validation = Validation::new(alg);
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
        Ok(Authenticator { key, validation })
    }

    /// The configured leeway in seconds (the expiry timer waits for it too).
    pub fn leeway_secs(&self) -> u64 {
        self.validation.leeway
    }

    /// Verifies a token and returns who it belongs to.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data =
            decode::<Claims>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
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

    #[test]
    fn good_and_expired_tokens() {
        let a = auth();
        let t = mint_hs256("s3cret", "alice", now_secs() + 60, Some("r1")).unwrap();
        let id = a.verify(&t).unwrap();
        assert_eq!(id.user_id, "alice");
        assert_eq!(id.role_context_id.as_deref(), Some("r1"));
        let t = mint_hs256("s3cret", "alice", now_secs() - 60, None).unwrap();
        assert_eq!(a.verify(&t), Err(AuthError::Expired));
        let t = mint_hs256("other", "alice", now_secs() + 60, None).unwrap();
        assert_eq!(a.verify(&t), Err(AuthError::BadSignature));
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
