//! The database: every authentication, its sealed secrets and its tokens.
//!
//! SQLite in WAL mode with `synchronous=FULL`, so a committed refresh
//! survives a power cut. The schema version lives in `user_version` and
//! migrations run at start. Every write is one `BEGIN IMMEDIATE`
//! transaction. rusqlite is blocking, so the connection lives on a thread of
//! its own ([`Store::spawn`]); async code sends it closures and awaits the
//! answer, and the runtime never waits on the disk.
//!
//! Secrets are sealed with [`MasterKey`] before they reach SQL; this module
//! never writes one in clear.
//!
//! Every setting of an authentication (the columns that decide where its
//! secrets are sent and who gets its tokens, see [`Settings`]) is
//! authenticated by a MAC under the master key, in `settings_mac`. Every
//! write of settings signs them; every load checks the MAC (and the
//! instance URL, with the rule `add` applies) before a row is used. A row
//! that fails is left out as one whose secrets do not open: someone wrote
//! the database without the key. Triggers are refused when the database is
//! opened ([`UncheckedDb::prepare`]): one would run on snctld's own writes.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use snctl_shared::protocol::{AuthState, ClientAuth, Grant, JwtSettings, UnknownSpelling};
use snctl_shared::Secret;

use crate::access::ReaderIds;
use crate::crypto::{self, CryptoError, MasterKey};

/// The schema this build writes. See [`migrate`] for the history.
pub const SCHEMA_VERSION: i64 = 7;
/// The first schema whose settings carry a MAC: rows of an older database
/// cannot be checked, and are signed as they are when it is migrated.
pub const SIGNED_SCHEMA: i64 = 5;
/// Database file name inside the state directory.
pub const DB_FILE: &str = "snctld.db";

const F_CLIENT_SECRET: &str = "client_secret";
const F_ACCESS_TOKEN: &str = "access_token";
const F_REFRESH_TOKEN: &str = "refresh_token";
const F_JWT_KEY: &str = "jwt_key";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot create the database {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("the database has schema version {found}, newer than this snctld supports ({supported}): install a newer snctld (the release that wrote it, or a later one), or restore a backup made by this one (snctld restore FILE); nothing was changed")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("the database has schema version {found}, which no snctld writes: it is not an snctld database, or it was edited; restore a backup (snctld restore FILE); nothing was changed")]
    SchemaUnknown { found: i64 },
    #[error("the database holds an unknown {what} {value:?}: it was written by a newer snctld")]
    Unknown { what: &'static str, value: String },
    #[error("an authentication with this name already exists")]
    AlreadyExists,
    #[error("the store has shut down")]
    Closed,
    #[error("the database {} is gone, its state directory deleted or moved while snctld runs: nothing is saved until it is back; create the directory again (mode 0700, with snctld.key if the key was kept there) and snctld writes the database into it, or put the old one back", path.display())]
    Gone { path: PathBuf },
    #[error("the database {} is not the one snctld opened, and the master key does not open it: nothing is saved into it; put snctld's database back, or restart snctld to use this one", path.display())]
    Replaced { path: PathBuf },
    #[error("cannot make the backup copy {path}: {source}")]
    Backup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Row(#[from] RowError),
    #[error("the database holds {0}, which snctld did not create: a trigger runs on snctld's own writes and could rewrite an instance URL or the readers behind its back; drop it (sqlite3 snctld.db 'DROP TRIGGER name') or restore a good backup; nothing was changed")]
    Trigger(ObjectList),
}

/// Why one stored authentication cannot be used. It is left out (see
/// [`Db::load_readable`]); the others are served.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    /// A sealed secret does not open.
    #[error(transparent)]
    Sealed(#[from] CryptoError),
    /// The settings do not match their MAC.
    #[error("authentication {name} is left out: its settings (instance URL, client, grant, scope, readers, ...) were changed outside snctld and do not match their MAC under the master key, so nothing is sent for it; `snctl remove {name}` deletes it, or restore a backup made before the change")]
    Altered { name: String },
    /// The settings are signed but the instance URL is one `add` refuses.
    #[error("authentication {name} is left out: {reason}; `snctl remove {name}` deletes it, then add it again")]
    InstanceUrl { name: String, reason: String },
}

impl RowError {
    /// The authentication the error is about.
    pub fn name(&self) -> Option<&str> {
        match self {
            RowError::Sealed(CryptoError::Open { name, .. })
            | RowError::Altered { name }
            | RowError::InstanceUrl { name, .. } => Some(name),
            RowError::Sealed(_) => None,
        }
    }
}

/// One entry of `sqlite_master`: a table, index, trigger or view.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SchemaObject {
    /// `table`, `index`, `trigger` or `view`.
    pub kind: String,
    pub name: String,
}

/// Schema objects, for messages: `trigger t, table x`.
#[derive(Debug)]
pub struct ObjectList(pub Vec<SchemaObject>);

impl std::fmt::Display for ObjectList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, o) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{} {}", o.kind, o.name)?;
        }
        Ok(())
    }
}

/// SQLite's own tables (`ANALYZE` statistics, `AUTOINCREMENT` counters):
/// they may appear in any database and hold nothing snctld reads.
const SQLITE_TABLES: [&str; 5] = [
    "sqlite_sequence",
    "sqlite_stat1",
    "sqlite_stat2",
    "sqlite_stat3",
    "sqlite_stat4",
];

