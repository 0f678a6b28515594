//! One remote copy: its URL, the object_store client, and the handful of
//! operations replication needs (pointer, record objects, listing).
//!
//! Every error names the URL and says what was being done and why it failed,
//! sorted into a [`Cause`] so that the daemon can say "the bucket does not
//! exist" instead of an HTTP status.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{
    ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutMode, PutOptions, PutPayload, UpdateVersion,
};

use super::layout::{self, Pointer};
use crate::wal::format::{PAGE, RECORD_HEADER_LEN};
use crate::wal::{load_record_copy, MappedRecord, RecordHeader, WalError};

/// Credential names read from systemd's `$CREDENTIALS_DIRECTORY`
/// (`LoadCredential=aws_access_key_id:/path` and so on in the unit).
pub const AWS_CREDENTIAL_FILES: [&str; 3] = [
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
];

/// AWS keys passed as systemd credentials.
struct AwsCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

/// The AWS keys in `$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=`),
/// if it is set and holds them; they take precedence over `AWS_*` variables.
/// Credentials in files stay out of the process environment, which every
/// process of the same user can read (`/proc/PID/environ`) and which child
/// processes inherit. The error names the file.
fn aws_credentials_from_directory() -> Result<Option<AwsCredentials>, String> {
    let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else {
        return Ok(None);
    };
    let dir = std::path::PathBuf::from(dir);
    let read = |name: &str| -> Result<Option<String>, String> {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let value = text.trim_end_matches(['\n', '\r']).to_string();
                if value.is_empty() || value.contains(char::is_whitespace) {
                    return Err(format!(
                        "{}: the credential is empty or holds white space",
                        path.display()
                    ));
                }
                Ok(Some(value))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    };
    let [id, secret, token] = AWS_CREDENTIAL_FILES;
    match (read(id)?, read(secret)?, read(token)?) {
        (Some(access_key_id), Some(secret_access_key), session_token) => Ok(Some(AwsCredentials {
            access_key_id,
            secret_access_key,
            session_token,
        })),
        (None, None, None) => Ok(None),
        (have_id, have_secret, _) => {
            let missing: Vec<&str> = [(id, have_id.is_some()), (secret, have_secret.is_some())]
                .into_iter()
                .filter(|(_, has)| !has)
                .map(|(name, _)| name)
                .collect();
            Err(format!(
                "{}: holds some of the AWS credentials but not {}: give {id} and {secret} \
                 (and {token} if the keys are temporary)",
                dir.display(),
                missing.join(" or ")
            ))
        }
    }
}

/// A parsed `[replicate] url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    /// The URL as written.
    pub url: String,
    scheme: Scheme,
    /// `s3://bucket` (no trailing slash), `file://`.
    root: String,
    /// The prefix inside the bucket (or the directory for `file://`).
    prefix: Path,
    parsed: url::Url,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    S3,
    Gcs,
    Azure,
    File,
}

impl RemoteUrl {
    /// Parses a URL; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<RemoteUrl, String> {
        let parsed = url::Url::parse(text).map_err(|e| {
            format!("{text:?} is not a URL ({e}); expected s3://bucket/prefix or file:///path")
        })?;
        let (kind, path) = ObjectStoreScheme::parse(&parsed).map_err(|e| {
            format!("{text:?}: unsupported URL ({e}); expected s3://, gs://, az:// or file://")
        })?;
        let scheme = match kind {
            ObjectStoreScheme::AmazonS3 => Scheme::S3,
            ObjectStoreScheme::GoogleCloudStorage => Scheme::Gcs,
            ObjectStoreScheme::MicrosoftAzure => Scheme::Azure,
            ObjectStoreScheme::Local => Scheme::File,
            _ => {
                return Err(format!(
                    "{text:?}: unsupported scheme; expected s3://, gs://, az:// or file://"
                ))
            }
        };
        if scheme != Scheme::File && parsed.host_str().is_none_or(str::is_empty) {
            return Err(format!("{text:?}: no bucket name"));
        }
        if scheme != Scheme::File {
            check_bucket_name(text, parsed.host_str().unwrap_or_default(), scheme)?;
        }
        // The URL parser folds `.` and `..` away (`s3://b/../x` would become
        // `s3://b/x`): a prefix is taken as written or refused.
        let after_scheme = text.split_once("://").map_or(text, |(_, rest)| rest);
        if let Some(seg) = after_scheme.split(['/', '?', '#']).skip(1).find(|seg| {
            matches!(
                seg.to_ascii_lowercase().as_str(),
                "." | ".." | "%2e" | "%2e%2e" | ".%2e" | "%2e."
            )
        }) {
            return Err(format!(
                "{text:?}: the prefix holds a {seg:?} segment; write the prefix without \
                 `.` or `..` (they would be folded away silently)"
            ));
        }
        let prefix = Path::parse(path).map_err(|e| format!("{text:?}: bad prefix: {e}"))?;
        let root = match scheme {
            Scheme::File => "file://".to_string(),
            _ => format!(
                "{}://{}",
                parsed.scheme(),
                parsed.host_str().unwrap_or_default()
            ),
        };
        Ok(RemoteUrl {
            url: text.trim_end_matches('/').to_string(),
            scheme,
            root,
            prefix,
            parsed,
        })
    }

    /// True for strings that look like a remote location rather than a
    /// directory (`scheme://...`).
    pub fn looks_like_url(text: &str) -> bool {
        text.split_once("://")
            .is_some_and(|(s, _)| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric()))
    }
}

