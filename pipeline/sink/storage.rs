//! Where tables live: a local directory or S3-compatible object storage, through `object_store`.
//!
//! The pipeline thread is synchronous, so [`Storage`] owns a small current-thread runtime and
//! blocks on each call. Keys are `/`-separated and relative to the location's root.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Root of the tables: a local directory, or `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory on the local file system (created if missing).
    Local(PathBuf),
    /// A bucket and key prefix on S3 or an S3-compatible server. Endpoint, region and
    /// credentials come from the usual `AWS_*` environment variables (`AWS_ENDPOINT`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `AWS_ALLOW_HTTP`).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix without leading or trailing `/` (may be empty).
        prefix: String,
    },
}

impl Location {
    /// Parses a path or an `s3://bucket/prefix` URL.
    ///
    /// # Errors
    /// An unsupported URL scheme or an S3 URL without a bucket.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix("s3://").or_else(|| text.strip_prefix("s3a://")) {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("{text:?} names no bucket (expected s3://bucket/prefix)"));
            }
            return Ok(Location::S3 { bucket: bucket.to_owned(), prefix: prefix.trim_matches('/').to_owned() });
        }
        if let Some(path) = text.strip_prefix("file://") {
            return Ok(Location::Local(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(format!("unsupported storage scheme {scheme:?} (use a directory or s3://bucket/prefix)"));
        }
        if text.is_empty() {
            return Err("is empty".to_owned());
        }
        Ok(Location::Local(PathBuf::from(text)))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// A failed storage operation (after the store's own retries).
#[derive(Debug, thiserror::Error)]
#[error("storage {operation} of {key:?} under {location}: {message}")]
pub struct StorageError {
    /// What was attempted: put, rename, list, get, delete, open.
    pub operation: &'static str,
    /// Key involved, relative to the root.
    pub key: String,
    /// The root.
    pub location: String,
    /// The underlying error.
    pub message: String,
}

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Key relative to the root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, Unix milliseconds.
    pub modified_ms: i64,
}

/// Blocking access to a [`Location`]. Clones share the store and its runtime.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    root: StorePath,
    location: Location,
    /// The location as a URL (absolute), for Delta tables beneath it.
    url: url::Url,
    /// The store rooted where `url`'s path starts: `/` locally, the bucket on S3.
    url_store: Arc<dyn ObjectStore>,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl Storage {
    /// Opens `location`; a local directory is created if missing.
    ///
    /// # Errors
    /// When the directory cannot be created, the S3 settings are incomplete, or the runtime
    /// cannot start.
    pub fn open(location: &Location) -> Result<Self, StorageError> {
        let fail = |message: String| StorageError {
            operation: "open",
            key: String::new(),
            location: location.to_string(),
            message,
        };
        type Opened = (Arc<dyn ObjectStore>, StorePath, url::Url, Arc<dyn ObjectStore>);
        let (store, root, url, url_store): Opened = match location {
            Location::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
                let store = LocalFileSystem::new_with_prefix(dir).map_err(|e| fail(e.to_string()))?;
                let absolute = std::fs::canonicalize(dir).map_err(|e| fail(e.to_string()))?;
                let url = url::Url::from_directory_path(&absolute).map_err(|()| fail("not an absolute path".into()))?;
                (Arc::new(store), StorePath::default(), url, Arc::new(LocalFileSystem::new()))
            }
            Location::S3 { bucket, prefix } => {
                // Conditional put (`If-None-Match: *`) is object_store's default for S3; Delta
                // commits rely on it (AWS_CONDITIONAL_PUT=disabled would make them fail).
                let store: Arc<dyn ObjectStore> = Arc::new(
                    AmazonS3Builder::from_env().with_bucket_name(bucket).build().map_err(|e| fail(e.to_string()))?,
                );
                let root = StorePath::parse(prefix).map_err(|e| fail(e.to_string()))?;
                let directory = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
                let url = url::Url::parse(&format!("s3://{bucket}/{directory}")).map_err(|e| fail(e.to_string()))?;
                (Arc::clone(&store), root, url, store)
            }
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("storage")
            .build()
            .map_err(|e| fail(e.to_string()))?;
        Ok(Storage { store, root, location: location.clone(), url, url_store, runtime: Arc::new(runtime) })
    }

    /// The URL of `key` (a directory, ending in `/`) and a store rooted where URL paths start,
    /// for libraries that address objects by URL (the Delta log).
    pub fn url_of(&self, key: &str) -> Result<(url::Url, Arc<dyn ObjectStore>), StorageError> {
        let url = self.url.join(&format!("{}/", key.trim_matches('/'))).map_err(|e| self.error("url", key, e))?;
        Ok((url, Arc::clone(&self.url_store)))
    }

    /// Runs `future` on this storage's runtime, blocking until it completes.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The root this storage writes under.
    pub fn location(&self) -> &Location {
        &self.location
    }

    fn path(&self, key: &str) -> StorePath {
        key.split('/').filter(|part| !part.is_empty()).fold(self.root.clone(), |path, part| path.join(part))
    }

    fn relative(&self, path: &StorePath) -> String {
        let prefix: Vec<_> = self.root.parts().collect();
        path.parts().skip(prefix.len()).map(|part| part.as_ref().to_owned()).collect::<Vec<_>>().join("/")
    }

    fn error(&self, operation: &'static str, key: &str, error: impl fmt::Display) -> StorageError {
        StorageError { operation, key: key.to_owned(), location: self.location.to_string(), message: error.to_string() }
    }

    /// Writes `data` to `key` in one request: readers see all of it or nothing.
    ///
    /// # Errors
    /// When the store refuses or is unreachable after its retries.
    pub fn put(&self, key: &str, data: impl Into<Bytes>) -> Result<(), StorageError> {
        let data: Bytes = data.into();
        let payload = PutPayload::from(data.clone());
        let written = self.runtime.block_on(self.store.put(&self.path(key), payload));
        // A local store writes from a blocking thread. With this reference dropped last, the
        // buffer is freed here, on the thread that allocated it, whose allocator reuses it at
        // once; freed on the writer thread, it would stay resident longer.
        drop(data);
        written.map_err(|e| self.error("put", key, e))?;
        Ok(())
    }

    /// Moves `from` to `to`, replacing `to`. A rename on a local disk; a server-side copy then a
    /// delete on S3, where the copy appears whole.
    ///
    /// # Errors
    /// When `from` is missing or the store fails.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        self.runtime
            .block_on(self.store.rename(&self.path(from), &self.path(to)))
            .map_err(|e| self.error("rename", from, e))
    }

    /// Every object whose key starts with the directory `prefix`, sorted by key.
    ///
    /// # Errors
    /// When the store fails.
    pub fn list(&self, prefix: &str) -> Result<Vec<Entry>, StorageError> {
        let path = self.path(prefix);
        let metas: Vec<_> = self
            .runtime
            .block_on(self.store.list(Some(&path)).try_collect())
            .map_err(|e| self.error("list", prefix, e))?;
        let mut entries: Vec<Entry> = metas
            .iter()
            .map(|meta| Entry {
                key: self.relative(&meta.location),
                size: meta.size,
                modified_ms: meta.last_modified.timestamp_millis(),
            })
            .collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(entries)
    }

    /// Reads a whole object.
    ///
    /// # Errors
    /// When it is missing or the store fails.
    pub fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        self.runtime
            .block_on(async { self.store.get(&self.path(key)).await?.bytes().await })
            .map_err(|e| self.error("get", key, e))
    }

    /// Whether `key` exists.
    ///
    /// # Errors
    /// When the store fails for another reason than absence.
    pub fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match self.runtime.block_on(self.store.head(&self.path(key))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error("head", key, e)),
        }
    }

    /// Removes the empty directories under `prefix` on a local disk, where a rename leaves
    /// its source directory behind (object stores have no directories).
    ///
    /// # Errors
    /// When a directory cannot be read.
    pub fn remove_empty_directories(&self, prefix: &str) -> Result<(), StorageError> {
        let Location::Local(root) = &self.location else { return Ok(()) };
        fn prune(dir: &std::path::Path) -> std::io::Result<bool> {
            let mut empty = true;
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                empty &= path.is_dir() && prune(&path)? && std::fs::remove_dir(&path).is_ok();
            }
            Ok(empty)
        }
        let dir = root.join(prefix);
        match prune(&dir) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.error("prune", prefix, e)),
        }
    }

    /// Deletes `key`; deleting a missing key succeeds.
    ///
    /// # Errors
    /// When the store fails.
    pub fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.runtime.block_on(self.store.delete(&self.path(key))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("delete", key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_directories_and_s3_urls() {
        assert_eq!(Location::parse("./out"), Ok(Location::Local(PathBuf::from("./out"))));
        assert_eq!(Location::parse("file:///data/lake"), Ok(Location::Local(PathBuf::from("/data/lake"))));
        assert_eq!(
            Location::parse("s3://shop-lake/storepulse/prod/"),
            Ok(Location::S3 { bucket: "shop-lake".into(), prefix: "storepulse/prod".into() })
        );
        assert_eq!(
            Location::parse("s3://shop-lake"),
            Ok(Location::S3 { bucket: "shop-lake".into(), prefix: String::new() })
        );
        assert!(Location::parse("s3:///prefix").expect_err("no bucket").contains("no bucket"));
        assert!(Location::parse("gs://bucket").expect_err("unsupported").contains("\"gs\""));
    }

    #[test]
    fn local_storage_puts_lists_renames_and_deletes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(&Location::Local(dir.path().join("lake"))).expect("open");
        storage.put("_staging/a.parquet", b"abc".to_vec()).expect("put");
        storage.rename("_staging/a.parquet", "funnel/dt=2026-11-11/hour=00/a.parquet").expect("rename");
        let listed = storage.list("funnel").expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].key.as_str(), listed[0].size), ("funnel/dt=2026-11-11/hour=00/a.parquet", 3));
        assert!(listed[0].modified_ms > 1_700_000_000_000, "a modification time: {}", listed[0].modified_ms);
        assert!(storage.list("_staging").expect("list").is_empty());
        assert_eq!(storage.get("funnel/dt=2026-11-11/hour=00/a.parquet").expect("get").as_ref(), b"abc");
        storage.delete("funnel/dt=2026-11-11/hour=00/a.parquet").expect("delete");
        storage.delete("funnel/dt=2026-11-11/hour=00/a.parquet").expect("deleting twice is fine");
        assert!(!storage.exists("funnel/dt=2026-11-11/hour=00/a.parquet").expect("head"));
    }
}