/// Every schema object of `conn` (type, name).
fn objects_of(conn: &Connection) -> Result<BTreeSet<SchemaObject>, StoreError> {
    let mut stmt = conn.prepare("SELECT type, name FROM sqlite_master")?;
    let objects = stmt
        .query_map([], |r| {
            Ok(SchemaObject {
                kind: r.get(0)?,
                name: r.get(1)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(objects)
}

/// One column of a table, as SQLite declares it.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Column {
    table: String,
    name: String,
    declared_type: String,
}

/// Every column of every table of `conn`.
fn columns_of(conn: &Connection) -> Result<BTreeSet<Column>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT m.name AS tbl, c.name AS col, c.type AS declared
         FROM sqlite_master AS m, pragma_table_info(m.name) AS c
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
    )?;
    let columns = stmt
        .query_map([], |r| {
            Ok(Column {
                table: r.get("tbl")?,
                name: r.get("col")?,
                declared_type: r.get("declared")?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(columns)
}

/// The schema objects in `conn` that this snctld's schema does not create,
/// found by comparing with a new database migrated to [`SCHEMA_VERSION`]
/// (by kind and name: the values read from the tables are checked by the
/// MAC whatever their declaration says). An older schema creates a subset.
fn foreign_objects(conn: &Connection) -> Result<Vec<SchemaObject>, StoreError> {
    let mut reference = Connection::open_in_memory()?;
    // No row is signed in an empty database: any key does.
    migrate(&mut reference, &MasterKey::generate()?.0)?;
    let created = objects_of(&reference)?;
    Ok(objects_of(conn)?
        .into_iter()
        .filter(|o| !created.contains(o))
        .filter(|o| !(o.kind == "table" && SQLITE_TABLES.contains(&o.name.as_str())))
        .collect())
}

/// The columns [`Settings`] covers up to schema 5 (`proxy` came with 6);
/// `has_jwt_key` (`jwt_key IS NOT NULL`) stands for the sealed key (bound
/// to its row by its own seal).
macro_rules! settings_columns_5 {
    () => {
        "name, instance_url, grant_type, client_id, client_auth, scope, created_ms, username, \
         redirect_port, refresh_lifespan_secs, allow_users, allow_groups, allow_units, \
         jwt_key IS NOT NULL AS has_jwt_key, jwt_subject, jwt_kid"
    };
}

/// The columns [`Settings`] covers.
const SETTINGS_COLUMNS: &str = concat!(settings_columns_5!(), ", proxy");

/// Every setting of one authentication as stored: what its MAC covers.
///
/// That is every column that decides where its secrets go or who reads its
/// tokens, and the rest of what `add`, `update` and `login` write: name,
/// instance URL, grant, client ID and authentication, scope, creation
/// time, user name, redirect port, refresh-token lifespan, readers, and
/// the JWT subject, key id and whether a JWT key is there, and whether its
/// proxy is on. Not covered:
/// the sealed blobs, which their AEAD binds to their row and column, and
/// the volatile columns (tokens' times, state, last error, `updated_ms`),
/// written on every refresh; they send nothing anywhere.
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    name: String,
    instance_url: String,
    grant: String,
    client_id: String,
    client_auth: String,
    scope: Option<String>,
    created_ms: i64,
    username: Option<String>,
    redirect_port: Option<i64>,
    refresh_lifespan_secs: i64,
    allow_users: String,
    allow_groups: String,
    allow_units: String,
    has_jwt_key: bool,
    jwt_subject: Option<String>,
    jwt_kid: Option<String>,
    proxy: bool,
}

/// A row of `authentications` as [`Db::load_all`] reads it, by column
/// name: the settings and their MAC, the sealed secrets, the token state.
struct StoredRow {
    settings: Settings,
    settings_mac: Option<Vec<u8>>,
    client_secret: Vec<u8>,
    access_token: Option<Vec<u8>>,
    access_expires_ms: Option<i64>,
    obtained_ms: Option<i64>,
    refresh_token: Option<Vec<u8>>,
    refresh_issued_ms: Option<i64>,
    obtained_boot_id: Option<String>,
    obtained_boot_ms: Option<i64>,
    jwt_key: Option<Vec<u8>>,
    state: String,
    last_error: Option<String>,
}

impl StoredRow {
    /// Selected besides [`SETTINGS_COLUMNS`].
    const COLUMNS: &str = "settings_mac, client_secret, access_token, access_expires_ms, \
         obtained_ms, refresh_token, refresh_issued_ms, obtained_boot_id, obtained_boot_ms, \
         jwt_key, state, last_error";

    /// Every stored row, in name order.
    fn all(conn: &Connection) -> Result<Vec<StoredRow>, StoreError> {
        let rows = conn
            .prepare(&format!(
                "SELECT {}, {SETTINGS_COLUMNS} FROM authentications ORDER BY name",
                StoredRow::COLUMNS
            ))?
            .query_map([], StoredRow::read)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRow> {
        Ok(StoredRow {
            settings: Settings::from_row(r)?,
            settings_mac: r.get("settings_mac")?,
            client_secret: r.get("client_secret")?,
            access_token: r.get("access_token")?,
            access_expires_ms: r.get("access_expires_ms")?,
            obtained_ms: r.get("obtained_ms")?,
            refresh_token: r.get("refresh_token")?,
            refresh_issued_ms: r.get("refresh_issued_ms")?,
            obtained_boot_id: r.get("obtained_boot_id")?,
            obtained_boot_ms: r.get("obtained_boot_ms")?,
            jwt_key: r.get("jwt_key")?,
            state: r.get("state")?,
            last_error: r.get("last_error")?,
        })
    }
}

/// Label at the start of the encoding; a new encoding gets a new label.
const SETTINGS_LABEL: &[u8] = b"snctld settings v1\0";

impl Settings {
    /// The settings `auth` is stored with (see [`Db::write_settings`]).
    fn of(auth: &Authentication) -> Self {
        Settings {
            name: auth.name.clone(),
            instance_url: auth.instance_url.clone(),
            grant: auth.grant.as_str().to_string(),
            client_id: auth.client_id.clone(),
            client_auth: auth.client_auth.as_str().to_string(),
            scope: auth.scope.clone(),
            created_ms: auth.created_at_ms,
            username: auth.username.clone(),
            redirect_port: auth.redirect_port.map(i64::from),
            refresh_lifespan_secs: auth.refresh_lifespan_secs as i64,
            allow_users: join(&auth.readers.users),
            allow_groups: join(&auth.readers.groups),
            allow_units: join(&auth.readers.units),
            has_jwt_key: auth.jwt.is_some(),
            jwt_subject: auth.jwt.as_ref().map(|j| j.subject.clone()),
            jwt_kid: auth.jwt.as_ref().and_then(|j| j.kid.clone()),
            proxy: auth.proxy,
        }
    }

    /// Reads [`SETTINGS_COLUMNS`] from a row that selected them, by name.
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Settings {
            name: r.get("name")?,
            instance_url: r.get("instance_url")?,
            grant: r.get("grant_type")?,
            client_id: r.get("client_id")?,
            client_auth: r.get("client_auth")?,
            scope: r.get("scope")?,
            created_ms: r.get("created_ms")?,
            username: r.get("username")?,
            redirect_port: r.get("redirect_port")?,
            refresh_lifespan_secs: r.get("refresh_lifespan_secs")?,
            allow_users: r.get("allow_users")?,
            allow_groups: r.get("allow_groups")?,
            allow_units: r.get("allow_units")?,
            has_jwt_key: r.get("has_jwt_key")?,
            jwt_subject: r.get("jwt_subject")?,
            jwt_kid: r.get("jwt_kid")?,
            proxy: r.get("proxy")?,
        })
    }

    /// The bytes the MAC is computed over: the label, then every field in
    /// a fixed order, each a tag (0 absent, 1 text, 2 integer) followed by
    /// a text's length (u64 LE) and bytes or an integer (i64 LE). Lengths
    /// and tags make it unambiguous: no two settings encode alike.
    ///
    /// The proxy setting (schema 6) comes last and only when it is on, so
    /// that a row signed before it existed (every proxy off) keeps its
    /// MAC; on, it adds bytes after the last field, which no setting with
    /// it off has.
    fn encode(&self) -> Vec<u8> {
        fn text(out: &mut Vec<u8>, value: Option<&str>) {
            match value {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    out.extend_from_slice(&(v.len() as u64).to_le_bytes());
                    out.extend_from_slice(v.as_bytes());
                }
            }
        }
        fn int(out: &mut Vec<u8>, value: Option<i64>) {
            match value {
                None => out.push(0),
                Some(v) => {
                    out.push(2);
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        let mut out = SETTINGS_LABEL.to_vec();
        text(&mut out, Some(&self.name));
        text(&mut out, Some(&self.instance_url));
        text(&mut out, Some(&self.grant));
        text(&mut out, Some(&self.client_id));
        text(&mut out, Some(&self.client_auth));
        text(&mut out, self.scope.as_deref());
        int(&mut out, Some(self.created_ms));
        text(&mut out, self.username.as_deref());
        int(&mut out, self.redirect_port);
        int(&mut out, Some(self.refresh_lifespan_secs));
        text(&mut out, Some(&self.allow_users));
        text(&mut out, Some(&self.allow_groups));
        text(&mut out, Some(&self.allow_units));
        int(&mut out, Some(i64::from(self.has_jwt_key)));
        text(&mut out, self.jwt_subject.as_deref());
        text(&mut out, self.jwt_kid.as_deref());
        if self.proxy {
            int(&mut out, Some(1));
        }
        out
    }

    fn sign(&self, key: &MasterKey) -> Vec<u8> {
        key.sign_settings(&self.encode())
    }

    /// Whether `mac` (the stored `settings_mac`) is theirs under `key`.
    fn verify(&self, key: &MasterKey, mac: Option<&[u8]>) -> Result<(), RowError> {
        match mac {
            Some(mac) if key.verify_settings(&self.encode(), mac) => Ok(()),
            _ => Err(RowError::Altered {
                name: self.name.clone(),
            }),
        }
    }

    /// [`Settings::verify`], then the instance URL with the rule `add`
    /// applies (https, or http for loopback only): what a row must pass
    /// before it is used.
    fn check(&self, key: &MasterKey, mac: Option<&[u8]>) -> Result<(), RowError> {
        self.verify(key, mac)?;
        crate::instance::normalize_instance_url(&self.instance_url)
            .map(drop)
            .map_err(|reason| RowError::InstanceUrl {
                name: self.name.clone(),
                reason: reason.to_string(),
            })
    }
}

/// One authentication's settings: what is needed to ask for a token.
#[derive(Debug, Clone)]
pub struct Authentication {
    pub name: String,
    pub instance_url: String,
    pub grant: Grant,
    pub client_id: String,
    pub client_auth: ClientAuth,
    pub scope: Option<String>,
    pub client_secret: Secret,
    pub created_at_ms: i64,
    /// The user who logged in with the `password` grant.
    pub username: Option<String>,
    /// Port of the loopback Redirect URL (`authorization-code` grant).
    pub redirect_port: Option<u16>,
    /// How long the instance's refresh tokens live.
    pub refresh_lifespan_secs: u64,
    /// Who may get its tokens besides admins (empty: anyone).
    pub readers: ReaderIds,
    /// The signing key (sealed as `jwt_key`), subject and key id of the
    /// `jwt-bearer` grant.
    pub jwt: Option<JwtSettings>,
    /// Whether it is served on a proxy socket of its own (`snctl add
    /// --proxy`); the configuration's `[proxy]` may name it too.
    pub proxy: bool,
}

/// Tokens obtained from the instance.
#[derive(Debug, Clone)]
pub struct TokenSet {
    pub access_token: Secret,
    pub expires_at_ms: i64,
    pub obtained_at_ms: i64,
    pub refresh_token: Option<Secret>,
    /// When `refresh_token` was first issued; a refresh token that comes
    /// back unchanged keeps its first issue time.
    pub refresh_issued_ms: Option<i64>,
    /// When they were asked for on the boot clock, and in which boot:
    /// within that boot, a restart judges the stored token by it rather
    /// than by the wall clock ([`crate::clock::Clock::boot_of_obtained`]).
    pub obtained_boot: Option<BootStamp>,
}

/// A time on the boot clock (`CLOCK_BOOTTIME`), which counts from the
/// boot [`crate::clock::boot_id`] names and means nothing in another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootStamp {
    pub boot_id: String,
    pub boot_ms: i64,
}

/// A stored authentication with its tokens and health.
#[derive(Debug)]
pub struct Record {
    pub auth: Authentication,
    pub tokens: Option<TokenSet>,
    pub state: AuthState,
    pub last_error: Option<String>,
}

/// A database connection that has not yet been checked against a key.
pub struct UncheckedDb {
    conn: Connection,
    path: PathBuf,
    /// Which file was opened ([`file_id`]).
    file: Option<FileId>,
}

/// A file's device and inode: which file a path named when it was opened.
type FileId = (u64, u64);

fn file_id(path: &Path) -> std::io::Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

impl UncheckedDb {
    /// Opens (or creates, mode 0600) the database. Writes nothing.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        if !path.exists() {
            // SQLite would create the file with the umask's mode; create it
            // private first. The -wal and -shm files copy this mode.
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| StoreError::Create {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
        let conn = Connection::open(path).map_err(open_err)?;
        let file = file_id(path).ok();
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        // Below 1 with something in it: the migration would stumble on the
        // tables it finds (0 and empty is a new database).
        let objects: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(open_err)?;
        if version < 0 || (version == 0 && objects > 0) {
            return Err(StoreError::SchemaUnknown { found: version });
        }
        Ok(UncheckedDb {
            conn,
            path: path.to_path_buf(),
            file,
        })
    }

    /// The stored key check value; `None` for a new database.
    pub fn key_check(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let has_meta: bool = self.conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has_meta {
            return Ok(None);
        }
        Self::key_check_of(&self.conn)
    }

    /// Sets up WAL, migrates and records the key check: the first writes.
    /// Call only once the key has been proven right. A database holding a
    /// trigger is refused before anything is written: snctld never creates
    /// one, and one would run on its own writes (the migration's
    /// included).
    pub fn prepare(self, key: Arc<MasterKey>) -> Result<Db, StoreError> {
        // snctld creates no trigger: any there is foreign, no reference
        // schema needed (that comparison is restore's).
        let triggers: Vec<_> = objects_of(&self.conn)?
            .into_iter()
            .filter(|o| o.kind == "trigger")
            .collect();
        if !triggers.is_empty() {
            return Err(StoreError::Trigger(ObjectList(triggers)));
        }
        let UncheckedDb { conn, path, file } = self;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if mode != "wal" {
            tracing::warn!(mode, "the database could not be switched to WAL mode");
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
        let mut db = Db {
            conn,
            key,
            path,
            file,
        };
        migrate(&mut db.conn, &db.key)?;
        if UncheckedDb::key_check_of(&db.conn)?.is_none() {
            let check = crypto::key_check(&db.key)?;
            let tx = db
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('key_check', ?1)",
                [check],
            )?;
            tx.commit()?;
        }
        Ok(db)
    }

    /// The schema version (`user_version`).
    pub fn version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// The tables, indexes, triggers and views this snctld's schema does
    /// not create. Writes nothing.
    pub fn foreign_objects(&self) -> Result<Vec<SchemaObject>, StoreError> {
        foreign_objects(&self.conn)
    }

    /// Whether every table has exactly the columns this snctld's schema
    /// gives it at the database's version (`user_version`): a database
    /// whose version was changed, or whose columns were added or dropped,
    /// does not. False for a version this snctld never wrote. Writes
    /// nothing.
    pub fn schema_matches(&self) -> Result<bool, StoreError> {
        let version = self.version()?;
        if !(1..=SCHEMA_VERSION).contains(&version) {
            return Ok(false);
        }
        let mut reference = Connection::open_in_memory()?;
        // No row is signed in an empty database: any key does.
        migrate_to(&mut reference, &MasterKey::generate()?.0, version)?;
        Ok(columns_of(&self.conn)? == columns_of(&reference)?)
    }

    /// The authentications whose settings fail their MAC under `key` or
    /// whose instance URL is refused ([`RowError::Altered`],
    /// [`RowError::InstanceUrl`]). Sealed secrets are not opened. Only for
    /// a database of schema [`SIGNED_SCHEMA`] or later; writes nothing.
    pub fn altered(&self, key: &MasterKey) -> Result<Vec<RowError>, StoreError> {
        problems(&self.conn, key, false)
    }

    /// SQLite's full integrity check, first line ("ok" when sound). Writes
    /// nothing.
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

    fn key_check_of(conn: &Connection) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(conn
            .query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| {
                r.get(0)
            })
            .optional()?)
    }
}

/// Brings the schema to [`SCHEMA_VERSION`], one transaction per step.
///
/// - 1: `meta` (key check) and `authentications`.
/// - 2: logins by a person: `username`, `redirect_port`,
///   `refresh_lifespan_secs` and `refresh_issued_ms`.
/// - 3: readers: `allow_users`, `allow_groups` (numeric ids) and
///   `allow_units`, each a comma-separated list.
/// - 4: the JWT-bearer grant: `jwt_key` (sealed PKCS#8), `jwt_subject` and
///   `jwt_kid`.
/// - 5: `settings_mac`, the MAC of each row's [`Settings`] under `key`.
///   The rows are signed as they are at that moment: the migration trusts
///   them (there was nothing to check them against), which is why
///   `snctld restore` wants an old backup vouched for.
/// - 6: `proxy`, whether the authentication has a proxy socket of its own;
///   off for every existing row, which keeps its MAC ([`Settings::encode`]).
/// - 7: `obtained_boot_id` and `obtained_boot_ms`, the token's
///   [`BootStamp`]; none for tokens stored before (judged by the wall clock).
fn migrate(conn: &mut Connection, key: &MasterKey) -> Result<(), StoreError> {
    migrate_to(conn, key, SCHEMA_VERSION)
}

/// [`migrate`], stopping at schema `target`: the reference a database of
/// an older schema is compared with ([`UncheckedDb::schema_matches`]).
fn migrate_to(conn: &mut Connection, key: &MasterKey, target: i64) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    // Whether step `n` is to run.
    let step = |n: i64| version < n && n <= target;
    // Said of an existing database only: a new one (and the in-memory
    // reference of `schema_matches`) starts at 0 and is created, not moved.
    let migrated = |n: i64| {
        if version > 0 {
            tracing::info!(from = n - 1, to = n, "database schema migrated");
        }
    };
    if step(1) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "CREATE TABLE meta (
                key   TEXT PRIMARY KEY,
                value BLOB NOT NULL
            ) STRICT;
            CREATE TABLE authentications (
                name              TEXT PRIMARY KEY,
                instance_url      TEXT NOT NULL,
                grant_type        TEXT NOT NULL,
                client_id         TEXT NOT NULL,
                client_auth       TEXT NOT NULL,
                scope             TEXT,
                client_secret     BLOB NOT NULL,
                access_token      BLOB,
                access_expires_ms INTEGER,
                obtained_ms       INTEGER,
                refresh_token     BLOB,
                state             TEXT NOT NULL DEFAULT 'ok',
                last_error        TEXT,
                created_ms        INTEGER NOT NULL,
                updated_ms        INTEGER NOT NULL
            ) STRICT;
            PRAGMA user_version = 1;",
        )?;
        tx.commit()?;
        migrated(1);
    }
    if step(2) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(&format!(
            "ALTER TABLE authentications ADD COLUMN username TEXT;
            ALTER TABLE authentications ADD COLUMN redirect_port INTEGER;
            ALTER TABLE authentications ADD COLUMN refresh_lifespan_secs INTEGER NOT NULL
                DEFAULT {DEFAULT_REFRESH_LIFESPAN_SECS};
            ALTER TABLE authentications ADD COLUMN refresh_issued_ms INTEGER;
            PRAGMA user_version = 2;"
        ))?;
        tx.commit()?;
        migrated(2);
    }
    if step(3) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "ALTER TABLE authentications ADD COLUMN allow_users TEXT NOT NULL DEFAULT '';
            ALTER TABLE authentications ADD COLUMN allow_groups TEXT NOT NULL DEFAULT '';
            ALTER TABLE authentications ADD COLUMN allow_units TEXT NOT NULL DEFAULT '';
            PRAGMA user_version = 3;",
        )?;
        tx.commit()?;
        migrated(3);
    }
    if step(4) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "ALTER TABLE authentications ADD COLUMN jwt_key BLOB;
            ALTER TABLE authentications ADD COLUMN jwt_subject TEXT;
            ALTER TABLE authentications ADD COLUMN jwt_kid TEXT;
            PRAGMA user_version = 4;",
        )?;
        tx.commit()?;
        migrated(4);
    }
    if step(5) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch("ALTER TABLE authentications ADD COLUMN settings_mac BLOB;")?;
        let rows: Vec<Settings> = tx
            .prepare(concat!(
                "SELECT ",
                settings_columns_5!(),
                ", 0 AS proxy FROM authentications ORDER BY name"
            ))?
            .query_map([], Settings::from_row)?
            .collect::<Result<_, _>>()?;
        for settings in &rows {
            tx.execute(
                "UPDATE authentications SET settings_mac = ?2 WHERE name = ?1",
                params![settings.name, settings.sign(key)],
            )?;
        }
        tx.execute_batch("PRAGMA user_version = 5;")?;
        tx.commit()?;
        migrated(5);
        if !rows.is_empty() {
            // Whatever they say is trusted from now on: said once, where the
            // administrator looks.
            let names: Vec<&str> = rows.iter().map(|s| s.name.as_str()).collect();
            tracing::warn!(
                "{} authentication{} signed as found: {} (their settings were not signed \
                 before; check them with `snctl show NAME`)",
                rows.len(),
                if rows.len() == 1 { "" } else { "s" },
                names.join(", ")
            );
        }
    }
    if step(6) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "ALTER TABLE authentications ADD COLUMN proxy INTEGER NOT NULL DEFAULT 0;
            PRAGMA user_version = 6;",
        )?;
        tx.commit()?;
        migrated(6);
    }
    if step(7) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "ALTER TABLE authentications ADD COLUMN obtained_boot_id TEXT;
            ALTER TABLE authentications ADD COLUMN obtained_boot_ms INTEGER;
            PRAGMA user_version = 7;",
        )?;
        tx.commit()?;
        migrated(7);
    }
    Ok(())
}

