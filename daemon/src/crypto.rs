//! The master key and the sealing of secrets at rest.
//!
//! Every secret stored in the database (client secret, access token, refresh
//! token) is sealed with AES-256-GCM under the master key. A sealed blob is:
//!
//! ```text
//! +---------+-------------+--------------+------------------------------+
//! | version | key id      | nonce        | ciphertext || 16-byte tag   |
//! | 1 byte  | 8 bytes     | 12 bytes     |                              |
//! +---------+-------------+--------------+------------------------------+
//! ```
//!
//! The nonce is random for every seal. The additional data binds the blob
//! to the authentication name and the field it belongs to, so a blob copied
//! to another row or column does not open. The key id is derived from the
//! key (HMAC-SHA256 of a fixed label), so it identifies the key without
//! revealing anything about it.
//!
//! The settings of an authentication (instance URL, client ID, grant,
//! readers, ...) are stored in clear, as they must be read to be shown,
//! but they decide where the sealed secrets are sent and who gets the
//! tokens: each row carries an HMAC-SHA256 of them ([`MasterKey::sign_settings`]),
//! under a key derived from the master key with HKDF-SHA256 for that use
//! alone, so it never serves as the sealing key or the key id. Someone who
//! can write the database (or a backup of it) without the key can change a
//! setting, but not make its MAC match.
//!
//! The key comes from, in this order (see [`load_master_key`]):
//! `$CREDENTIALS_DIRECTORY/snctld.key` when systemd passes one
//! (`LoadCredential=` / `LoadCredentialEncrypted=`), else the file named by
//! `[master_key] file` in the configuration (which must then exist), else
//! `snctld.key` in the state directory, created on first start. A key file
//! that group or others can read is refused.
//!
//! `snctld rekey` ([`crate::rekey`]) moves the database to a new key. For the
//! state directory's key it writes the new one to `snctld.key.new` before
//! its commit and renames it over `snctld.key` after; a start that finds the
//! database sealed with the `.new` key finishes that rename.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};
use serde::Deserialize;
use zeroize::Zeroizing;

use snctl_shared::Secret;

use crate::settings::{optional, Applies, Changes};

/// File name of the master key, in the state or credentials directory.
pub const KEY_FILE: &str = "snctld.key";
/// The state directory's next key while `snctld rekey` runs (see the module
/// documentation).
pub const NEW_KEY_FILE: &str = "snctld.key.new";
const BLOB_VERSION: u8 = 1;
const KEY_ID_LEN: usize = 8;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
const KEY_ID_LABEL: &[u8] = b"snctld master key id v1";
// HKDF salt and info of the settings MAC key: a key of its own, so that a
// MAC can never be mistaken for (or help forge) a sealed blob or a key id.
const SUBKEY_SALT: &[u8] = b"snctld subkeys v1";
const SETTINGS_MAC_INFO: &[u8] = b"snctld settings mac v1";

/// Why the master key could not be loaded or a blob not opened.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("cannot read the master key {path}: {source}")]
    ReadKey { path: PathBuf, source: io::Error },
    #[error("cannot create the master key {path}: {source}")]
    CreateKey { path: PathBuf, source: io::Error },
    #[error("the master key {path} is readable by group or others (mode {mode:o}): run `chmod 600 {path}` and start again")]
    LoosePermissions { path: PathBuf, mode: u32 },
    #[error("the master key {path} is not a key: expected 32 bytes, or 64 hex digits")]
    BadKey { path: PathBuf },
    #[error("the master key {path} belongs to uid {owner}, not to snctld's uid {me} or root: another user could replace it; run `chown {me} {path}`")]
    ForeignOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("the master key {path} (key id {found}) is not the key this database was sealed with (key id {expected}): start with the right key; nothing was changed")]
    WrongKey {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("the database was sealed with key id {expected} but no master key was found at {looked}: restore that key file; nothing was changed")]
    MissingKey { looked: String, expected: String },
    #[error("the master key {path} named in the configuration ([master_key] file) does not exist: restore it or correct the setting (snctld never creates a key there); nothing was changed")]
    ConfiguredKeyMissing { path: PathBuf },
    #[error("cannot finish the interrupted rekey ({path}): {source}")]
    FinishRekey { path: PathBuf, source: io::Error },
    #[error("a stored secret ({field} of {name}) does not open with the master key: the database or key was altered")]
    Open { name: String, field: &'static str },
    #[error("the system random number generator failed")]
    Random,
}

