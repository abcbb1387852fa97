//! Assertions for the JWT-bearer grant (RFC 7523), signed with ring.
//!
//! The private key is PKCS#8 DER, carried as standard base64 in a
//! [`Secret`]: a P-256 EC key signs ES256, an RSA key RS256. Each token
//! request gets a fresh assertion, valid [`ASSERTION_LIFETIME_SECS`], with a
//! random `jti` so that the instance can refuse a replay.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::RSA_PKCS1_SHA256;
use zeroize::Zeroizing;

use snctl_shared::jwtkey::JwtKeyPair;
use snctl_shared::protocol::JwtSettings;
use snctl_shared::Secret;

/// Why a JWT signing key cannot be used, or an assertion not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the JWT signing key is not base64")]
    NotBase64,
    #[error("the JWT signing key is neither a P-256 EC nor an RSA (2048 bits or more) PKCS#8 private key ({0})")]
    NotAKey(String),
    #[error("signing the JWT assertion failed")]
    Sign,
    #[error("no randomness for the JWT id")]
    NoRandomness,
}

/// How long an assertion is valid.
pub const ASSERTION_LIFETIME_SECS: i64 = 300;

/// Signs with `key`'s kind of key.
fn sign(key: &JwtKeyPair, rng: &SystemRandom, message: &[u8]) -> Result<Vec<u8>, JwtError> {
    let failed = |_| JwtError::Sign;
    match key {
        JwtKeyPair::Es256(key) => Ok(key.sign(rng, message).map_err(failed)?.as_ref().to_vec()),
        JwtKeyPair::Rs256(key) => {
            let mut signature = vec![0; key.public().modulus_len()];
            key.sign(&RSA_PKCS1_SHA256, rng, message, &mut signature)
                .map_err(failed)?;
            Ok(signature)
        }
    }
}

fn signer(key: &Secret, rng: &SystemRandom) -> Result<JwtKeyPair, JwtError> {
    let der = Zeroizing::new(
        STANDARD
            .decode(key.expose())
            .map_err(|_| JwtError::NotBase64)?,
    );
    JwtKeyPair::from_pkcs8(&der, rng).map_err(|e| JwtError::NotAKey(e.to_string()))
}

/// Checks that `key` is a key this module can sign with.
pub fn check_key(key: &Secret) -> Result<(), JwtError> {
    signer(key, &SystemRandom::new()).map(drop)
}

/// A signed assertion for `client_id`, issued at `now_secs`: `iss` and `aud`
/// the client ID (what ServiceNow's JWT Verifier Map expects), `sub` the
/// user, valid [`ASSERTION_LIFETIME_SECS`].
pub fn assertion(jwt: &JwtSettings, client_id: &str, now_secs: i64) -> Result<String, JwtError> {
    let rng = SystemRandom::new();
    let signer = signer(&jwt.key, &rng)?;
    let mut jti = [0u8; 16];
    rng.fill(&mut jti).map_err(|_| JwtError::NoRandomness)?;
    let mut header = serde_json::json!({ "alg": signer.alg(), "typ": "JWT" });
    if let Some(kid) = &jwt.kid {
        header["kid"] = kid.as_str().into();
    }
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": jwt.subject,
        "aud": client_id,
        "iat": now_secs,
        "exp": now_secs + ASSERTION_LIFETIME_SECS,
        "jti": URL_SAFE_NO_PAD.encode(jti),
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = sign(&signer, &rng, signing_input.as_bytes())?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{
        EcdsaKeyPair, KeyPair as _, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
        ECDSA_P256_SHA256_FIXED_SIGNING,
    };

    #[test]
    fn assertions_are_signed_es256_with_fresh_ids() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let jwt = JwtSettings {
            key: Secret::new(STANDARD.encode(pkcs8.as_ref())),
            subject: "svc.sync".into(),
            kid: Some("k1".into()),
        };
        check_key(&jwt.key).unwrap();
        let a = assertion(&jwt, "cid", 1_000).unwrap();
        let b = assertion(&jwt, "cid", 1_000).unwrap();
        let parts: Vec<&str> = a.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |s: &str| -> serde_json::Value {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap()
        };
        let header = decode(parts[0]);
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], "k1");
        let claims = decode(parts[1]);
        assert_eq!(claims["iss"], "cid");
        assert_eq!(claims["aud"], "cid");
        assert_eq!(claims["sub"], "svc.sync");
        assert_eq!(claims["exp"], 1_300);
        assert_ne!(claims["jti"], decode(b.split('.').nth(1).unwrap())["jti"]);
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, pair.public_key().as_ref())
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
            )
            .unwrap();
    }

    #[test]
    fn a_key_that_is_not_pkcs8_is_refused() {
        assert!(check_key(&Secret::new(STANDARD.encode(b"not a key"))).is_err());
        assert!(check_key(&Secret::new("%%%".into())).is_err());
    }
}
