//! Access tokens (HS256 JWTs, 15 minutes) and refresh tokens (random, 7 days,
//! stored as SHA-256 hashes, each usable once).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
pub const REFRESH_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const ISSUER: &str = "phoenix";
const ACCESS_TYPE: &str = "access";

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// The user's id.
    pub sub: Uuid,
    /// The session (login) this token belongs to.
    pub sid: Uuid,
    pub iss: String,
    pub typ: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: Uuid,
}

pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(..)")
    }
}

impl JwtKeys {
    /// From a secret of at least 32 bytes.
    pub fn from_secret(secret: &[u8]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            secret.len() >= 32,
            "the JWT key must be at least 32 bytes (it has {})",
            secret.len()
        );
        // Only HS256: "none" and every other algorithm are refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = 5;
        Ok(JwtKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        })
    }

    pub fn issue_access(&self, user: Uuid, session: Uuid) -> anyhow::Result<(String, i64)> {
        let now = chrono::Utc::now().timestamp();
        let exp = now + ACCESS_TTL.as_secs() as i64;
        let claims = Claims {
            sub: user,
            sid: session,
            iss: ISSUER.into(),
            typ: ACCESS_TYPE.into(),
            iat: now,
            exp,
            jti: Uuid::new_v4(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok((token, exp))
    }

    /// The claims of a valid, unexpired access token; otherwise why not.
    pub fn verify_access(&self, token: &str) -> Result<Claims, &'static str> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::ExpiredSignature => "token_expired",
                    ErrorKind::InvalidSignature => "token_signature",
                    ErrorKind::InvalidAlgorithm => "token_algorithm",
                    _ => "token_invalid",
                }
            })?;
        if data.claims.typ != ACCESS_TYPE {
            return Err("token_invalid");
        }
        Ok(data.claims)
    }
}

/// A new refresh token and the hash to store.
pub fn new_refresh() -> (String, Vec<u8>) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_refresh(&token);
    (token, hash)
}

pub fn hash_refresh(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> JwtKeys {
        JwtKeys::from_secret(&[7u8; 32]).unwrap()
    }

    #[test]
    fn issued_tokens_verify_and_others_do_not() {
        let k = keys();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, exp) = k.issue_access(user, session).unwrap();
        let claims = k.verify_access(&token).unwrap();
        assert_eq!((claims.sub, claims.sid, claims.exp), (user, session, exp));
        let other = JwtKeys::from_secret(&[8u8; 32]).unwrap();
        assert_eq!(other.verify_access(&token), Err("token_signature"));
        assert_eq!(k.verify_access("not.a.token"), Err("token_invalid"));
    }

    #[test]
    fn alg_none_and_expired_tokens_are_refused() {
        let k = keys();
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: Uuid::new_v4(),
            sid: Uuid::new_v4(),
            iss: ISSUER.into(),
            typ: ACCESS_TYPE.into(),
            iat: now,
            exp: now + 60,
            jti: Uuid::new_v4(),
        };
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        assert!(k.verify_access(&format!("{header}.{body}.")).is_err());
        let expired = Claims {
            exp: now - 60,
            iat: now - 1000,
            ..claims
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &expired, &k.encoding).unwrap();
        assert_eq!(k.verify_access(&token), Err("token_expired"));
    }

    #[test]
    fn short_keys_are_refused_and_refresh_tokens_hash_stably() {
        assert!(JwtKeys::from_secret(b"short").is_err());
        let (token, hash) = new_refresh();
        assert_eq!(hash_refresh(&token), hash);
        assert_eq!(token.len(), 43);
    }
}