/// What keeps each stored authentication from being used, in name order,
/// one per authentication: its settings ([`Settings::check`]) and, with
/// `blobs`, then the sealed secrets [`Db::load_all`] opens.
fn problems(conn: &Connection, key: &MasterKey, blobs: bool) -> Result<Vec<RowError>, StoreError> {
    let rows = StoredRow::all(conn)?;
    let mut problems = Vec::new();
    for row in rows {
        if let Err(error) = row.settings.check(key, row.settings_mac.as_deref()) {
            problems.push(error);
            continue;
        }
        if !blobs {
            continue;
        }
        let name = &row.settings.name;
        let mut fields = vec![
            (F_CLIENT_SECRET, Some(row.client_secret)),
            (F_JWT_KEY, row.jwt_key),
        ];
        // load_all opens the tokens only with an expiry.
        if row.access_expires_ms.is_some() && row.access_token.is_some() {
            fields.push((F_ACCESS_TOKEN, row.access_token));
            fields.push((F_REFRESH_TOKEN, row.refresh_token));
        }
        for (field, blob) in fields {
            if let Some(Err(error)) = blob.map(|b| key.open_secret(name, field, &b)) {
                problems.push(error.into());
            }
        }
    }
    Ok(problems)
}

/// ServiceNow's default refresh-token lifespan: 100 days.
pub const DEFAULT_REFRESH_LIFESPAN_SECS: u64 = 100 * 24 * 60 * 60;

