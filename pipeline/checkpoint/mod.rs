//! Checkpoints: the one atomic commit point of exactly-once output.
//!
//! A checkpoint of an instance is a manifest, written in one `put`, that lists for each task it
//! owns the state snapshot and the source offsets it covers, the Parquet files written since
//! the previous checkpoint, and per table the time through which its hours are complete.
//! Nothing else is ever the commit point:
//!
//! 1. buffered rows are written as Parquet files no reader sees yet (Delta: in their partition,
//!    not in the log; plain Parquet: under `_staging/`) and each changed task's state under
//!    `_checkpoints/state/TASK/EPOCH.cbor` (see [`crate::snapshot`]); harmless if a crash
//!    follows;
//! 2. the manifest is written under `_checkpoints/manifests/`: from here on the checkpoint
//!    exists, whatever happens next;
//! 3. the files are published, idempotently: one Delta commit per table carrying the
//!    transaction (instance, checkpoint), which a repeat finds and skips (plain Parquet: a
//!    rename into the partition); a crash here is repaired by the restarted instance, another
//!    one, or `storepulse compact` ([`CheckpointStore::tidy`]);
//! 4. the offsets are committed to Kafka (by the runtime), for lag monitoring only: on restart
//!    a task resumes from its checkpoint's offsets, not from Kafka's; then superseded manifests
//!    and state go.
//!
//! A task's epoch grows by one at each checkpoint of it, whichever instance owns it, so the
//! newest checkpoint of a task is the one with the highest epoch in any manifest: that is how
//! state moves with its partition between instances of a consumer group. Everything lives on
//! the output storage (local directory or S3), beside the tables, under prefixes readers skip.
//!
//! [`Coordinator`] runs steps 1 to 3 over tasks given as data (names, offsets, snapshot bytes);
//! [`CheckpointStore`] reads and writes the objects.

#![deny(clippy::too_many_lines)]

mod coordinator;
mod store;

pub use coordinator::{
    CheckpointFailure, Commit, Coordinator, Publication, PublishError, StateBytes, TaskEntry, publish_committed,
};
pub use store::{
    CHECKPOINTS, Catalog, CheckpointError, CheckpointStore, Manifest, Republish, TaskCheckpoint, TidyReport,
};
