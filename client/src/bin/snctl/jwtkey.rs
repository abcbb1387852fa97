//! The private key of the jwt-bearer grant: read from a PKCS#8 file (PEM
//! or DER), checked, and its public key shown for ServiceNow's JWT
//! Verifier Map. The private key leaves this process only towards snctld.

use std::io;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::KeyPair as _;
use zeroize::Zeroizing;

use snctl::Secret;
use snctl_shared::jwtkey::JwtKeyPair;

/// A private key snctld can sign with.
pub struct JwtKey {
    /// PKCS#8 DER, standard base64, as the AddRequest carries it.
    pub pkcs8: Secret,
    /// "ES256" or "RS256".
    pub alg: &'static str,
    /// SubjectPublicKeyInfo DER.
    pub spki: Vec<u8>,
}

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    /// The file holds no key snctld can sign with.
    #[error("{}: {problem}", .path.display())]
    Unusable { path: PathBuf, problem: KeyProblem },
}

/// What is wrong with the bytes of a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyProblem {
    /// PEM, but not of an unencrypted PKCS#8 key (a PKCS#1 or encrypted one).
    #[error(
        "not an unencrypted PKCS#8 private key (\"{PEM_BEGIN}\"): convert it with \
         `openssl pkcs8 -topk8 -nocrypt -in FILE -out key.pem`"
    )]
    NotPkcs8,
    /// The PEM block does not end.
    #[error("the PEM block has no \"{PEM_END}\" line")]
    Unterminated,
    /// The PEM block's body does not decode.
    #[error("the PEM block is not valid base64")]
    BadBase64,
    /// A PKCS#8 key of another kind, or no key at all.
    #[error(
        "not a P-256 EC or RSA (2048 bits or more) PKCS#8 private key ({0}): make one with \
         `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem`"
    )]
    NotEcOrRsa(ring::error::KeyRejected),
}

/// Reads and checks the key in `path`.
pub fn read(path: &Path) -> Result<JwtKey, KeyError> {
    let raw = Zeroizing::new(std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?);
    let unusable = |problem| KeyError::Unusable {
        path: path.to_path_buf(),
        problem,
    };
    let der = pkcs8_der(&raw).map_err(unusable)?;
    parse(&der).map_err(unusable)
}

/// The DER of a PKCS#8 key given as PEM or as DER.
fn pkcs8_der(raw: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyProblem> {
    let Ok(text) = std::str::from_utf8(raw) else {
        return Ok(Zeroizing::new(raw.to_vec()));
    };
    if !text.contains("-----BEGIN") {
        return Ok(Zeroizing::new(raw.to_vec()));
    }
    let start = text.find(PEM_BEGIN).ok_or(KeyProblem::NotPkcs8)?;
    let body = &text[start + PEM_BEGIN.len()..];
    let end = body.find(PEM_END).ok_or(KeyProblem::Unterminated)?;
    let base64: Zeroizing<String> =
        Zeroizing::new(body[..end].chars().filter(|c| !c.is_whitespace()).collect());
    STANDARD
        .decode(base64.as_bytes())
        .map(Zeroizing::new)
        .map_err(|_| KeyProblem::BadBase64)
}

/// The key in `der`: P-256 EC (ES256) or RSA (RS256), tried in that order.
fn parse(der: &[u8]) -> Result<JwtKey, KeyProblem> {
    let pkcs8 = Secret::new(STANDARD.encode(der));
    let rsa = match JwtKeyPair::from_pkcs8(der, &SystemRandom::new()) {
        Ok(JwtKeyPair::Es256(ec)) => {
            // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING point }
            let mut spki = hex("3059301306072a8648ce3d020106082a8648ce3d030107034200");
            spki.extend_from_slice(ec.public_key().as_ref());
            return Ok(JwtKey {
                pkcs8,
                alg: "ES256",
                spki,
            });
        }
        Ok(JwtKeyPair::Rs256(rsa)) => rsa,
        Err(rejected) => return Err(KeyProblem::NotEcOrRsa(rejected)),
    };
    // SEQUENCE { SEQUENCE { rsaEncryption, NULL }, BIT STRING RSAPublicKey }
    let algorithm = hex("300d06092a864886f70d0101010500");
    let mut bits = vec![0u8];
    bits.extend_from_slice(rsa.public_key().as_ref());
    let mut inner = algorithm;
    inner.extend(der_tlv(0x03, &bits));
    Ok(JwtKey {
        pkcs8,
        alg: "RS256",
        spki: der_tlv(0x30, &inner),
    })
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex constant"))
        .collect()
}

/// The public key as a PEM "PUBLIC KEY" block.
pub fn public_pem(spki: &[u8]) -> String {
    let encoded = STANDARD.encode(spki);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    use super::*;

    #[test]
    fn an_ec_key_in_pem_gives_its_public_key() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pem = format!(
            "{PEM_BEGIN}\n{}\n{PEM_END}\n",
            STANDARD.encode(pkcs8.as_ref())
        );
        let key = parse(&pkcs8_der(pem.as_bytes()).unwrap()).unwrap();
        assert_eq!(key.alg, "ES256");
        assert_eq!(key.spki.len(), 91);
        assert_eq!(STANDARD.decode(key.pkcs8.expose()).unwrap(), pkcs8.as_ref());
        assert!(public_pem(&key.spki).starts_with("-----BEGIN PUBLIC KEY-----\nMFkw"));
    }

    #[test]
    fn other_key_formats_are_refused_with_the_fix() {
        let e =
            pkcs8_der(b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")
                .err()
                .unwrap()
                .to_string();
        assert!(e.contains("openssl pkcs8 -topk8"), "{e}");
        assert!(parse(b"not a key").is_err());
    }

    #[test]
    fn der_lengths_use_the_long_form_past_127() {
        assert_eq!(der_tlv(0x04, &[0; 3])[..2], [0x04, 3]);
        assert_eq!(der_tlv(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
    }
}