/// Checks a bucket (or container) name against the rules the stores share:
/// 3 to 63 lowercase letters, digits, `-` and `.` (and `_` on GCS),
/// beginning and ending with a letter or digit. A bad name would otherwise
/// reach the server and come back as a bare `400 Bad Request`.
fn check_bucket_name(text: &str, name: &str, scheme: Scheme) -> Result<(), String> {
    let allowed = |c: char| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || c == '-'
            || c == '.'
            || (c == '_' && scheme == Scheme::Gcs)
    };
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    // The URL parser lowercases host names; the original spelling decides.
    let written = text.split_once("://").map_or(name, |(_, rest)| {
        rest.split(['/', '?', '#']).next().unwrap_or(name)
    });
    let problem = if !(3..=63).contains(&written.len()) {
        Some(format!(
            "is {} characters long (3 to 63 allowed)",
            written.len()
        ))
    } else if let Some(c) = written.chars().find(|c| !allowed(*c)) {
        Some(format!(
            "holds {c:?} (allowed: lowercase letters, digits, '-' and '.')"
        ))
    } else if !edge(written.chars().next()) || !edge(written.chars().last()) {
        Some("must begin and end with a lowercase letter or a digit".to_string())
    } else {
        None
    };
    match problem {
        Some(p) => Err(format!("{text:?}: the bucket name {written:?} {p}")),
        None => Ok(()),
    }
}

/// The environment variables that name an S3 endpoint, as object_store
/// reads them (the first one set wins, `AWS_ENDPOINT_URL_S3` before the
/// others).
pub const ENDPOINT_VARIABLES: [&str; 3] =
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"];

/// Checks an endpoint variable's value: an `http://` or `https://` URL with
/// a host, nothing around it. The error names the variable and the problem
/// (a malformed value would otherwise reach the HTTP client, which panics on
/// some of them).
pub fn check_endpoint(var: &str, value: &str) -> Result<url::Url, String> {
    let expected =
        "expected http(s)://host[:port], e.g. https://s3.example.com or http://127.0.0.1:9000";
    let problem = if value.is_empty() {
        Some("is empty".to_string())
    } else if value.trim() != value {
        Some("has spaces or control characters around it".to_string())
    } else {
        None
    };
    if let Some(p) = problem {
        return Err(format!("{var}={value:?} {p}; {expected} (or unset it)"));
    }
    let lower = value.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(format!(
            "{var}={value:?} has no http:// or https:// scheme; {expected}"
        ));
    }
    let parsed = url::Url::parse(value)
        .map_err(|e| format!("{var}={value:?} is not a URL ({e}); {expected}"))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{var}={value:?} names no host; {expected}"));
    }
    Ok(parsed)
}

/// The endpoint the environment names for S3, checked (see
/// [`check_endpoint`]; every endpoint variable that is set is checked, not
/// only the one that wins); `None` when none is set.
pub fn endpoint_from_env() -> Result<Option<(String, url::Url)>, String> {
    let mut first = None;
    for var in ENDPOINT_VARIABLES {
        match std::env::var(var) {
            Ok(v) => {
                let u = check_endpoint(var, &v)?;
                first.get_or_insert((var.to_string(), u));
            }
            Err(std::env::VarError::NotPresent) => {}
            Err(std::env::VarError::NotUnicode(v)) => {
                return Err(format!(
                    "{var}={v:?} is not valid UTF-8; expected http(s)://host[:port]"
                ))
            }
        }
    }
    Ok(first)
}

/// Whether plain `http://` is allowed: `[replicate] allow_http` when the
/// file sets it, else `AWS_ALLOW_HTTP` (`true` or `false`). The file and the
/// environment saying different things is an error that names both, so
/// that an explicit `allow_http = false` is never overridden unseen.
pub fn resolve_allow_http(file: Option<bool>) -> Result<bool, String> {
    let env = match std::env::var("AWS_ALLOW_HTTP") {
        Ok(v) => match v.to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => return Err(format!("AWS_ALLOW_HTTP={v:?} is neither true nor false")),
        },
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(v)) => {
            return Err(format!("AWS_ALLOW_HTTP={v:?} is neither true nor false"))
        }
    };
    match (file, env) {
        (Some(f), Some(e)) if f != e => Err(format!(
            "[replicate] allow_http = {f} conflicts with AWS_ALLOW_HTTP={e} in the environment; \
             remove one of them (the setting in the file is not overridden silently)"
        )),
        (Some(f), _) => Ok(f),
        (None, e) => Ok(e.unwrap_or(false)),
    }
}

/// Checks what [`Remote::open`] will read from the environment for `url`
/// (the endpoint variables, `AWS_ALLOW_HTTP` against `allow_http`, and a
/// plain-http endpoint without `allow_http`), without building a client.
/// `check-config` runs it, so a file that `run` would refuse is not called
/// valid.
pub fn check_environment(url: &RemoteUrl, allow_http: Option<bool>) -> Result<(), String> {
    if url.scheme != Scheme::S3 {
        return Ok(());
    }
    let allowed = resolve_allow_http(allow_http)?;
    if let Some((var, endpoint)) = endpoint_from_env()? {
        if endpoint.scheme() == "http" && !allowed {
            return Err(format!(
                "{var}={endpoint} is plain http, but allow_http is off: set allow_http = true \
                 in [replicate] (Python: replicate={{\"url\": ..., \"allow_http\": True}}) or \
                 AWS_ALLOW_HTTP=true in the environment, or use https"
            ));
        }
    }
    Ok(())
}

/// Why a remote operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Connection refused, DNS, timeout: the endpoint cannot be reached.
    Unreachable,
    /// Credentials missing, wrong or without permission.
    Denied,
    /// The bucket (or container) does not exist.
    NoBucket,
    /// The endpoint is plain http and `allow_http` is off.
    HttpNotAllowed,
    /// A setting or environment variable is malformed or contradicts
    /// another (the detail names it).
    Settings,
    /// The object does not exist.
    NotFound,
    /// A conditional write lost: someone else changed the object.
    Conflict,
    /// The object exists but its bytes do not validate.
    Damaged,
    /// Anything else the store reported.
    Other,
}

