//! The one rule for which private keys the jwt-bearer grant signs with: a
//! PKCS#8 key that is P-256 EC (ES256) or else RSA of 2048 bits or more
//! (RS256). `snctl add` checks a key file with it and `snctld` signs with
//! it, so the two cannot disagree.
//!
//! Behind the `jwt-key` feature, off by default: a program that only asks
//! for tokens does not pull in a cryptography library.

use ring::error::KeyRejected;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// A private key the jwt-bearer grant can sign with.
pub enum JwtKeyPair {
    /// P-256 EC: signs ES256.
    Es256(EcdsaKeyPair),
    /// RSA: signs RS256.
    Rs256(RsaKeyPair),
}

impl JwtKeyPair {
    /// The key in PKCS#8 `der`, tried as P-256 EC first, then as RSA; the
    /// error is the RSA attempt's, which names what is wrong with the key
    /// for the more common case.
    pub fn from_pkcs8(der: &[u8], rng: &SystemRandom) -> Result<JwtKeyPair, KeyRejected> {
        if let Ok(ec) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, rng) {
            return Ok(JwtKeyPair::Es256(ec));
        }
        RsaKeyPair::from_pkcs8(der).map(JwtKeyPair::Rs256)
    }

    /// The JWS `alg` the key signs: `ES256` or `RS256`.
    pub fn alg(&self) -> &'static str {
        match self {
            JwtKeyPair::Es256(_) => "ES256",
            JwtKeyPair::Rs256(_) => "RS256",
        }
    }
}
