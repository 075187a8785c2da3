//! Rows of any tables, held together: what operators produce and what waits for a checkpoint.
//! Each table's rows stay in a `Vec` of their own type; only the container is type-erased, so
//! that the runtime and the Parquet sink handle a family added later without knowing its type.

use super::{TableRow, TableSpec, all_nullable};
use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use std::any::{Any, TypeId};
use std::ops::Range;

/// The rows of one table, whatever its row type.
pub trait RowBuffer: Send {
    /// The table.
    fn spec(&self) -> TableSpec;
    /// Rows held.
    fn len(&self) -> usize;
    /// Whether it holds no rows.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Drops every row, keeping the allocation.
    fn clear(&mut self);
    /// Orders the rows by `group_of(partition time)`, keeping arrival order within a group, and
    /// returns each group's key and range.
    fn group_by(&mut self, group_of: &dyn Fn(i64) -> i64) -> Vec<(i64, Range<usize>)>;
    /// The rows of `range` as record batches of at most `chunk` rows, made one at a time, every
    /// column nullable.
    fn batches(
        &self,
        range: Range<usize>,
        chunk: usize,
    ) -> Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + '_>;
    /// Keeps only the rows whose group is in `groups`.
    fn retain_groups(&mut self, group_of: &dyn Fn(i64) -> i64, groups: &[i64]);
    /// Moves every row to the end of the same table's buffer in `into`.
    fn move_into(&mut self, into: &mut Rows);
    /// For downcasting to `Vec<R>`.
    fn as_any(&self) -> &dyn Any;
    /// For downcasting to `Vec<R>`.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<R: TableRow> RowBuffer for Vec<R> {
    fn spec(&self) -> TableSpec {
        TableSpec::of::<R>()
    }
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn clear(&mut self) {
        Vec::clear(self);
    }
    fn group_by(&mut self, group_of: &dyn Fn(i64) -> i64) -> Vec<(i64, Range<usize>)> {
        let key = |row: &R| group_of(row.partition_time());
        // Usually every row is of one group; across a group's end, a stable sort keeps each
        // group's rows in arrival order.
        if self.windows(2).any(|pair| key(&pair[0]) != key(&pair[1])) {
            self.sort_by_key(key);
        }
        let mut groups = Vec::new();
        let mut start = 0;
        while let Some(first) = self.get(start) {
            let group = key(first);
            let end = start + self[start..].partition_point(|row| key(row) == group);
            groups.push((group, start..end));
            start = end;
        }
        groups
    }
    fn batches(
        &self,
        range: Range<usize>,
        chunk: usize,
    ) -> Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + '_> {
        Box::new(self[range].chunks(chunk.max(1)).map(|rows| R::to_batch(rows).and_then(all_nullable)))
    }
    fn retain_groups(&mut self, group_of: &dyn Fn(i64) -> i64, groups: &[i64]) {
        self.retain(|row| groups.contains(&group_of(row.partition_time())));
    }
    fn move_into(&mut self, into: &mut Rows) {
        if !Vec::is_empty(self) {
            into.table::<R>().append(self);
        }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Rows of any number of tables, each in the order it was added.
#[derive(Default)]
pub struct Rows {
    tables: Vec<(TypeId, Box<dyn RowBuffer>)>,
    /// Whether a buffer may hold rows. Most calls into a task close nothing, and asking an
    /// untouched set whether it is empty, or clearing it, then costs no call per table.
    touched: bool,
}

impl Rows {
    /// The buffer of `R`'s table, made on first use.
    pub fn table<R: TableRow>(&mut self) -> &mut Vec<R> {
        self.touched = true;
        let id = TypeId::of::<R>();
        let at = match self.tables.iter().position(|(t, _)| *t == id) {
            Some(at) => at,
            None => {
                self.tables.push((id, Box::new(Vec::<R>::new())));
                self.tables.len() - 1
            }
        };
        // The buffer stored under `R`'s type id is a `Vec<R>`.
        self.tables[at].1.as_any_mut().downcast_mut::<Vec<R>>().unwrap_or_else(|| unreachable!("keyed by type"))
    }

    /// Adds a row to its table.
    pub fn push<R: TableRow>(&mut self, row: R) {
        self.table::<R>().push(row);
    }

    /// Adds rows to their table.
    pub fn extend<R: TableRow>(&mut self, rows: impl IntoIterator<Item = R>) {
        let mut rows = rows.into_iter().peekable();
        if rows.peek().is_some() {
            self.table::<R>().extend(rows);
        }
    }

    /// The rows of `R`'s table held.
    pub fn of<R: TableRow>(&self) -> &[R] {
        if !self.touched {
            return &[];
        }
        let id = TypeId::of::<R>();
        self.tables
            .iter()
            .find(|(t, _)| *t == id)
            .and_then(|(_, buffer)| buffer.as_any().downcast_ref::<Vec<R>>())
            .map_or(&[], Vec::as_slice)
    }

    /// Rows held, all tables.
    pub fn len(&self) -> usize {
        if !self.touched {
            return 0;
        }
        self.tables.iter().map(|(_, buffer)| buffer.len()).sum()
    }

    /// Whether no table holds a row.
    pub fn is_empty(&self) -> bool {
        !self.touched || self.tables.iter().all(|(_, buffer)| buffer.is_empty())
    }

    /// Drops every row, keeping the allocations.
    pub fn clear(&mut self) {
        if self.touched {
            for (_, buffer) in &mut self.tables {
                buffer.clear();
            }
            self.touched = false;
        }
    }

    /// Moves every row of `other` to the end of its table here.
    pub fn append(&mut self, other: &mut Rows) {
        if other.touched {
            for (_, buffer) in &mut other.tables {
                buffer.move_into(self);
            }
            other.touched = false;
        }
    }

    /// Each table's buffer, in the order the tables were first used.
    pub fn buffers_mut(&mut self) -> impl Iterator<Item = &mut dyn RowBuffer> {
        self.touched = true;
        self.tables.iter_mut().map(|(_, buffer)| &mut **buffer as &mut dyn RowBuffer)
    }
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.tables.iter().map(|(_, buffer)| (buffer.spec().name, buffer.len()))).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{DeadLetterRow, LateEventRow};

    fn dead_letter(rejected_at: i64) -> DeadLetterRow {
        DeadLetterRow {
            rejected_at,
            topic: "orders".into(),
            partition: 0,
            offset: rejected_at,
            key: None,
            payload: Vec::new(),
            payload_length: 0,
            payload_sha256: String::new(),
            reason: "malformed",
            detail: String::new(),
        }
    }

    #[test]
    fn rows_keep_each_tables_order_and_move_as_a_whole() {
        let mut rows = Rows::default();
        rows.extend([dead_letter(3), dead_letter(1)]);
        rows.push(dead_letter(2));
        assert_eq!(rows.of::<DeadLetterRow>().iter().map(|r| r.offset).collect::<Vec<_>>(), [3, 1, 2]);
        assert!(rows.of::<LateEventRow>().is_empty());
        let mut into = Rows::default();
        into.push(dead_letter(0));
        into.append(&mut rows);
        assert!(rows.is_empty());
        assert_eq!(into.len(), 4);
        assert_eq!(into.of::<DeadLetterRow>().iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 3, 1, 2]);
    }

    #[test]
    fn groups_are_ranges_in_key_order_with_arrival_order_inside() {
        let mut rows: Vec<DeadLetterRow> = [5, 1, 6, 2, 7].map(dead_letter).to_vec();
        let tens = |t: i64| t / 5;
        let groups = RowBuffer::group_by(&mut rows, &tens);
        assert_eq!(groups, [(0, 0..2), (1, 2..5)]);
        assert_eq!(rows.iter().map(|r| r.offset).collect::<Vec<_>>(), [1, 2, 5, 6, 7]);
        let batches: Vec<RecordBatch> = rows.batches(2..5, 2).collect::<Result<_, _>>().expect("batches");
        assert_eq!(batches.iter().map(RecordBatch::num_rows).collect::<Vec<_>>(), [2, 1]);
        rows.retain_groups(&tens, &[0]);
        assert_eq!(rows.len(), 2);
    }
}