impl Cause {
    /// Errors that retrying cannot heal within this process: the settings
    /// or the environment it started with must change first.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            Cause::Denied | Cause::NoBucket | Cause::HttpNotAllowed | Cause::Settings
        )
    }

    fn text(self) -> &'static str {
        match self {
            Cause::Unreachable => "cannot reach the endpoint",
            Cause::Denied => "access denied (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the aws_access_key_id and aws_secret_access_key credentials in $CREDENTIALS_DIRECTORY, and the bucket policy)",
            Cause::NoBucket => "the bucket does not exist",
            Cause::Settings => "bad setting",
            Cause::HttpNotAllowed => "the endpoint is plain http:// but allow_http is off (set allow_http = true in [replicate] (Python: replicate={\"url\": ..., \"allow_http\": True}) or AWS_ALLOW_HTTP=true in the environment)",
            Cause::NotFound => "no such object",
            Cause::Conflict => "the object was changed by another writer",
            Cause::Damaged => "damaged",
            Cause::Other => "error",
        }
    }
}

/// A failed remote operation: the URL, what was being done, why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{url}: {what}: {}: {detail}", cause.text())]
pub struct RemoteError {
    /// The object or prefix concerned.
    pub url: String,
    /// The operation.
    pub what: String,
    /// The sorted cause.
    pub cause: Cause,
    /// What the store said.
    pub detail: String,
}

pub(super) fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(super) fn classify(e: &object_store::Error, text: &str) -> Cause {
    use object_store::Error as E;
    if text.contains("NoSuchBucket") || text.contains("ContainerNotFound") {
        return Cause::NoBucket;
    }
    if text.contains("URL scheme is not allowed") {
        return Cause::HttpNotAllowed;
    }
    match e {
        E::NotFound { .. } => Cause::NotFound,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => Cause::Denied,
        E::Precondition { .. } | E::AlreadyExists { .. } => Cause::Conflict,
        _ => {
            let lower = text.to_ascii_lowercase();
            if text.contains("InvalidAccessKeyId")
                || text.contains("SignatureDoesNotMatch")
                || text.contains("AccessDenied")
                || lower.contains("403 forbidden")
                || lower.contains("missing credentials")
            {
                Cause::Denied
            } else if lower.contains("connect")
                || lower.contains("error sending request")
                || lower.contains("timed out")
                || lower.contains("dns")
                || lower.contains("connection")
            {
                Cause::Unreachable
            } else {
                Cause::Other
            }
        }
    }
}

/// A record object as listed: its sequence and epoch come from its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteObject {
    /// Sequence from the name.
    pub sequence: u64,
    /// Epoch from the name.
    pub epoch: u64,
    /// Full path in the store.
    pub path: Path,
    /// Size in bytes.
    pub size: u64,
}

/// The pointer object as read.
#[derive(Debug, Clone)]
pub enum Head {
    /// There is no pointer object.
    Missing,
    /// A pointer that decodes.
    Valid(PointerState),
    /// A pointer object that does not decode (flipped or cut bytes).
    Damaged {
        /// Why it does not decode.
        detail: String,
        /// Its ETag/version, to replace it conditionally.
        version: Option<UpdateVersion>,
    },
}

impl Head {
    /// The valid pointer, if there is one.
    pub fn valid(&self) -> Option<&PointerState> {
        match self {
            Head::Valid(p) => Some(p),
            _ => None,
        }
    }
}

/// What a pointer write replaces.
#[derive(Debug, Clone, Copy)]
pub enum Replacing<'a> {
    /// Nothing: the pointer is created (If-None-Match).
    Nothing,
    /// The object with this version (If-Match), or whatever is there when
    /// the server gave no version.
    Version(Option<&'a UpdateVersion>),
}

/// The pointer as read, with the version a conditional update needs.
#[derive(Debug, Clone)]
pub struct PointerState {
    /// The decoded pointer.
    pub pointer: Pointer,
    /// Its ETag/version, when the server gave one.
    pub version: Option<UpdateVersion>,
}

/// A validated record fetched from the remote, mapped from a temporary file
/// that no longer has a name.
pub struct FetchedRecord {
    /// The record (its `path()` is the object's URL).
    pub record: MappedRecord,
    /// The object's URL.
    pub url: String,
}

/// The `UPLOAD` file: `{"object": "<key>", "upload_id": "<id>" | null}`,
/// replaced by rename (not fsynced: it survives a kill, which is what it
/// is for; a power cut may lose it, and the lifecycle rule covers that).
fn write_journal(file: &std::path::Path, object: &Path, id: Option<&str>) -> std::io::Result<()> {
    let doc = serde_json::json!({ "object": object.as_ref(), "upload_id": id });
    let tmp = file.with_extension("tmp");
    crate::wal::write_private(&tmp, format!("{doc}\n").as_bytes())?;
    std::fs::rename(&tmp, file)
}

fn read_journal(file: &std::path::Path) -> Option<(String, Option<String>)> {
    let text = std::fs::read(file).ok()?;
    let doc: serde_json::Value = match serde_json::from_slice(&text) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "unreadable UPLOAD file ignored and removed");
            let _ = std::fs::remove_file(file);
            return None;
        }
    };
    let object = doc.get("object")?.as_str()?.to_string();
    let id = doc
        .get("upload_id")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    Some((object, id))
}

