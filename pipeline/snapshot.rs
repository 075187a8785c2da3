//! The state format of checkpoints: how a task's state becomes bytes and back.
//!
//! A snapshot opens with a header, `SPST` and the format's version, so that a release meeting a
//! snapshot of a newer format refuses it by name rather than misreading it (new fields would
//! otherwise default silently). Formats 3 and 4 (written now) are a list of named sections,
//! each the CBOR of one part of the task (its clocks, then one section per operator), so that a
//! family added later brings a section of its own and every section is written straight into
//! the one buffer. Formats 1 and 2, and the headerless snapshots before them, were one CBOR
//! value of the whole task; [`read`] hands those back as [`Snapshot::Whole`] for the operators
//! to convert.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The format's name, leading every snapshot.
const MAGIC: &[u8; 4] = b"SPST";

/// The state format this release writes. Raise it when a change to the state would be misread
/// by the previous release, and keep reading the older versions.
pub const VERSION: u8 = 4;

/// The first format of named sections; format 4 packs the dedupe fingerprints, which format 3
/// held as an array (read by the same code).
const FIRST_SECTIONS_VERSION: u8 = 3;

/// The last format that was one CBOR value of the whole task.
const LAST_WHOLE_VERSION: u8 = 2;

/// A snapshot that cannot be written or read back.
#[derive(Debug, thiserror::Error)]
#[error("operator state snapshot: {0}")]
pub struct SnapshotError(String);

impl SnapshotError {
    /// An error saying what is wrong with a snapshot.
    pub fn new(message: impl Into<String>) -> Self {
        SnapshotError(message.into())
    }
}

/// Appends the CBOR of `state` (which keeps map keys that are not strings) to `into`.
///
/// # Errors
/// Only when the state cannot be represented, a programming error.
pub fn write_cbor<T: Serialize + ?Sized>(state: &T, into: &mut Vec<u8>) -> Result<(), SnapshotError> {
    ciborium::into_writer(state, into).map_err(|e| SnapshotError(e.to_string()))
}

/// The CBOR of `state`, on its own.
///
/// # Errors
/// As [`write_cbor`].
pub fn cbor<T: Serialize + ?Sized>(state: &T) -> Result<Vec<u8>, SnapshotError> {
    let mut bytes = Vec::new();
    write_cbor(state, &mut bytes)?;
    Ok(bytes)
}

/// Decodes CBOR written by [`write_cbor`].
///
/// # Errors
/// When the bytes are not the CBOR of a `T`.
pub fn read_cbor<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SnapshotError> {
    ciborium::from_reader(bytes).map_err(|e| SnapshotError(e.to_string()))
}

/// Writes a snapshot section by section.
pub struct SnapshotWriter {
    bytes: Vec<u8>,
}

impl SnapshotWriter {
    /// A snapshot in a buffer of `expected_len` bytes allocated up front (say, the last
    /// snapshot's length and a margin): grown from empty, a snapshot of megabytes leaves a trail
    /// of freed half-size copies that the allocator keeps resident.
    pub fn new(expected_len: usize) -> Self {
        let mut bytes = Vec::with_capacity(expected_len.max(MAGIC.len() + 1));
        bytes.extend_from_slice(MAGIC);
        bytes.push(VERSION);
        SnapshotWriter { bytes }
    }

    /// Appends section `name`, whose body `write` appends to the buffer it is given.
    ///
    /// # Errors
    /// What `write` returns; a name longer than 64 KiB.
    pub fn section(
        &mut self,
        name: &str,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        let name_len = u16::try_from(name.len()).map_err(|_| SnapshotError(format!("section name {name:?}")))?;
        self.bytes.extend_from_slice(&name_len.to_le_bytes());
        self.bytes.extend_from_slice(name.as_bytes());
        let len_at = self.bytes.len();
        self.bytes.extend_from_slice(&0u64.to_le_bytes());
        write(&mut self.bytes)?;
        let body_len = (self.bytes.len() - len_at - 8) as u64;
        self.bytes[len_at..len_at + 8].copy_from_slice(&body_len.to_le_bytes());
        Ok(())
    }

    /// Appends section `name` holding the CBOR of `state`.
    ///
    /// # Errors
    /// As [`write_cbor`].
    pub fn cbor_section<T: Serialize + ?Sized>(&mut self, name: &str, state: &T) -> Result<(), SnapshotError> {
        self.section(name, |into| write_cbor(state, into))
    }