/// Where the master key came from, for the start-up log and `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Passed by systemd (`LoadCredential=` / `LoadCredentialEncrypted=`).
    Credentials(PathBuf),
    /// Named by `[master_key] file` in the configuration.
    Configured(PathBuf),
    /// The key file in the state directory.
    StateDir(PathBuf),
    /// Created now, in the state directory.
    Created(PathBuf),
}

impl KeySource {
    /// The key file's path.
    pub fn path(&self) -> &Path {
        match self {
            KeySource::Credentials(p)
            | KeySource::Configured(p)
            | KeySource::StateDir(p)
            | KeySource::Created(p) => p,
        }
    }
}

/// `[master_key]` in the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterKeyConfig {
    /// A key file to use after `$CREDENTIALS_DIRECTORY/snctld.key` and
    /// before the state directory's: must exist when set; never created.
    pub file: Option<PathBuf>,
}

impl MasterKeyConfig {
    /// Reads `[master_key]` over this setting.
    pub fn apply(&mut self, section: MasterKeyConfig) {
        if section.file.is_some() {
            self.file = section.file;
        }
    }

    /// What differs in `new`: the key is loaded when the daemon starts.
    pub fn changes(&self, new: &MasterKeyConfig) -> Changes {
        let mut changes = Changes::default();
        changes.compare(
            "master_key.file",
            Applies::NextStart,
            &self.file,
            &new.file,
            optional,
        );
        changes
    }
}

/// Where the master key may be, in the order [`load_master_key`] looks.
#[derive(Debug, Clone)]
pub struct KeySources {
    /// `$CREDENTIALS_DIRECTORY`: its `snctld.key` wins when present.
    pub credentials_dir: Option<PathBuf>,
    /// `[master_key] file`: must exist when set; never created.
    pub key_file: Option<PathBuf>,
    /// The state directory: its `snctld.key`, created for a new database.
    pub state_dir: PathBuf,
}

impl KeySources {
    /// Only the state directory's key file.
    pub fn state_dir(dir: impl Into<PathBuf>) -> Self {
        KeySources {
            credentials_dir: None,
            key_file: None,
            state_dir: dir.into(),
        }
    }
}

/// The AES-256-GCM master key.
pub struct MasterKey {
    key: LessSafeKey,
    id: [u8; KEY_ID_LEN],
    /// Derived from the key (HKDF-SHA256): authenticates settings.
    settings: hmac::Key,
    rng: SystemRandom,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id_hex())
    }
}