/// The checked, migrated database. Lives on the store thread.
pub struct Db {
    conn: Connection,
    key: Arc<MasterKey>,
    /// Where it was opened, and which file that was: every write first
    /// checks that it is still there ([`Db::in_place`]).
    path: PathBuf,
    file: Option<FileId>,
}

/// A grant, client authentication or state as the database spells it
/// (the `as_str` of each).
fn spelled<T: FromStr<Err = UnknownSpelling>>(s: String) -> Result<T, StoreError> {
    s.parse()
        .map_err(|UnknownSpelling { what, value }| StoreError::Unknown { what, value })
}

fn seal_jwt_key(key: &MasterKey, auth: &Authentication) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(auth
        .jwt
        .as_ref()
        .map(|j| key.seal_secret(&auth.name, F_JWT_KEY, &j.key))
        .transpose()?)
}

fn now_ms() -> i64 {
    crate::clock::now_ms()
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn ids_from(text: &str, what: &'static str) -> Result<Vec<u32>, StoreError> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse().map_err(|_| StoreError::Unknown {
                what,
                value: s.to_string(),
            })
        })
        .collect()
}

fn readers_from(users: &str, groups: &str, units: &str) -> Result<ReaderIds, StoreError> {
    Ok(ReaderIds {
        users: ids_from(users, "reader uid")?,
        groups: ids_from(groups, "reader gid")?,
        units: units
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

impl Db {
    /// Before a write: whether the database is still the file at the path
    /// it was opened from. SQLite goes on writing a file that was unlinked
    /// (its state directory deleted) and nothing says so until the next
    /// start finds the older database, or none: such a write is refused
    /// ([`StoreError::Gone`]) and the caller keeps what it meant to save.
    /// Once the directory is back without a database, the open copy is
    /// written into it and used; a database put back in its place is used
    /// if the master key opens it.
    fn in_place(&mut self) -> Result<(), StoreError> {
        let Some(opened) = self.file else {
            return Ok(());
        };
        let gone = || StoreError::Gone {
            path: self.path.clone(),
        };
        match file_id(&self.path) {
            Ok(found) if found == opened => Ok(()),
            Ok(_) => self.reopen(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if !self.path.parent().is_some_and(Path::is_dir) {
                    return Err(gone());
                }
                self.write_copy().map_err(|error| {
                    tracing::debug!(%error, "cannot write the database again");
                    gone()
                })?;
                self.reopen()
            }
            Err(_) => Err(gone()),
        }
    }

    /// Writes the open (unlinked) database to its path: a private copy
    /// under another name first, renamed into place, the directory synced.
    fn write_copy(&self) -> Result<(), StoreError> {
        let staged = self.path.with_extension("db.rewrite");
        let _ = std::fs::remove_file(&staged);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staged)
            .map_err(|source| StoreError::Create {
                path: staged.clone(),
                source,
            })?;
        let copied = (|| {
            let mut target = Connection::open(&staged)?;
            let backup = rusqlite::backup::Backup::new(&self.conn, &mut target)?;
            backup.run_to_completion(256, std::time::Duration::ZERO, None)?;
            drop(backup);
            target.execute_batch("PRAGMA journal_mode = DELETE")?;
            Ok::<_, rusqlite::Error>(())
        })();
        if let Err(error) = copied {
            let _ = std::fs::remove_file(&staged);
            return Err(error.into());
        }
        let placed = std::fs::rename(&staged, &self.path)
            .and_then(|()| self.path.parent().map_or(Ok(()), crypto::sync_dir));
        placed.map_err(|source| StoreError::Create {
            path: self.path.clone(),
            source,
        })?;
        tracing::warn!(path = %self.path.display(),
            "the database was gone: written again from the copy snctld had open");
        Ok(())
    }

    /// Opens the database now at the path, as at start, if the master key
    /// opens it, and uses it from here on.
    fn reopen(&mut self) -> Result<(), StoreError> {
        let unchecked = UncheckedDb::open(&self.path)?;
        let opens = unchecked
            .key_check()?
            .is_some_and(|check| crypto::opens_check(&self.key, &check));
        if !opens {
            return Err(StoreError::Replaced {
                path: self.path.clone(),
            });
        }
        *self = unchecked.prepare(self.key.clone())?;
        if let Some(dir) = self.path.parent() {
            // The marker went with the directory.
            if let Err(error) = crate::state::mark_signed(dir) {
                tracing::warn!(%error, "cannot mark the state directory signed");
            }
        }
        tracing::info!(path = %self.path.display(), "the database is in place again: reopened");
        Ok(())
    }

    /// Every stored authentication, settings checked (their MAC and
    /// instance URL, see [`Settings::check`]) before its secrets are
    /// opened. The first row that fails fails the whole load.
    pub fn load_all(&mut self) -> Result<Vec<Record>, StoreError> {
        let rows = StoredRow::all(&self.conn)?;
        rows.into_iter().map(|row| self.open_row(row)).collect()
    }

    /// One stored row as a [`Record`]: its settings checked against their
    /// MAC, its secrets opened, its spellings read.
    fn open_row(&self, row: StoredRow) -> Result<Record, StoreError> {
        let StoredRow {
            settings,
            settings_mac,
            client_secret,
            access_token,
            access_expires_ms,
            obtained_ms,
            refresh_token,
            refresh_issued_ms,
            obtained_boot_id,
            obtained_boot_ms,
            jwt_key,
            state,
            last_error,
        } = row;
        settings.check(&self.key, settings_mac.as_deref())?;
        // The port as a port (signed by snctld, so in range unless written
        // by a newer one).
        let redirect_port = settings
            .redirect_port
            .map(|port| {
                u16::try_from(port).map_err(|_| StoreError::Unknown {
                    what: "redirect port",
                    value: port.to_string(),
                })
            })
            .transpose()?;
        let name = settings.name;
        let client_secret = self
            .key
            .open_secret(&name, F_CLIENT_SECRET, &client_secret)?;
        let jwt = match jwt_key {
            Some(blob) => Some(JwtSettings {
                key: self.key.open_secret(&name, F_JWT_KEY, &blob)?,
                subject: settings.jwt_subject.unwrap_or_default(),
                kid: settings.jwt_kid,
            }),
            None => None,
        };
        let tokens = match (access_token, access_expires_ms) {
            (Some(access), Some(expires_at_ms)) => Some(TokenSet {
                access_token: self.key.open_secret(&name, F_ACCESS_TOKEN, &access)?,
                expires_at_ms,
                obtained_at_ms: obtained_ms.unwrap_or(expires_at_ms),
                refresh_token: refresh_token
                    .map(|blob| self.key.open_secret(&name, F_REFRESH_TOKEN, &blob))
                    .transpose()?,
                refresh_issued_ms,
                obtained_boot: match (obtained_boot_id, obtained_boot_ms) {
                    (Some(boot_id), Some(boot_ms)) => Some(BootStamp { boot_id, boot_ms }),
                    _ => None,
                },
            }),
            _ => None,
        };
        Ok(Record {
            auth: Authentication {
                name,
                instance_url: settings.instance_url,
                grant: spelled(settings.grant)?,
                client_id: settings.client_id,
                client_auth: spelled(settings.client_auth)?,
                scope: settings.scope,
                client_secret,
                created_at_ms: settings.created_ms,
                username: settings.username,
                redirect_port,
                refresh_lifespan_secs: settings.refresh_lifespan_secs.max(0) as u64,
                readers: readers_from(
                    &settings.allow_users,
                    &settings.allow_groups,
                    &settings.allow_units,
                )?,
                jwt,
                proxy: settings.proxy,
            },
            tokens,
            state: spelled(state)?,
            last_error,
        })
    }

    /// Stores a new authentication with its first tokens.
    pub fn insert(&mut self, auth: &Authentication, tokens: &TokenSet) -> Result<(), StoreError> {
        self.insert_all(std::iter::once((auth, tokens)))
    }

    /// Stores new authentications with their first tokens in one
    /// transaction: all of them, or none if one name exists already.
    pub fn insert_all<'a>(
        &mut self,
        items: impl IntoIterator<Item = (&'a Authentication, &'a TokenSet)>,
    ) -> Result<(), StoreError> {
        self.in_place()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        for (auth, tokens) in items {
            let exists: bool = tx.query_row(
                "SELECT count(*) FROM authentications WHERE name = ?1",
                [&auth.name],
                |r| r.get::<_, i64>(0).map(|n| n > 0),
            )?;
            if exists {
                return Err(StoreError::AlreadyExists);
            }
            // The row's identity; every setting is then written as `replace`
            // writes it.
            tx.execute(
                "INSERT INTO authentications (name, grant_type, created_ms, instance_url, client_id,
                     client_auth, client_secret, updated_ms)
                 VALUES (?1, ?2, ?3, '', '', '', x'', ?3)",
                params![auth.name, auth.grant.as_str(), auth.created_at_ms],
            )?;
            Self::write_settings(&tx, &self.key, auth, now)?;
            Self::write_tokens(&tx, &self.key, &auth.name, tokens, now, false)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Replaces an authentication's settings and, when given, its tokens
    /// (after an update or a login proved them). After a new login, the
    /// refresh token of the old one goes even when the new one came without.
    /// Returns whether the authentication exists.
    pub fn replace(
        &mut self,
        auth: &Authentication,
        tokens: Option<&TokenSet>,
        new_login: bool,
    ) -> Result<bool, StoreError> {
        self.in_place()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        if !Self::write_settings(&tx, &self.key, auth, now)? {
            return Ok(false);
        }
        if let Some(tokens) = tokens {
            Self::write_tokens(&tx, &self.key, &auth.name, tokens, now, !new_login)?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Commits freshly obtained tokens and marks the authentication healthy.
    /// A refresh token in `tokens` replaces the stored one (with its issue
    /// time); without one the stored one stays.
    /// Where the database is gone ([`Db::in_place`]), the tokens are
    /// written into the copy still open all the same, and the error
    /// returned: the save is retried, and meanwhile `snctl backup`, which
    /// reads that copy, holds the newest tokens.
    pub fn save_tokens(&mut self, name: &str, tokens: &TokenSet) -> Result<bool, StoreError> {
        let placed = self.in_place();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = Self::write_tokens(&tx, &self.key, name, tokens, now_ms(), true)?;
        tx.commit()?;
        placed.map(|()| found)
    }

    /// Makes every later write fail as on a read-only filesystem
    /// (SQLite's `query_only`), or lets writes through again: the tests'
    /// stand-in for a full, broken or read-only disk.
    #[cfg(test)]
    pub fn refuse_writes(&mut self, refuse: bool) -> Result<(), StoreError> {
        self.conn.pragma_update(None, "query_only", refuse)?;
        Ok(())
    }

    /// Writes every setting of `auth` and their MAC; returns whether the
    /// row exists. The grant and creation time are written too (they do
    /// not change: `auth` comes from the stored row) so that the row holds
    /// exactly what was signed. The MAC is computed from `auth`, not read
    /// back: it says what snctld meant to store.
    fn write_settings(
        tx: &rusqlite::Transaction<'_>,
        key: &MasterKey,
        auth: &Authentication,
        now: i64,
    ) -> Result<bool, StoreError> {
        let changed = tx.execute(
            "UPDATE authentications SET instance_url = ?2, client_id = ?3, client_auth = ?4,
                 scope = ?5, client_secret = ?6, updated_ms = ?7, username = ?8,
                 redirect_port = ?9, refresh_lifespan_secs = ?10, allow_users = ?11,
                 allow_groups = ?12, allow_units = ?13, jwt_key = ?14, jwt_subject = ?15,
                 jwt_kid = ?16, grant_type = ?17, created_ms = ?18, settings_mac = ?19,
                 proxy = ?20
             WHERE name = ?1",
            params![
                auth.name,
                auth.instance_url,
                auth.client_id,
                auth.client_auth.as_str(),
                auth.scope,
                key.seal_secret(&auth.name, F_CLIENT_SECRET, &auth.client_secret)?,
                now,
                auth.username,
                auth.redirect_port,
                auth.refresh_lifespan_secs as i64,
                join(&auth.readers.users),
                join(&auth.readers.groups),
                join(&auth.readers.units),
                seal_jwt_key(key, auth)?,
                auth.jwt.as_ref().map(|j| &j.subject),
                auth.jwt.as_ref().and_then(|j| j.kid.as_ref()),
                auth.grant.as_str(),
                auth.created_at_ms,
                Settings::of(auth).sign(key),
                auth.proxy,
            ],
        )?;
        Ok(changed > 0)
    }

    /// Writes new tokens; `keep_refresh` keeps the stored refresh token
    /// when `tokens` has none.
    fn write_tokens(
        tx: &rusqlite::Transaction<'_>,
        key: &MasterKey,
        name: &str,
        tokens: &TokenSet,
        now: i64,
        keep_refresh: bool,
    ) -> Result<bool, StoreError> {
        let access = key.seal_secret(name, F_ACCESS_TOKEN, &tokens.access_token)?;
        let refresh = tokens
            .refresh_token
            .as_ref()
            .map(|r| key.seal_secret(name, F_REFRESH_TOKEN, r))
            .transpose()?;
        let issued = refresh
            .as_ref()
            .map(|_| tokens.refresh_issued_ms.unwrap_or(tokens.obtained_at_ms));
        let changed = tx.execute(
            "UPDATE authentications SET access_token = ?2, access_expires_ms = ?3, obtained_ms = ?4,
                 refresh_token = CASE WHEN ?8 THEN coalesce(?5, refresh_token) ELSE ?5 END,
                 refresh_issued_ms = CASE WHEN ?8 THEN coalesce(?6, refresh_issued_ms) ELSE ?6 END,
                 state = 'ok', last_error = NULL, updated_ms = ?7,
                 obtained_boot_id = ?9, obtained_boot_ms = ?10
             WHERE name = ?1",
            params![
                name,
                access,
                tokens.expires_at_ms,
                tokens.obtained_at_ms,
                refresh,
                issued,
                now,
                keep_refresh,
                tokens.obtained_boot.as_ref().map(|b| b.boot_id.as_str()),
                tokens.obtained_boot.as_ref().map(|b| b.boot_ms),
            ],
        )?;
        Ok(changed > 0)
    }

    /// Records an authentication's health after a failed refresh.
    pub fn set_health(
        &mut self,
        name: &str,
        state: AuthState,
        last_error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.in_place()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE authentications SET state = ?2, last_error = ?3, updated_ms = ?4 WHERE name = ?1",
            params![name, state.as_str(), last_error, now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes an authentication. Returns whether it existed.
    pub fn delete(&mut self, name: &str) -> Result<bool, StoreError> {
        self.in_place()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute("DELETE FROM authentications WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// A consistent copy of the whole database, as the bytes of a
    /// self-contained database file (rollback journal mode, no `-wal` to go
    /// with it). Made with SQLite's online backup API into `tmp` (created
    /// 0600, removed before returning); on the store thread no write can
    /// interleave. Sealed blobs stay sealed: no secret is in clear. Where
    /// `tmp`'s directory is gone or read-only (a state directory deleted
    /// under snctld: then the backup is the way to keep what it holds),
    /// the copy is made in the temporary directory instead, under a new
    /// name.
    pub fn backup(&mut self, tmp: &Path) -> Result<Vec<u8>, StoreError> {
        match self.backup_in(tmp) {
            Err(StoreError::Backup { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let elsewhere = std::env::temp_dir()
                    .join(format!("snctld-backup-{}-{nanos}.db", std::process::id()));
                self.backup_in(&elsewhere)
            }
            done => done,
        }
    }

    fn backup_in(&mut self, tmp: &Path) -> Result<Vec<u8>, StoreError> {
        let io_err = |source| StoreError::Backup {
            path: tmp.to_path_buf(),
            source,
        };
        let remove = || {
            for suffix in ["", "-journal", "-wal", "-shm"] {
                match std::fs::remove_file(format!("{}{suffix}", tmp.display())) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            Ok(())
        };
        // Left by a copy that died half way.
        remove().map_err(io_err)?;
        let copied = (|| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(tmp)
                .map_err(io_err)?;
            // The copy is read back and deleted at once: nothing of it
            // needs to reach the disk, and every commit waits behind this
            // thread, so it is never synced (a busy disk takes seconds per
            // sync) and keeps no journal file.
            let unsynced = |conn: &Connection| -> rusqlite::Result<()> {
                conn.pragma_update(None, "synchronous", "OFF")?;
                conn.query_row("PRAGMA journal_mode = MEMORY", [], |r| {
                    r.get::<_, String>(0)
                })?;
                Ok(())
            };
            {
                let mut dst = Connection::open(tmp)?;
                unsynced(&dst)?;
                // Every page in one step: one read transaction, one snapshot.
                rusqlite::backup::Backup::new(&self.conn, &mut dst)?.run_to_completion(
                    i32::MAX,
                    std::time::Duration::from_millis(10),
                    None,
                )?;
            }
            // The copy says WAL, like its source: make it a single file.
            let dst = Connection::open(tmp)?;
            dst.pragma_update(None, "synchronous", "OFF")?;
            dst.query_row("PRAGMA journal_mode = DELETE", [], |r| {
                r.get::<_, String>(0)
            })?;
            dst.close().map_err(|(_, e)| e)?;
            std::fs::read(tmp).map_err(io_err)
        })();
        let removed = remove().map_err(io_err);
        let bytes = copied?;
        removed?;
        Ok(bytes)
    }

    /// Runs SQLite's full integrity check ("ok" when sound).
    pub fn integrity_check(&mut self) -> Result<String, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

    /// Runs SQLite's quick integrity check.
    pub fn quick_check(&mut self) -> Result<String, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))?)
    }
}

/// Loading around secrets that do not open, and moving to a new key.
impl Db {
    /// What keeps stored authentications from being used, in name order:
    /// settings changed outside snctld ([`RowError::Altered`]), an instance
    /// URL `add` refuses ([`RowError::InstanceUrl`]), or sealed secrets
    /// that do not open with the master key (a blob copied from another row
    /// or column, a damaged blob, another key: [`CryptoError::Open`],
    /// naming the authentication and the field). Looks at what
    /// [`Db::load_all`] checks and opens.
    pub fn unreadable(&mut self) -> Result<Vec<RowError>, StoreError> {
        problems(&self.conn, &self.key, true)
    }

    /// Every stored authentication that can be used, and what keeps the
    /// others from it (see [`Db::unreadable`]): one damaged or altered row
    /// does not stop the others from loading. Any other error fails the whole load, as with
    /// [`Db::load_all`].
    ///
    /// [`Db::load_all`] stays the one reader of a row: with unreadable rows
    /// it runs inside a transaction that deletes them first and is then
    /// rolled back, so nothing is written.
    pub fn load_readable(&mut self) -> Result<(Vec<Record>, Vec<RowError>), StoreError> {
        let unreadable = self.unreadable()?;
        if unreadable.is_empty() {
            return Ok((self.load_all()?, unreadable));
        }
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let loaded = (|| {
            for name in unreadable.iter().filter_map(RowError::name) {
                self.conn
                    .execute("DELETE FROM authentications WHERE name = ?1", [name])?;
            }
            self.load_all()
        })();
        let rolled_back = self.conn.execute_batch("ROLLBACK");
        let records = loaded?;
        rolled_back?;
        Ok((records, unreadable))
    }

    /// Gives back the page cache (SQLite's `shrink_memory`): after the
    /// start has read every row, it holds a copy of the whole table that
    /// only the next full read would use (2 MB with 10,000 rows).
    pub fn release_cache(&self) -> Result<(), StoreError> {
        self.conn.execute_batch("PRAGMA shrink_memory")?;
        Ok(())
    }

    /// Re-seals every sealed blob (client secrets, access and refresh
    /// tokens, JWT signing keys, the key check) under `new_key`, each with a fresh nonce, in
    /// one `BEGIN IMMEDIATE` transaction, then uses `new_key` and drops the
    /// old one; every row's settings MAC is checked under the old key and
    /// made anew under the new one. Returns how many blobs were re-sealed
    /// (MACs are not counted). A blob that does not open, or settings that
    /// fail their MAC, with the current key fail the whole re-seal, and
    /// nothing changes.
    pub fn reseal(&mut self, new_key: Arc<MasterKey>) -> Result<usize, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let rows = StoredRow::all(&tx)?;
        let old = &self.key;
        let reseal = |name: &str, field: &'static str, blob: &[u8]| -> Result<_, StoreError> {
            let plain = old.open(name, field, blob)?;
            Ok(new_key.seal(name, field, &plain)?)
        };
        let mut count = 0;
        for row in rows {
            let name = &row.settings.name;
            row.settings.verify(old, row.settings_mac.as_deref())?;
            let mac = row.settings.sign(&new_key);
            let secret = reseal(name, F_CLIENT_SECRET, &row.client_secret)?;
            let access = row
                .access_token
                .map(|b| reseal(name, F_ACCESS_TOKEN, &b))
                .transpose()?;
            let refresh = row
                .refresh_token
                .map(|b| reseal(name, F_REFRESH_TOKEN, &b))
                .transpose()?;
            let jwt_key = row
                .jwt_key
                .map(|b| reseal(name, F_JWT_KEY, &b))
                .transpose()?;
            count += 1
                + usize::from(access.is_some())
                + usize::from(refresh.is_some())
                + usize::from(jwt_key.is_some());
            tx.execute(
                "UPDATE authentications SET client_secret = ?2, access_token = ?3,
                     refresh_token = ?4, jwt_key = ?5, settings_mac = ?6
                 WHERE name = ?1",
                params![name, secret, access, refresh, jwt_key, mac],
            )?;
        }
        // The old check was proven when the key was loaded; a new one says
        // the same of the new key.
        let check = crypto::key_check(&new_key)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('key_check', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [check],
        )?;
        count += 1;
        tx.commit()?;
        self.key = new_key;
        Ok(count)
    }
}

type Job = Box<dyn FnOnce(&mut Db) -> Flow + Send>;

enum Flow {
    Continue,
    Stop,
}

/// Handle to the store thread. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    jobs: mpsc::Sender<Job>,
}

/// The store thread; [`StoreThread::join`] waits until every job sent
/// before [`Store::close`] has run.
/// The store thread. Joined when dropped, after the jobs already queued:
/// whoever drops it (a start that failed, a test) finds the database
/// closed, its journal folded back, and nothing left writing to it.
pub struct StoreThread {
    thread: Option<JoinHandle<()>>,
    jobs: mpsc::Sender<Job>,
}

impl StoreThread {
    /// Waits until the queued jobs have run and the database is closed.
    pub fn join(mut self) {
        self.stop_and_join();
    }

    /// Lets the thread run on, unjoined, until the last [`Store`] handle
    /// is dropped.
    pub fn detach(mut self) {
        self.thread.take();
    }

    fn stop_and_join(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let _ = self.jobs.send(Box::new(|_| Flow::Stop));
        if thread.join().is_err() {
            tracing::error!("the store thread panicked");
        }
    }
}

impl Drop for StoreThread {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

impl Store {
    /// Moves `db` to a thread of its own.
    pub fn spawn(mut db: Db) -> std::io::Result<(Store, StoreThread)> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("snctld-store".into())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    if let Flow::Stop = job(&mut db) {
                        break;
                    }
                }
            })?;
        let thread = StoreThread {
            thread: Some(thread),
            jobs: jobs.clone(),
        };
        Ok((Store { jobs }, thread))
    }

    /// Runs `f` on the store thread and returns its result.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Db) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |db| {
            let _ = tx.send(f(db));
            Flow::Continue
        });
        self.jobs.send(job).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Asks the thread to stop once the jobs already queued have run.
    pub fn close(&self) {
        let _ = self.jobs.send(Box::new(|_| Flow::Stop));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, key: &Arc<MasterKey>) -> Db {
        UncheckedDb::open(&dir.join(DB_FILE))
            .unwrap()
            .prepare(key.clone())
            .unwrap()
    }

    fn sample(name: &str) -> (Authentication, TokenSet) {
        (
            Authentication {
                name: name.into(),
                instance_url: "https://acme.service-now.com".into(),
                grant: Grant::ClientCredentials,
                client_id: "cid".into(),
                client_auth: ClientAuth::Form,
                scope: None,
                client_secret: Secret::new("client-secret-canary".into()),
                created_at_ms: 1,
                username: None,
                redirect_port: None,
                refresh_lifespan_secs: DEFAULT_REFRESH_LIFESPAN_SECS,
                readers: ReaderIds {
                    users: vec![1001, 1002],
                    groups: vec![3000],
                    units: vec!["sync.service".into()],
                },
                jwt: None,
                proxy: false,
            },
            TokenSet {
                access_token: Secret::new("access-token-canary".into()),
                expires_at_ms: 2_000,
                obtained_at_ms: 1_000,
                refresh_token: None,
                refresh_issued_ms: None,
                obtained_boot: None,
            },
        )
    }

    #[test]
    fn insert_load_replace_delete() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(MasterKey::generate().unwrap().0);
        let mut db = open(dir.path(), &key);
        let (auth, tokens) = sample("prod");
        db.insert(&auth, &tokens).unwrap();
        assert!(matches!(
            db.insert(&auth, &tokens),
            Err(StoreError::AlreadyExists)
        ));
        let mut records = db.load_all().unwrap();
        assert_eq!(records.len(), 1);
        let r = records.pop().unwrap();
        assert_eq!(r.auth.client_secret.expose(), "client-secret-canary");
        assert_eq!(r.auth.readers, auth.readers);
        assert_eq!(
            r.tokens.unwrap().access_token.expose(),
            "access-token-canary"
        );

        db.set_health("prod", AuthState::Rejected, Some("denied"))
            .unwrap();
        assert_eq!(db.load_all().unwrap()[0].state, AuthState::Rejected);
        let stamp = BootStamp {
            boot_id: "a-boot".into(),
            boot_ms: 1_234,
        };
        let newer = TokenSet {
            access_token: Secret::new("second".into()),
            refresh_token: Some(Secret::new("rt".into())),
            refresh_issued_ms: Some(1_500),
            obtained_boot: Some(stamp.clone()),
            ..tokens.clone()
        };
        assert!(db.save_tokens("prod", &newer).unwrap());
        let r = &db.load_all().unwrap()[0];
        assert_eq!(r.state, AuthState::Ok);
        assert_eq!(r.tokens.as_ref().unwrap().refresh_issued_ms, Some(1_500));
        assert_eq!(r.tokens.as_ref().unwrap().obtained_boot, Some(stamp));
        assert_eq!(
            r.tokens
                .as_ref()
                .unwrap()
                .refresh_token
                .as_ref()
                .unwrap()
                .expose(),
            "rt"
        );
        // A response without a refresh token keeps the stored one.
        assert!(db.save_tokens("prod", &tokens).unwrap());
        let r = &db.load_all().unwrap()[0];
        assert_eq!(r.tokens.as_ref().unwrap().refresh_issued_ms, Some(1_500));
        assert_eq!(
            r.tokens
                .as_ref()
                .unwrap()
                .refresh_token
                .as_ref()
                .unwrap()
                .expose(),
            "rt"
        );

        // A new login without a refresh token drops the old login's.
        assert!(db.replace(&auth, Some(&tokens), true).unwrap());
        let r = &db.load_all().unwrap()[0];
        assert!(r.tokens.as_ref().unwrap().refresh_token.is_none());
        assert_eq!(r.tokens.as_ref().unwrap().refresh_issued_ms, None);

        assert!(db.delete("prod").unwrap());
        assert!(!db.delete("prod").unwrap());
        assert_eq!(db.quick_check().unwrap(), "ok");
    }

    #[test]
    fn reopen_checks_the_key_and_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(MasterKey::generate().unwrap().0);
        let (auth, tokens) = sample("prod");
        open(dir.path(), &key).insert(&auth, &tokens).unwrap();
        let unchecked = UncheckedDb::open(&dir.path().join(DB_FILE)).unwrap();
        let check = unchecked.key_check().unwrap().expect("check stored");
        assert_eq!(MasterKey::blob_key_id(&check).unwrap(), key.id_hex());
        let mut db = unchecked.prepare(key).unwrap();
        assert_eq!(db.load_all().unwrap().len(), 1);
        for file in std::fs::read_dir(dir.path()).unwrap() {
            let raw = std::fs::read(file.unwrap().path()).unwrap();
            for needle in [&b"client-secret-canary"[..], b"access-token-canary"] {
                assert!(!raw.windows(needle.len()).any(|w| w == needle));
            }
        }
    }

    #[test]
    fn a_version_1_database_is_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(MasterKey::generate().unwrap().0);
        let path = dir.path().join(DB_FILE);
        let (auth, _) = sample("prod");
        {
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            // Schema 1 exactly as the first release created it.
            tx.execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) STRICT;
                CREATE TABLE authentications (
                    name TEXT PRIMARY KEY, instance_url TEXT NOT NULL, grant_type TEXT NOT NULL,
                    client_id TEXT NOT NULL, client_auth TEXT NOT NULL, scope TEXT,
                    client_secret BLOB NOT NULL, access_token BLOB, access_expires_ms INTEGER,
                    obtained_ms INTEGER, refresh_token BLOB, state TEXT NOT NULL DEFAULT 'ok',
                    last_error TEXT, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL
                ) STRICT;
                PRAGMA user_version = 1;",
            )
            .unwrap();
            let sealed = key
                .seal_secret("prod", F_CLIENT_SECRET, &auth.client_secret)
                .unwrap();
            tx.execute(
                "INSERT INTO authentications (name, instance_url, grant_type, client_id,
                     client_auth, client_secret, created_ms, updated_ms)
                 VALUES ('prod', 'https://acme.service-now.com', 'client-credentials', 'cid',
                     'form', ?1, 1, 1)",
                [sealed],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let mut db = open(dir.path(), &key);
        let version: i64 = db
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let records = db.load_all().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(
            records[0].auth.refresh_lifespan_secs,
            DEFAULT_REFRESH_LIFESPAN_SECS
        );
        assert_eq!(
            records[0].auth.client_secret.expose(),
            "client-secret-canary"
        );
    }

    #[test]
    fn a_jwt_key_is_sealed_resealed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(MasterKey::generate().unwrap().0);
        let mut db = open(dir.path(), &key);
        let (mut auth, tokens) = sample("svc");
        auth.grant = Grant::JwtBearer;
        auth.jwt = Some(JwtSettings {
            key: Secret::new("jwt-key-canary".into()),
            subject: "svc.sync".into(),
            kid: Some("k1".into()),
        });
        db.insert(&auth, &tokens).unwrap();
        let jwt_of = |db: &mut Db| db.load_all().unwrap().remove(0).auth.jwt.unwrap();
        let jwt = jwt_of(&mut db);
        assert_eq!(jwt.key.expose(), "jwt-key-canary");
        assert_eq!(
            (jwt.subject.as_str(), jwt.kid.as_deref()),
            ("svc.sync", Some("k1"))
        );
        for file in std::fs::read_dir(dir.path()).unwrap() {
            let raw = std::fs::read(file.unwrap().path()).unwrap();
            assert!(!raw.windows(14).any(|w| w == b"jwt-key-canary"));
        }
        assert!(db.unreadable().unwrap().is_empty());
        // Client secret, access token, JWT key and the key check.
        let new_key = Arc::new(MasterKey::generate().unwrap().0);
        assert_eq!(db.reseal(new_key).unwrap(), 4);
        assert_eq!(jwt_of(&mut db).key.expose(), "jwt-key-canary");
        // A blob moved from another column does not open as the JWT key.
        db.conn
            .execute("UPDATE authentications SET jwt_key = client_secret", [])
            .unwrap();
        let unreadable = db.unreadable().unwrap();
        assert!(
            matches!(
                &unreadable[..],
                [RowError::Sealed(CryptoError::Open {
                    field: F_JWT_KEY,
                    ..
                })]
            ),
            "{unreadable:?}"
        );
    }

    #[test]
    fn every_setting_is_covered_by_the_mac() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(MasterKey::generate().unwrap().0);
        let mut db = open(dir.path(), &key);
        let (mut auth, tokens) = sample("prod");
        auth.username = Some("abel.tuter".into());
        auth.scope = Some("useraccount".into());
        db.insert(&auth, &tokens).unwrap();
        assert!(db.unreadable().unwrap().is_empty());
        let edits = [
            "instance_url = 'https://evil.example.com'",
            "grant_type = 'password'",
            "client_id = 'other'",
            "client_auth = 'basic'",
            "scope = NULL",
            "scope = 'useraccount admin'",
            "created_ms = 2",
            "username = 'admin'",
            "redirect_port = 8751",
            "refresh_lifespan_secs = 1",
            "allow_users = ''",
            "allow_groups = '3000,0'",
            "allow_units = ''",
            "jwt_key = client_secret",
            "jwt_subject = 'admin'",
            "jwt_kid = 'k1'",
            "proxy = 1",
            "settings_mac = NULL",
            "settings_mac = x'00'",
        ];
        for edit in edits {
            db.conn.execute_batch("SAVEPOINT edit").unwrap();
            db.conn
                .execute_batch(&format!("UPDATE authentications SET {edit}"))
                .unwrap();
            let problems = db.unreadable().unwrap();
            assert!(
                matches!(&problems[..], [RowError::Altered { name }] if name == "prod"),
                "{edit}: {problems:?}"
            );
            let err = db.load_all().unwrap_err().to_string();
            assert!(err.contains("changed outside snctld"), "{edit}: {err}");
            db.conn
                .execute_batch("ROLLBACK TO edit; RELEASE edit")
                .unwrap();
        }
        // The volatile columns are not settings.
        db.set_health("prod", AuthState::Rejected, Some("denied"))
            .unwrap();
        assert!(db.save_tokens("prod", &tokens).unwrap());
        assert_eq!(db.load_all().unwrap().len(), 1);
        // A signed row whose instance URL add would refuse is left out too.
        auth.instance_url = "http://acme.service-now.com".into();
        assert!(db.replace(&auth, None, false).unwrap());
        let problems = db.unreadable().unwrap();
        assert!(
            matches!(&problems[..], [RowError::InstanceUrl { .. }]),
            "{problems:?}"
        );
    }

    #[test]
    fn the_settings_encoding_is_unambiguous() {
        let (auth, _) = sample("prod");
        let base = Settings::of(&auth);
        let variants = [
            Settings {
                scope: Some(String::new()),
                ..base.clone()
            },
            Settings {
                allow_users: String::new(),
                allow_groups: "1001,1002,3000".into(),
                ..base.clone()
            },
            Settings {
                client_id: "ci".into(),
                client_auth: "dform".into(),
                ..base.clone()
            },
            Settings {
                redirect_port: Some(0),
                ..base.clone()
            },
        ];
        for variant in variants {
            assert_ne!(variant.encode(), base.encode(), "{variant:?}");
        }
    }

    #[test]
    fn a_trigger_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(MasterKey::generate().unwrap().0);
        let (auth, tokens) = sample("prod");
        open(dir.path(), &key).insert(&auth, &tokens).unwrap();
        let path = dir.path().join(DB_FILE);
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER undo AFTER UPDATE ON authentications
                 BEGIN UPDATE authentications SET allow_users = ''; END;
                 CREATE TABLE extra (x)",
            )
            .unwrap();
        let unchecked = UncheckedDb::open(&path).unwrap();
        let foreign = unchecked.foreign_objects().unwrap();
        assert_eq!(ObjectList(foreign).to_string(), "table extra, trigger undo");
        let err = unchecked.prepare(key).err().expect("refused").to_string();
        assert!(
            err.contains("trigger undo") && err.contains("nothing was changed"),
            "{err}"
        );
    }

    #[test]
    fn a_database_deleted_under_it_is_not_written_until_it_is_back_and_opens_with_the_key() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        let key = Arc::new(MasterKey::generate().unwrap().0);
        let mut db = open(&dir, &key);
        let (auth, tokens) = sample("prod");
        db.insert(&auth, &tokens).unwrap();

        std::fs::remove_dir_all(&dir).unwrap();
        let newer = TokenSet {
            access_token: Secret::new("newer".into()),
            ..tokens.clone()
        };
        assert!(matches!(
            db.save_tokens("prod", &newer),
            Err(StoreError::Gone { .. })
        ));
        assert!(matches!(db.delete("prod"), Err(StoreError::Gone { .. })));
        assert!(!dir.exists(), "nothing created");

        // Moved away and back: the same file, written as ever.
        let away = root.path().join("away");
        std::fs::create_dir(&dir).unwrap();
        drop(open(&dir, &key));
        let mut moved = open(&dir, &key);
        std::fs::rename(&dir, &away).unwrap();
        assert!(matches!(
            moved.save_tokens("x", &tokens),
            Err(StoreError::Gone { .. })
        ));
        std::fs::rename(&away, &dir).unwrap();
        assert!(!moved.save_tokens("x", &tokens).unwrap());
        drop(moved);
        std::fs::remove_dir_all(&dir).unwrap();

        // The directory back, empty: the open copy is written into it.
        std::fs::create_dir(&dir).unwrap();
        assert!(db.save_tokens("prod", &newer).unwrap());
        drop(db);
        let mut db = open(&dir, &key);
        let loaded = db.load_all().unwrap();
        assert_eq!(
            loaded[0].tokens.as_ref().unwrap().access_token.expose(),
            "newer"
        );

        // Another database in its place, under another key: not written.
        let other = root.path().join("other");
        std::fs::create_dir(&other).unwrap();
        drop(open(&other, &Arc::new(MasterKey::generate().unwrap().0)));
        std::fs::rename(other.join(DB_FILE), dir.join(DB_FILE)).unwrap();
        assert!(matches!(
            db.save_tokens("prod", &tokens),
            Err(StoreError::Replaced { .. })
        ));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99")
            .unwrap();
        assert!(matches!(
            UncheckedDb::open(&path),
            Err(StoreError::SchemaTooNew { found: 99, .. })
        ));
    }

    #[test]
    fn each_schema_snctld_wrote_matches_its_version_and_an_edited_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data");
        for version in 1..=4 {
            let path = dir.path().join(format!("schema-{version}.db"));
            std::fs::copy(data.join(format!("schema-{version}/snctld.db")), &path).unwrap();
            let db = UncheckedDb::open(&path).unwrap();
            assert_eq!(db.version().unwrap(), version);
            assert!(db.schema_matches().unwrap(), "schema {version}");
        }
        let key = Arc::new(MasterKey::generate().unwrap().0);
        let path = dir.path().join(DB_FILE);
        drop(open(dir.path(), &key));
        assert!(UncheckedDb::open(&path).unwrap().schema_matches().unwrap());
        for edit in [
            "ALTER TABLE authentications DROP COLUMN settings_mac",
            "PRAGMA user_version = 4",
            "ALTER TABLE authentications ADD COLUMN extra TEXT",
        ] {
            let copy = dir.path().join("edited.db");
            std::fs::copy(&path, &copy).unwrap();
            Connection::open(&copy)
                .unwrap()
                .execute_batch(edit)
                .unwrap();
            let db = UncheckedDb::open(&copy).unwrap();
            assert!(!db.schema_matches().unwrap(), "{edit}");
            drop(db);
            std::fs::remove_file(&copy).unwrap();
        }
    }
}