/// A record payload range that borrows the read-only mapping: lets a
/// [`Bytes`] point into the mapping without copying it.
struct MappedSlice {
    record: Arc<MappedRecord>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for MappedSlice {
    fn as_ref(&self) -> &[u8] {
        &self.record.payload()[self.start..self.end]
    }
}

/// A remote copy: a store client and the prefix under which the log lives.
pub struct Remote {
    url: RemoteUrl,
    store: Arc<dyn ObjectStore>,
    /// Whether the server honours conditional puts; cleared when it says it
    /// does not (the pointer is then overwritten unconditionally).
    conditional: AtomicBool,
    allow_http: Option<bool>,
    /// For `file://`: the local store, whose objects are fsynced (with
    /// their directories) before a pointer names them.
    local: Option<Arc<object_store::local::LocalFileSystem>>,
    /// Multipart uploads by id (S3, GCS, Azure), so that an upload can be
    /// remembered and aborted after a kill.
    multipart: Option<Arc<dyn object_store::multipart::MultipartStore>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url.url)
            .finish()
    }
}

impl Remote {
    /// Builds the client for `url`. Credentials, region and endpoint come
    /// from the environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`); plain
    /// `http://` endpoints need `allow_http` (the `[replicate]` setting; the
    /// tools pass `None` and follow `AWS_ALLOW_HTTP`). The environment is
    /// checked first ([`check_environment`]): a malformed endpoint variable
    /// is an error naming it. Nothing is contacted yet.
    pub fn open(url: &str, allow_http: Option<bool>) -> Result<Remote, RemoteError> {
        let parsed = RemoteUrl::parse(url).map_err(|detail| RemoteError {
            url: url.to_string(),
            what: "parsing the URL".into(),
            cause: Cause::Other,
            detail,
        })?;
        let settings = |cause: Cause, detail: String| RemoteError {
            url: url.to_string(),
            what: "reading the settings and the environment".into(),
            cause,
            detail,
        };
        // AWS_ALLOW_HTTP is S3's; the other stores follow the setting alone.
        let allowed = if parsed.scheme == Scheme::S3 {
            resolve_allow_http(allow_http).map_err(|d| settings(Cause::Settings, d))?
        } else {
            allow_http.unwrap_or(false)
        };
        if parsed.scheme == Scheme::S3 {
            if let Some((var, endpoint)) =
                endpoint_from_env().map_err(|d| settings(Cause::Settings, d))?
            {
                if endpoint.scheme() == "http" && !allowed {
                    return Err(settings(Cause::HttpNotAllowed, format!("{var}={endpoint}")));
                }
            }
        }
        let build_error = |e: object_store::Error| RemoteError {
            url: url.to_string(),
            what: "configuring the client".into(),
            cause: Cause::Other,
            detail: error_text(&e),
        };
        let retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: Duration::from_secs(20),
        };
        let client = |o: object_store::ClientOptions| {
            o.with_allow_http(allowed)
                .with_connect_timeout(Duration::from_secs(5))
                .with_timeout(Duration::from_secs(300))
        };
        let u = parsed.parsed.to_string();
        let mut local = None;
        let mut multipart: Option<Arc<dyn object_store::multipart::MultipartStore>> = None;
        let store: Arc<dyn ObjectStore> = match parsed.scheme {
            Scheme::S3 => {
                // from_env reads AWS_ALLOW_HTTP too; the resolved value
                // (the file's setting first) replaces it.
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(u)
                    .with_retry(retry)
                    .with_client_options(client(Default::default()));
                let creds = aws_credentials_from_directory().map_err(|detail| RemoteError {
                    url: url.to_string(),
                    what: "reading credentials from $CREDENTIALS_DIRECTORY".into(),
                    cause: Cause::Denied,
                    detail,
                })?;
                if let Some(c) = creds {
                    b = b
                        .with_access_key_id(c.access_key_id)
                        .with_secret_access_key(c.secret_access_key);
                    if let Some(t) = c.session_token {
                        b = b.with_token(t);
                    }
                }
                let s3 = Arc::new(b.build().map_err(build_error)?);
                multipart = Some(s3.clone());
                s3
            }
            Scheme::Gcs => {
                let gcs = Arc::new(
                    object_store::gcp::GoogleCloudStorageBuilder::from_env()
                        .with_url(u)
                        .with_retry(retry)
                        .with_client_options(client(Default::default()))
                        .build()
                        .map_err(build_error)?,
                );
                multipart = Some(gcs.clone());
                gcs
            }
            Scheme::Azure => {
                let az = Arc::new(
                    object_store::azure::MicrosoftAzureBuilder::from_env()
                        .with_url(u)
                        .with_retry(retry)
                        .with_client_options(client(Default::default()))
                        .build()
                        .map_err(build_error)?,
                );
                multipart = Some(az.clone());
                az
            }
            Scheme::File => {
                let fs = Arc::new(object_store::local::LocalFileSystem::new());
                local = Some(Arc::clone(&fs));
                fs
            }
        };
        Ok(Remote {
            url: parsed,
            store,
            conditional: AtomicBool::new(true),
            allow_http: Some(allowed),
            local,
            multipart,
        })
    }

    /// The same remote with a client of its own. An HTTP client pools its
    /// connections, and a pooled connection is driven by the tokio runtime
    /// that opened it: a thread with its own runtime (the uploader) must not
    /// reuse connections of a runtime that may sit idle meanwhile (the
    /// daemon's main thread), or its requests wait forever.
    pub fn with_own_client(&self) -> Result<Remote, RemoteError> {
        let fresh = Remote::open(&self.url.url, self.allow_http)?;
        fresh
            .conditional
            .store(self.conditional.load(Ordering::Relaxed), Ordering::Relaxed);
        Ok(fresh)
    }

    /// The URL as configured.
    pub fn url(&self) -> &str {
        &self.url.url
    }

    /// The URL of an object.
    pub fn object_url(&self, path: &Path) -> String {
        format!("{}/{}", self.url.root, path)
    }

    fn prefix(&self) -> &Path {
        &self.url.prefix
    }

    fn err(&self, path: &Path, what: impl Into<String>, e: object_store::Error) -> RemoteError {
        let detail = error_text(&e);
        RemoteError {
            url: self.object_url(path),
            what: what.into(),
            cause: classify(&e, &detail),
            detail,
        }
    }

    fn damaged(&self, path: &Path, detail: impl Into<String>) -> RemoteError {
        RemoteError {
            url: self.object_url(path),
            what: "checking the record object".into(),
            cause: Cause::Damaged,
            detail: detail.into(),
        }
    }

    /// For `file://` (a directory, perhaps on a mounted disk): fsyncs the
    /// object's file and every directory from its own up to the prefix's
    /// parent (the put may have created them), so that a pointer written
    /// afterwards never names an object whose bytes or name a power cut can
    /// take. Object stores have no fsync: a completed PUT is durable.
    fn make_durable(&self, path: &Path, what: &str) -> Result<(), RemoteError> {
        let Some(fs) = &self.local else {
            return Ok(());
        };
        let failed = |detail: String| RemoteError {
            url: self.object_url(path),
            what: what.to_string(),
            cause: Cause::Other,
            detail,
        };
        let file = fs
            .path_to_filesystem(path)
            .map_err(|e| failed(error_text(&e)))?;
        let top = fs
            .path_to_filesystem(self.prefix())
            .map_err(|e| failed(error_text(&e)))?;
        let sync = |p: &std::path::Path| {
            std::fs::File::open(p)
                .and_then(|f| f.sync_all())
                .map_err(|e| failed(format!("fsync of {}: {e}", p.display())))
        };
        sync(&file)?;
        let stop = top.parent().unwrap_or(&top);
        let mut dir = file.parent();
        while let Some(d) = dir {
            sync(d)?;
            if d == stop || !d.starts_with(stop) {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    /// The first contact: lists the prefix (which proves that the endpoint
    /// answers, the bucket exists and the credentials are accepted) and
    /// reads the pointer, damaged or not.
    pub async fn probe(&self) -> Result<Head, RemoteError> {
        self.check_bucket().await?;
        self.read_head().await
    }

    /// Lists the prefix, one level: an error if the bucket does not exist,
    /// the credentials are refused or the endpoint cannot be reached.
    pub async fn check_bucket(&self) -> Result<(), RemoteError> {
        let prefix = self.prefix().clone();
        self.store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| self.err(&prefix, "listing the prefix", e))?;
        Ok(())
    }

    /// Reads the pointer; `None` when there is none yet. A pointer that does
    /// not decode is an error ([`Cause::Damaged`]).
    pub async fn read_pointer(&self) -> Result<Option<PointerState>, RemoteError> {
        match self.read_head().await? {
            Head::Missing => Ok(None),
            Head::Valid(p) => Ok(Some(p)),
            Head::Damaged { detail, .. } => Err(RemoteError {
                url: self.object_url(&layout::pointer_path(self.prefix())),
                what: "reading the pointer".into(),
                cause: Cause::Damaged,
                detail,
            }),
        }
    }

    /// Reads the pointer object and says whether it is missing, valid or
    /// damaged (with the version needed to replace it conditionally).
    pub async fn read_head(&self) -> Result<Head, RemoteError> {
        let path = layout::pointer_path(self.prefix());
        let got = match self.store.get(&path).await {
            Ok(g) => g,
            Err(e @ object_store::Error::NotFound { .. }) => {
                // A missing bucket answers 404 too: say which it is.
                let detail = error_text(&e);
                if classify(&e, &detail) == Cause::NoBucket {
                    return Err(self.err(&path, "reading the pointer", e));
                }
                return Ok(Head::Missing);
            }
            Err(e) => return Err(self.err(&path, "reading the pointer", e)),
        };
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        let version = version.e_tag.is_some().then_some(version);
        let bytes = got
            .bytes()
            .await
            .map_err(|e| self.err(&path, "reading the pointer", e))?;
        Ok(match Pointer::decode(&bytes) {
            Ok(pointer) => Head::Valid(PointerState { pointer, version }),
            Err(detail) => Head::Damaged { detail, version },
        })
    }

    /// The URL of the pointer object.
    pub fn pointer_url(&self) -> String {
        self.object_url(&layout::pointer_path(self.prefix()))
    }

    /// Writes the pointer: created when `previous` is `None`, replaced only
    /// if unchanged since `previous` was read or written (If-None-Match /
    /// If-Match), where the server supports conditional puts. Returns the
    /// new state.
    pub async fn write_pointer(
        &self,
        pointer: &Pointer,
        previous: Option<&PointerState>,
    ) -> Result<PointerState, RemoteError> {
        let base = match previous {
            None => Replacing::Nothing,
            Some(p) => Replacing::Version(p.version.as_ref()),
        };
        self.write_pointer_over(pointer, base).await
    }

    /// [`Remote::write_pointer`] over a pointer object known only by its
    /// version (a damaged one, [`Head::Damaged`]).
    pub async fn write_pointer_over(
        &self,
        pointer: &Pointer,
        base: Replacing<'_>,
    ) -> Result<PointerState, RemoteError> {
        let path = layout::pointer_path(self.prefix());
        loop {
            let conditional = self.conditional.load(Ordering::Relaxed);
            let mode = match base {
                _ if !conditional => PutMode::Overwrite,
                Replacing::Nothing => PutMode::Create,
                Replacing::Version(Some(v)) => PutMode::Update(v.clone()),
                Replacing::Version(None) => PutMode::Overwrite,
            };
            let opts = PutOptions {
                mode,
                ..Default::default()
            };
            match self
                .store
                .put_opts(&path, PutPayload::from(pointer.encode()), opts)
                .await
            {
                Ok(r) => {
                    self.make_durable(&path, "making the pointer durable")?;
                    return Ok(PointerState {
                        pointer: pointer.clone(),
                        version: r.e_tag.is_some().then_some(UpdateVersion {
                            e_tag: r.e_tag,
                            version: r.version,
                        }),
                    });
                }
                Err(
                    object_store::Error::NotImplemented { .. }
                    | object_store::Error::NotSupported { .. },
                ) if conditional => {
                    tracing::info!(url = %self.url(), "the store does not support conditional puts; the pointer is overwritten unconditionally");
                    self.conditional.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(self.err(&path, "writing the pointer", e)),
            }
        }
    }

    /// Uploads a record as one object: its header page then its payload,
    /// straight from the read-only mapping (no copy of the payload). Records
    /// larger than `part_bytes` go up as a multipart upload with up to
    /// `parallel` parts in flight; its upload id is kept in `journal` (the
    /// `UPLOAD` file of the log directory) until it is completed or
    /// aborted, so that a run killed meanwhile can abort it at its next
    /// start ([`Remote::abort_remembered_upload`]).
    pub async fn put_record(
        &self,
        record: &Arc<MappedRecord>,
        part_bytes: usize,
        parallel: usize,
        journal: Option<&std::path::Path>,
    ) -> Result<u64, RemoteError> {
        let h = *record.header();
        let path = layout::record_path(self.prefix(), h.log_id, h.sequence, h.epoch);
        let mut page = vec![0u8; PAGE as usize];
        h.encode(&mut page);
        let header = Bytes::from(page);
        let payload_len = record.payload().len();
        let slice = |start: usize, end: usize| {
            Bytes::from_owner(MappedSlice {
                record: Arc::clone(record),
                start,
                end,
            })
        };
        let total = PAGE as usize + payload_len;
        if total <= part_bytes {
            let payload = PutPayload::from_iter([header, slice(0, payload_len)]);
            self.store
                .put(&path, payload)
                .await
                .map_err(|e| self.err(&path, "uploading the record", e))?;
            self.make_durable(&path, "making the record object durable")?;
            return Ok(total as u64);
        }
        let Some(mp) = self.multipart.clone() else {
            return self
                .put_record_streaming(&path, header, slice, payload_len, part_bytes, parallel)
                .await;
        };
        if let Some(j) = journal {
            // Before the upload exists: a kill between its creation and the
            // next write is at least known (FORMAT.md §2, `UPLOAD`).
            write_journal(j, &path, None).map_err(|e| self.local_err(&path, j, e))?;
        }
        let id = mp
            .create_multipart(&path)
            .await
            .map_err(|e| self.err(&path, "starting a multipart upload", e))?;
        if let Some(j) = journal {
            write_journal(j, &path, Some(&id)).map_err(|e| self.local_err(&path, j, e))?;
        }
        let mut parts = tokio::task::JoinSet::new();
        let mut done: Vec<Option<object_store::multipart::PartId>> = Vec::new();
        let mut failure = None;
        let mut start = 0usize;
        let mut first = Some(header);
        let mut index = 0usize;
        while start < payload_len && failure.is_none() {
            let room = part_bytes - first.as_ref().map_or(0, |b| b.len());
            let end = (start + room).min(payload_len);
            let payload = match first.take() {
                Some(h) => PutPayload::from_iter([h, slice(start, end)]),
                None => PutPayload::from(slice(start, end)),
            };
            start = end;
            let (mp, path, id) = (Arc::clone(&mp), path.clone(), id.clone());
            let i = index;
            parts.spawn(async move { (i, mp.put_part(&path, &id, i, payload).await) });
            index += 1;
            done.push(None);
            while parts.len() >= parallel.max(1) {
                match parts.join_next().await {
                    Some(Ok((i, Ok(part)))) => done[i] = Some(part),
                    Some(Ok((_, Err(e)))) => failure = Some(e),
                    _ => {}
                }
            }
        }
        while let Some(r) = parts.join_next().await {
            match r {
                Ok((i, Ok(part))) => done[i] = Some(part),
                Ok((_, Err(e))) => {
                    failure.get_or_insert(e);
                }
                Err(_) => {}
            }
        }
        let result = match failure {
            Some(e) => Err(self.err(&path, "uploading a part", e)),
            None if done.iter().any(Option::is_none) => Err(RemoteError {
                url: self.object_url(&path),
                what: "uploading a part".into(),
                cause: Cause::Other,
                detail: "a part's task ended without a result".into(),
            }),
            None => mp
                .complete_multipart(&path, &id, done.into_iter().flatten().collect())
                .await
                .map(|_| ())
                .map_err(|e| self.err(&path, "completing the multipart upload", e)),
        };
        if result.is_err() {
            // Best effort; a failed abort stays remembered for the next start.
            if mp.abort_multipart(&path, &id).await.is_err() {
                return result.map(|_| total as u64);
            }
        }
        if let Some(j) = journal {
            let _ = std::fs::remove_file(j);
        }
        result.map(|_| total as u64)
    }

    /// A multipart upload through the generic writer (stores without
    /// [`object_store::multipart::MultipartStore`]: `file://`).
    async fn put_record_streaming(
        &self,
        path: &Path,
        header: Bytes,
        slice: impl Fn(usize, usize) -> Bytes,
        payload_len: usize,
        part_bytes: usize,
        parallel: usize,
    ) -> Result<u64, RemoteError> {
        let total = PAGE as usize + payload_len;
        let mut upload = self
            .store
            .put_multipart(path)
            .await
            .map_err(|e| self.err(path, "starting a multipart upload", e))?;
        let mut parts = tokio::task::JoinSet::new();
        let mut failure = None;
        let mut start = 0usize;
        let mut first = Some(header);
        while start < payload_len && failure.is_none() {
            let room = part_bytes - first.as_ref().map_or(0, |b| b.len());
            let end = (start + room).min(payload_len);
            let payload = match first.take() {
                Some(h) => PutPayload::from_iter([h, slice(start, end)]),
                None => PutPayload::from(slice(start, end)),
            };
            start = end;
            parts.spawn(upload.put_part(payload));
            while parts.len() >= parallel.max(1) {
                if let Some(Ok(Err(e))) = parts.join_next().await {
                    failure = Some(e);
                }
            }
        }
        while let Some(r) = parts.join_next().await {
            if let Ok(Err(e)) = r {
                failure.get_or_insert(e);
            }
        }
        if let Some(e) = failure {
            let _ = upload.abort().await;
            return Err(self.err(path, "uploading a part", e));
        }
        if let Err(e) = upload.complete().await {
            let _ = upload.abort().await;
            return Err(self.err(path, "completing the multipart upload", e));
        }
        self.make_durable(path, "making the record object durable")?;
        Ok(total as u64)
    }

    fn local_err(&self, path: &Path, file: &std::path::Path, e: std::io::Error) -> RemoteError {
        RemoteError {
            url: self.object_url(path),
            what: format!("remembering the multipart upload in {}", file.display()),
            cause: Cause::Other,
            detail: e.to_string(),
        }
    }

    /// At start: aborts the multipart upload a killed run left unfinished,
    /// if its `journal` file names one, and removes the file. Says what it
    /// did; where the store cannot abort (it answers NotImplemented) or the
    /// upload id was never learnt, the parts stay, and the warning points
    /// to the `AbortIncompleteMultipartUpload` lifecycle rule.
    pub async fn abort_remembered_upload(&self, journal: &std::path::Path) {
        let Some((object, id)) = read_journal(journal) else {
            return;
        };
        let path = Path::from(object.as_str());
        let url = self.object_url(&path);
        match (id, &self.multipart) {
            (Some(id), Some(mp)) => match mp.abort_multipart(&path, &id).await {
                Ok(()) => {
                    tracing::info!(object = %url, upload_id = %id, "aborted the incomplete multipart upload of a killed run (its parts are deleted)")
                }
                Err(object_store::Error::NotFound { .. }) => {
                    tracing::info!(object = %url, upload_id = %id, "the multipart upload of a killed run is already gone")
                }
                Err(
                    e @ (object_store::Error::NotImplemented { .. }
                    | object_store::Error::NotSupported { .. }),
                ) => {
                    tracing::warn!(object = %url, upload_id = %id, error = %error_text(&e), "the store cannot abort the incomplete multipart upload of a killed run (NotImplemented): its parts stay until an AbortIncompleteMultipartUpload lifecycle rule removes them (README, Replication)")
                }
                Err(e) => {
                    let detail = error_text(&e);
                    if detail.contains("NoSuchUpload") {
                        tracing::info!(object = %url, upload_id = %id, "the multipart upload of a killed run is already gone");
                    } else {
                        // Once: the next multipart upload reuses the file.
                        tracing::warn!(object = %url, upload_id = %id, error = %detail, "could not abort the incomplete multipart upload of a killed run (the server may have completed or forgotten it); any parts left stay until an AbortIncompleteMultipartUpload lifecycle rule removes them (README, Replication)");
                    }
                }
            },
            (Some(id), None) => {
                tracing::warn!(object = %url, upload_id = %id, "this store has no multipart abort; the partial upload of a killed run stays")
            }
            (None, _) => {
                tracing::warn!(object = %url, "a run was killed while starting a multipart upload: if the store created it, its parts stay until an AbortIncompleteMultipartUpload lifecycle rule removes them (README, Replication)")
            }
        }
        let _ = std::fs::remove_file(journal);
    }

    /// The record objects of log `log_id`, by sequence. Objects whose names
    /// are not record names are returned in the second list.
    pub async fn list_records(
        &self,
        log_id: u128,
    ) -> Result<(Vec<RemoteObject>, Vec<Path>), RemoteError> {
        let dir = layout::log_path(self.prefix(), log_id);
        let mut stream = self.store.list(Some(&dir));
        let mut records = Vec::new();
        let mut others = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| self.err(&dir, "listing the record objects", e))?;
            match meta.location.filename().and_then(layout::parse_record_name) {
                Some((sequence, epoch)) => records.push(RemoteObject {
                    sequence,
                    epoch,
                    path: meta.location,
                    size: meta.size,
                }),
                None => others.push(meta.location),
            }
        }
        records.sort_by_key(|r| r.sequence);
        Ok((records, others))
    }

    /// The record objects of every log under the prefix (`logs/<id>/`), by
    /// log id then sequence: what a restore falls back on when the pointer
    /// is missing or damaged.
    pub async fn list_all_records(&self) -> Result<Vec<(u128, RemoteObject)>, RemoteError> {
        let dir = self.prefix().clone().join(layout::LOGS_DIR);
        let mut stream = self.store.list(Some(&dir));
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| self.err(&dir, "listing the record objects", e))?;
            let mut parts = meta.location.prefix_match(&dir).into_iter().flatten();
            let (Some(id), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let id = id.as_ref();
            let Some(log_id) = (id.len() == 32)
                .then(|| u128::from_str_radix(id, 16).ok())
                .flatten()
            else {
                continue;
            };
            if let Some((sequence, epoch)) = layout::parse_record_name(name.as_ref()) {
                out.push((
                    log_id,
                    RemoteObject {
                        sequence,
                        epoch,
                        path: meta.location.clone(),
                        size: meta.size,
                    },
                ));
            }
        }
        out.sort_by_key(|(id, r)| (*id, r.sequence));
        Ok(out)
    }

    /// Reads and checks only the header of a record object.
    pub async fn fetch_header(&self, path: &Path) -> Result<RecordHeader, RemoteError> {
        let bytes = self
            .store
            .get_range(path, 0..RECORD_HEADER_LEN as u64)
            .await
            .map_err(|e| self.err(path, "reading the record header", e))?;
        RecordHeader::decode(&bytes).map_err(|e| self.damaged(path, format!("record header: {e}")))
    }

    /// Downloads a record object into an unnamed temporary file in
    /// `tmp_dir`, maps it and validates it exactly as local recovery does
    /// (header checksum, payload checksum, rkyv validation, schema).
    pub async fn fetch_record(
        &self,
        path: &Path,
        tmp_dir: &std::path::Path,
    ) -> Result<FetchedRecord, RemoteError> {
        let got = self
            .store
            .get(path)
            .await
            .map_err(|e| self.err(path, "downloading the record", e))?;
        let size = got.meta.size;
        if size < PAGE {
            return Err(self.damaged(
                path,
                format!("object is {size} bytes, shorter than a header page"),
            ));
        }
        let local_err = |what: &str, e: std::io::Error| RemoteError {
            url: self.object_url(path),
            what: format!("{what} in {}", tmp_dir.display()),
            cause: Cause::Other,
            detail: e.to_string(),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(crate::wal::format::DOWNLOAD_PREFIX)
            .tempfile_in(tmp_dir)
            .map_err(|e| local_err("creating a temporary file", e))?;
        let mut stream = got.into_stream();
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.err(path, "downloading the record", e))?;
            written += chunk.len() as u64;
            tmp.write_all(&chunk)
                .map_err(|e| local_err("writing a temporary file", e))?;
        }
        tmp.flush()
            .map_err(|e| local_err("writing a temporary file", e))?;
        // On the disk before it is checked: pages that are written back can
        // be dropped from the cache and read again, and a failed write-back
        // must surface here, not as different bytes at the next read.
        tmp.as_file()
            .sync_data()
            .map_err(|e| local_err("fsync of a temporary file", e))?;
        if written != size {
            return Err(self.damaged(
                path,
                format!("downloaded {written} bytes, the object is {size}"),
            ));
        }
        let mut page = vec![0u8; PAGE as usize];
        std::fs::File::open(tmp.path())
            .and_then(|mut f| f.read_exact(&mut page))
            .map_err(|e| local_err("reading a temporary file", e))?;
        let header = RecordHeader::decode(&page[..RECORD_HEADER_LEN])
            .map_err(|e| self.damaged(path, format!("record header: {e}")))?;
        // The rest of the header page is zero in every record object
        // (FORMAT.md §7.3): no byte of the object goes unchecked.
        if let Some(at) = page[RECORD_HEADER_LEN..].iter().position(|b| *b != 0) {
            return Err(self.damaged(
                path,
                format!(
                    "byte {} of the header page is not zero (bytes {RECORD_HEADER_LEN}..{PAGE} are padding)",
                    RECORD_HEADER_LEN + at
                ),
            ));
        }
        if layout::parse_record_name(path.filename().unwrap_or_default())
            != Some((header.sequence, header.epoch))
        {
            return Err(self.damaged(
                path,
                format!(
                    "the header says sequence {} epoch {}, the object's name disagrees",
                    header.sequence, header.epoch
                ),
            ));
        }
        if size != layout::object_bytes(header.payload_len) {
            return Err(self.damaged(
                path,
                format!(
                    "object is {size} bytes, its header says {} (header page + payload)",
                    layout::object_bytes(header.payload_len)
                ),
            ));
        }
        let url = self.object_url(path);
        let record = load_record_copy(tmp.path(), &header, PAGE, std::path::Path::new(&url))
            .map_err(|e| match e {
                WalError::Damaged { reason, .. } => self.damaged(path, reason),
                other => local_err("mapping a temporary file", std::io::Error::other(other)),
            })?;
        // The mapping keeps the bytes; the name goes now.
        drop(tmp);
        Ok(FetchedRecord { record, url })
    }

    /// Deletes an object (a record that retention no longer keeps).
    pub async fn delete(&self, path: &Path) -> Result<(), RemoteError> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(path, "deleting", e)),
        }
    }

    /// The record object `pointer` names.
    pub fn pointer_object(&self, pointer: &Pointer) -> Path {
        pointer.object_path(self.prefix())
    }

    /// Puts raw bytes at a path under the prefix (tests and benchmarks
    /// compare against it).
    pub async fn put_raw(&self, name: &str, payload: PutPayload) -> Result<(), RemoteError> {
        let path = self.prefix().clone().join(name);
        self.store
            .put(&path, payload)
            .await
            .map(|_| ())
            .map_err(|e| self.err(&path, "uploading", e))
    }

    /// For `file://`, the file that holds the object at `path` (to fsync
    /// it); `None` for object stores.
    pub fn local_file(&self, path: &Path) -> Option<std::path::PathBuf> {
        self.local.as_ref()?.path_to_filesystem(path).ok()
    }

    /// The underlying store and the prefix (benchmarks).
    pub fn store(&self) -> (Arc<dyn ObjectStore>, Path) {
        (Arc::clone(&self.store), self.prefix().clone())
    }
}
