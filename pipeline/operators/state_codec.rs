//! Compact binary encoding for the large parts of operator state (a million open orders), so
//! checkpoints stay small and restores fast. Snapshots are CBOR, which writes every field name
//! of every struct; large slabs of one struct type are instead written positionally as one CBOR
//! byte string of zigzag LEB128 varints.

use serde::de::Visitor;
use serde::{Deserializer, Serializer};
use std::fmt;

/// Appends varints to a buffer.
#[derive(Debug, Default)]
pub struct Writer {
    /// The encoded bytes.
    pub bytes: Vec<u8>,
}

impl Writer {
    /// An unsigned integer, 7 bits per byte.
    pub fn u64(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.bytes.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.bytes.push(v as u8);
    }

    /// A signed integer, zigzag-mapped so small magnitudes of either sign stay short.
    pub fn i64(&mut self, v: i64) {
        self.u64(((v << 1) ^ (v >> 63)) as u64);
    }

    /// A length-prefixed string.
    pub fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes.extend_from_slice(s.as_bytes());
    }
}

/// Reads what a [`Writer`] wrote; `None` on truncated or malformed input.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads from the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// See [`Writer::u64`].
    pub fn u64(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for (i, byte) in self.bytes.iter().enumerate().take(10) {
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.bytes = &self.bytes[i + 1..];
                return Some(v);
            }
        }
        None
    }

    /// See [`Writer::i64`].
    pub fn i64(&mut self) -> Option<i64> {
        let v = self.u64()?;
        Some(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A `u16` written with [`Writer::u64`].
    pub fn u16(&mut self) -> Option<u16> {
        u16::try_from(self.u64()?).ok()
    }

    /// A `u32` written with [`Writer::u64`].
    pub fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.u64()?).ok()
    }

    /// See [`Writer::str`].
    pub fn str(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.u64()?).ok()?;
        if len > self.bytes.len() {
            return None;
        }
        let (s, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        std::str::from_utf8(s).ok()
    }
}

/// Writes `bytes` as one byte string (CBOR major type 2), not an array of integers.
pub fn serialize_bytes<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// Reads what [`serialize_bytes`] wrote.
pub fn deserialize_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    struct BytesVisitor;
    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_byte_buf(BytesVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_the_edges() {
        let values = [0, 1, -1, 63, -64, 64, i64::MAX, i64::MIN, 1_794_322_800_000, -1_794_322_800_000];
        let mut w = Writer::default();
        for v in values {
            w.i64(v);
        }
        w.u64(u64::MAX);
        w.str("ord-0000000001\u{1f}u-42");
        let mut r = Reader::new(&w.bytes);
        for v in values {
            assert_eq!(r.i64(), Some(v));
        }
        assert_eq!(r.u64(), Some(u64::MAX));
        assert_eq!(r.str(), Some("ord-0000000001\u{1f}u-42"));
        assert!(r.is_empty());
    }

    #[test]
    fn truncated_input_is_none_not_a_panic() {
        let mut w = Writer::default();
        w.str("abcdef");
        w.u64(1 << 40);
        for cut in 0..w.bytes.len() {
            let mut r = Reader::new(&w.bytes[..cut]);
            assert!(r.str().is_none() || r.u64().is_none(), "cut at {cut}");
        }
    }
}