    /// The snapshot's bytes.
    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

/// A snapshot as read: its sections, or the whole task of an earlier format.
#[derive(Debug, PartialEq, Eq)]
pub enum Snapshot<'a> {
    /// Formats 3 and 4: sections by name, in the order written.
    Sections(Vec<(&'a str, &'a [u8])>),
    /// Formats 1 and 2, and headerless snapshots: the CBOR of the whole task.
    Whole(&'a [u8]),
}

/// Splits a snapshot into its sections, or hands back the CBOR of an earlier format.
///
/// # Errors
/// [`SnapshotError`] when the bytes are of a newer format than this release reads, or
/// truncated.
pub fn read(bytes: &[u8]) -> Result<Snapshot<'_>, SnapshotError> {
    // A headerless snapshot is bare CBOR, a map or an array, which never starts with `SPST`.
    let Some(after_magic) = bytes.strip_prefix(MAGIC) else { return Ok(Snapshot::Whole(bytes)) };
    match after_magic {
        [1..=LAST_WHOLE_VERSION, cbor @ ..] => Ok(Snapshot::Whole(cbor)),
        [FIRST_SECTIONS_VERSION..=VERSION, sections @ ..] => read_sections(sections).map(Snapshot::Sections),
        [version, ..] => Err(SnapshotError(format!(
            "written in state format {version}, but this release reads format {VERSION} and older; \
             run a release that knows format {version}"
        ))),
        [] => Err(SnapshotError("truncated after its header".to_owned())),
    }
}

fn read_sections(mut rest: &[u8]) -> Result<Vec<(&str, &[u8])>, SnapshotError> {
    let truncated = || SnapshotError("truncated section".to_owned());
    let mut sections = Vec::new();
    while !rest.is_empty() {
        let (len, after) = rest.split_first_chunk::<2>().ok_or_else(truncated)?;
        let (name, after) = after.split_at_checked(usize::from(u16::from_le_bytes(*len))).ok_or_else(truncated)?;
        let name = std::str::from_utf8(name).map_err(|_| SnapshotError("a section name is not UTF-8".to_owned()))?;
        let (len, after) = after.split_first_chunk::<8>().ok_or_else(truncated)?;
        let len = usize::try_from(u64::from_le_bytes(*len)).map_err(|_| truncated())?;
        let (body, after) = after.split_at_checked(len).ok_or_else(truncated)?;
        sections.push((name, body));
        rest = after;
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn state() -> BTreeMap<String, u32> {
        BTreeMap::from([("a".to_owned(), 1)])
    }

    #[test]
    fn sections_read_back_as_written_whatever_the_buffer_allocated_up_front() {
        for expected_len in [0, 3, 1 << 16] {
            let mut writer = SnapshotWriter::new(expected_len);
            writer.cbor_section("clocks", &state()).expect("encodes");
            writer.section("empty", |_| Ok(())).expect("an empty body");
            let bytes = writer.finish();
            assert_eq!(&bytes[..5], b"SPST\x04");
            let Snapshot::Sections(sections) = read(&bytes).expect("reads") else { panic!("sections") };
            assert_eq!(sections.iter().map(|(name, _)| *name).collect::<Vec<_>>(), ["clocks", "empty"]);
            assert_eq!(read_cbor::<BTreeMap<String, u32>>(sections[0].1).expect("decodes"), state());
            assert!(sections[1].1.is_empty());
        }
    }

    #[test]
    fn earlier_formats_come_back_whole_and_a_newer_one_is_refused_by_name() {
        let mut cbor = Vec::new();
        write_cbor(&state(), &mut cbor).expect("encodes");
        for version in [1u8, 2] {
            let bytes = [&MAGIC[..], &[version], &cbor].concat();
            assert_eq!(read(&bytes).expect("an earlier format"), Snapshot::Whole(&cbor));
        }
        assert_eq!(read(&cbor).expect("a headerless snapshot"), Snapshot::Whole(&cbor));
        let mut three = SnapshotWriter::new(0);
        three.cbor_section("clocks", &state()).expect("encodes");
        let mut bytes = three.finish();
        bytes[MAGIC.len()] = FIRST_SECTIONS_VERSION;
        assert!(matches!(read(&bytes), Ok(Snapshot::Sections(s)) if s.len() == 1), "format 3 reads as sections");
        let newer = [&MAGIC[..], &[VERSION + 1]].concat();
        let error = read(&newer).expect_err("a format from the future").to_string();
        assert!(error.contains("state format 5") && error.contains("reads format 4"), "{error}");
        assert!(read(b"SPST").is_err(), "a header and nothing else");
        let mut cut = SnapshotWriter::new(0);
        cut.cbor_section("clocks", &state()).expect("encodes");
        let bytes = cut.finish();
        assert!(read(&bytes[..bytes.len() - 1]).is_err(), "a section cut short");
    }
}