impl MasterKey {
    fn from_bytes(bytes: &[u8; 32]) -> Self {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, bytes), KEY_ID_LABEL);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&tag.as_ref()[..KEY_ID_LEN]);
        let key = UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key");
        let settings = hkdf::Salt::new(hkdf::HKDF_SHA256, SUBKEY_SALT)
            .extract(bytes)
            .expand(&[SETTINGS_MAC_INFO], hmac::HMAC_SHA256)
            .expect("an HMAC-SHA256 key is short enough for HKDF")
            .into();
        MasterKey {
            key: LessSafeKey::new(key),
            id,
            settings,
            rng: SystemRandom::new(),
        }
    }

    /// The MAC of an authentication's settings, given in the unambiguous
    /// encoding the store builds (see `store::Settings`).
    pub fn sign_settings(&self, encoded: &[u8]) -> Vec<u8> {
        hmac::sign(&self.settings, encoded).as_ref().to_vec()
    }

    /// Whether `mac` is the MAC of `encoded` under this key (compared in
    /// constant time).
    pub fn verify_settings(&self, encoded: &[u8], mac: &[u8]) -> bool {
        hmac::verify(&self.settings, encoded, mac).is_ok()
    }

    /// A new random key (used on first start and by tests).
    pub fn generate() -> Result<(Self, Zeroizing<[u8; 32]>), CryptoError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| CryptoError::Random)?;
        Ok((MasterKey::from_bytes(&bytes), bytes))
    }

    /// The key id as 16 hex digits.
    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }

    /// Seals `plaintext` as the `field` of authentication `name`.
    pub fn seal(
        &self,
        name: &str,
        field: &'static str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        let mut blob = Vec::with_capacity(HEADER_LEN + plaintext.len() + AES_256_GCM.tag_len());
        blob.push(BLOB_VERSION);
        blob.extend_from_slice(&self.id);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(name, field)),
                &mut blob[HEADER_LEN..],
            )
            .map_err(|_| CryptoError::Random)?;
        blob.extend_from_slice(tag.as_ref());
        Ok(blob)
    }

    /// Seals a secret string.
    pub fn seal_secret(
        &self,
        name: &str,
        field: &'static str,
        secret: &Secret,
    ) -> Result<Vec<u8>, CryptoError> {
        self.seal(name, field, secret.expose().as_bytes())
    }

    /// Opens a blob sealed as the `field` of authentication `name`.
    pub fn open(
        &self,
        name: &str,
        field: &'static str,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let fail = || CryptoError::Open {
            name: name.to_string(),
            field,
        };
        if blob.len() < HEADER_LEN + AES_256_GCM.tag_len()
            || blob[0] != BLOB_VERSION
            || blob[1..1 + KEY_ID_LEN] != self.id
        {
            return Err(fail());
        }
        let nonce = Nonce::try_assume_unique_for_key(&blob[1 + KEY_ID_LEN..HEADER_LEN])
            .map_err(|_| fail())?;
        let mut buf = Zeroizing::new(blob[HEADER_LEN..].to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad(name, field)), buf.as_mut_slice())
            .map_err(|_| fail())?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// Opens a blob holding a secret string.
    pub fn open_secret(
        &self,
        name: &str,
        field: &'static str,
        blob: &[u8],
    ) -> Result<Secret, CryptoError> {
        let bytes = self.open(name, field, blob)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| CryptoError::Open {
            name: name.to_string(),
            field,
        })?;
        Ok(Secret::new(text.to_string()))
    }

    /// The key id recorded in a sealed blob, as hex.
    pub fn blob_key_id(blob: &[u8]) -> Option<String> {
        (blob.len() > KEY_ID_LEN).then(|| hex(&blob[1..1 + KEY_ID_LEN]))
    }
}

fn aad(name: &str, field: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(8 + name.len() + field.len());
    aad.extend_from_slice(b"snctld\0");
    aad.extend_from_slice(name.as_bytes());
    aad.push(0);
    aad.extend_from_slice(field.as_bytes());
    aad
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// The value sealed in the database to recognise the right key at start.
const CHECK_NAME: &str = "";
const CHECK_FIELD: &str = "key_check";
const CHECK_PLAINTEXT: &[u8] = b"snctld key check v1";

/// Seals the key check value stored in a new database.
pub fn key_check(key: &MasterKey) -> Result<Vec<u8>, CryptoError> {
    key.seal(CHECK_NAME, CHECK_FIELD, CHECK_PLAINTEXT)
}

/// Loads the master key and proves it is the one `check` was sealed with.
///
/// The sources, in order: `$CREDENTIALS_DIRECTORY/snctld.key` when present;
/// else the configured `[master_key] file`, which must exist; else the
/// state directory's `snctld.key`. The first source present is the key:
/// a wrong one is refused, never passed over for the next.
///
/// `check` is the database's stored check value, `None` for a new database:
/// only then is a missing state directory key created. When the state
/// directory's key does not open `check` but `snctld.key.new` does, a rekey
/// died between its commit and its rename: the rename is finished here. A
/// `snctld.key.new` next to a key that opens `check` is what a rekey that
/// never committed left, and is removed. Nothing is written when this fails.
pub fn load_master_key(
    sources: &KeySources,
    check: Option<&[u8]>,
) -> Result<(MasterKey, KeySource), CryptoError> {
    if let Some(path) = sources.credentials_dir.as_ref().map(|d| d.join(KEY_FILE)) {
        if present(&path)? {
            let key = read_key_file(&path)?;
            prove(&key, &path, check)?;
            return Ok((key, KeySource::Credentials(path)));
        }
    }
    if let Some(path) = &sources.key_file {
        if !present(path)? {
            return Err(CryptoError::ConfiguredKeyMissing { path: path.clone() });
        }
        let key = read_key_file(path)?;
        prove(&key, path, check)?;
        return Ok((key, KeySource::Configured(path.clone())));
    }
    load_state_dir_key(sources, check)
}

fn load_state_dir_key(
    sources: &KeySources,
    check: Option<&[u8]>,
) -> Result<(MasterKey, KeySource), CryptoError> {
    let key_path = sources.state_dir.join(KEY_FILE);
    let new_path = sources.state_dir.join(NEW_KEY_FILE);
    let mut current = if present(&key_path)? {
        Some(read_key_file(&key_path)?)
    } else {
        None
    };
    let Some(check) = check else {
        // A new database: nothing was ever sealed, so no rekey happened.
        return match current {
            Some(key) => Ok((key, KeySource::StateDir(key_path))),
            None => Ok((create_key_file(&key_path)?, KeySource::Created(key_path))),
        };
    };
    let finish_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CryptoError::FinishRekey { path, source }
    };
    if let Some(key) = current.take_if(|key| opens_check(key, check)) {
        if present(&new_path)? {
            // Written by a rekey that did not commit: nothing is sealed with it.
            fs::remove_file(&new_path).map_err(finish_err(&new_path))?;
            sync_dir(&sources.state_dir).map_err(finish_err(&new_path))?;
            tracing::warn!(path = %new_path.display(), "removed the new key of a rekey that did not commit; the database keeps its key");
        }
        return Ok((key, KeySource::StateDir(key_path)));
    }
    if present(&new_path)? {
        let key = read_key_file(&new_path)?;
        if opens_check(&key, check) {
            // The rekey committed and died before its rename.
            fs::rename(&new_path, &key_path).map_err(finish_err(&new_path))?;
            sync_dir(&sources.state_dir).map_err(finish_err(&new_path))?;
            tracing::warn!(path = %key_path.display(), key_id = %key.id_hex(), "finished an interrupted rekey: the new key replaced the old one");
            return Ok((key, KeySource::StateDir(key_path)));
        }
    }
    match current {
        Some(key) => Err(wrong_key(&key, &key_path, check)),
        None => Err(CryptoError::MissingKey {
            looked: match &sources.credentials_dir {
                Some(dir) => format!("{} or {}", dir.join(KEY_FILE).display(), key_path.display()),
                None => key_path.display().to_string(),
            },
            expected: MasterKey::blob_key_id(check).unwrap_or_else(|| "?".into()),
        }),
    }
}

/// Whether a key file is there; an error other than "not found" (a
/// directory we may not search, say) is reported rather than passed over.
fn present(path: &Path) -> Result<bool, CryptoError> {
    match fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(CryptoError::ReadKey {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Whether `key` is the one the key check value `check` was sealed with.
pub fn opens_check(key: &MasterKey, check: &[u8]) -> bool {
    key.open(CHECK_NAME, CHECK_FIELD, check)
        .is_ok_and(|plain| plain.as_slice() == CHECK_PLAINTEXT)
}

fn prove(key: &MasterKey, path: &Path, check: Option<&[u8]>) -> Result<(), CryptoError> {
    match check {
        Some(check) if !opens_check(key, check) => Err(wrong_key(key, path, check)),
        _ => Ok(()),
    }
}

fn wrong_key(key: &MasterKey, path: &Path, check: &[u8]) -> CryptoError {
    CryptoError::WrongKey {
        path: path.to_path_buf(),
        found: key.id_hex(),
        expected: MasterKey::blob_key_id(check).unwrap_or_else(|| "?".into()),
    }
}

/// Reads a key file: 32 raw bytes, or 64 hex digits (and a newline). A file
/// that group or others may read is refused.
pub fn read_key_file(path: &Path) -> Result<MasterKey, CryptoError> {
    let read_err = |source| CryptoError::ReadKey {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CryptoError::LoosePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(CryptoError::ForeignOwner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    // A key file is tiny; anything big is not ours.
    if meta.size() > 1024 {
        return Err(CryptoError::BadKey {
            path: path.to_path_buf(),
        });
    }
    let content = Zeroizing::new(fs::read(path).map_err(read_err)?);
    let mut bytes = Zeroizing::new([0u8; 32]);
    if content.len() == 32 {
        bytes.copy_from_slice(&content);
    } else {
        let text = std::str::from_utf8(&content)
            .map_err(|_| CryptoError::BadKey {
                path: path.to_path_buf(),
            })?
            .trim();
        if text.len() != 64 {
            return Err(CryptoError::BadKey {
                path: path.to_path_buf(),
            });
        }
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| {
                CryptoError::BadKey {
                    path: path.to_path_buf(),
                }
            })?;
        }
    }
    Ok(MasterKey::from_bytes(&bytes))
}

fn create_key_file(path: &Path) -> Result<MasterKey, CryptoError> {
    let (key, bytes) = MasterKey::generate()?;
    write_key_file(path, &bytes, None).map_err(|source| CryptoError::CreateKey {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(key)
}

/// Writes a new key file (64 hex digits), mode 0600, never over an existing
/// file; `owner` (uid, gid) is given to it before anything is written. The
/// file and its directory are synced before this returns.
pub(crate) fn write_key_file(
    path: &Path,
    bytes: &[u8; 32],
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let text = Zeroizing::new(format!("{}\n", hex(bytes)));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
    }
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => sync_dir(dir),
        None => sync_dir(Path::new(".")),
    }
}

/// Makes a directory's entries (a new or renamed file) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let (key, _) = MasterKey::generate().unwrap();
        let blob = key.seal("prod", "client_secret", b"s3cret").unwrap();
        assert_eq!(
            key.open("prod", "client_secret", &blob).unwrap().as_slice(),
            b"s3cret"
        );
        // Bound to name and field.
        assert!(key.open("dev", "client_secret", &blob).is_err());
        assert!(key.open("prod", "access_token", &blob).is_err());
        // A fresh nonce each time.
        assert_ne!(blob, key.seal("prod", "client_secret", b"s3cret").unwrap());
        // Tampering is detected.
        let mut bad = blob.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(key.open("prod", "client_secret", &bad).is_err());
        // Another key does not open it.
        let (other, _) = MasterKey::generate().unwrap();
        assert!(other.open("prod", "client_secret", &blob).is_err());
        assert!(!blob.windows(6).any(|w| w == b"s3cret"));
    }

    #[test]
    fn settings_macs_depend_on_the_key_and_every_byte() {
        let (key, _) = MasterKey::generate().unwrap();
        let mac = key.sign_settings(b"settings");
        assert!(key.verify_settings(b"settings", &mac));
        assert!(!key.verify_settings(b"settingz", &mac));
        assert!(!key.verify_settings(b"settings", &mac[..31]));
        let (other, _) = MasterKey::generate().unwrap();
        assert!(!other.verify_settings(b"settings", &mac));
        // Not the key id's HMAC: another key, not just another label.
        assert_ne!(&key.sign_settings(KEY_ID_LABEL)[..KEY_ID_LEN], &key.id[..]);
    }

    #[test]
    fn first_start_creates_a_private_key_then_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let (key, source) = load_master_key(&KeySources::state_dir(dir.path()), None).unwrap();
        assert!(matches!(source, KeySource::Created(_)));
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let check = key_check(&key).unwrap();
        let (again, source) =
            load_master_key(&KeySources::state_dir(dir.path()), Some(&check)).unwrap();
        assert!(matches!(source, KeySource::StateDir(_)));
        assert_eq!(again.id_hex(), key.id_hex());
    }

    #[test]
    fn loose_permissions_wrong_and_missing_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = load_master_key(&KeySources::state_dir(dir.path()), None).unwrap();
        let check = key_check(&key).unwrap();
        let path = dir.path().join(KEY_FILE);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_master_key(&KeySources::state_dir(dir.path()), Some(&check)).unwrap_err();
        assert!(matches!(err, CryptoError::LoosePermissions { .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();

        // A credentials directory key wins over the state dir and is checked.
        let creds = tempfile::tempdir().unwrap();
        let other = creds.path().join(KEY_FILE);
        fs::write(&other, "ab".repeat(32)).unwrap();
        fs::set_permissions(&other, fs::Permissions::from_mode(0o400)).unwrap();
        let err = load_master_key(
            &KeySources {
                credentials_dir: Some(creds.path().to_path_buf()),
                ..KeySources::state_dir(dir.path())
            },
            Some(&check),
        )
        .unwrap_err();
        assert!(matches!(err, CryptoError::WrongKey { .. }), "{err}");

        fs::remove_file(&path).unwrap();
        let err = load_master_key(&KeySources::state_dir(dir.path()), Some(&check)).unwrap_err();
        assert!(matches!(err, CryptoError::MissingKey { .. }), "{err}");
        assert!(!path.exists(), "no key is created for an existing database");
    }
}
