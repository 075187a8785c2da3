//! The registry: which operators a build runs, and so which metric families and tables exist.
//! Everything that lists families or tables (task creation and restore, the Parquet sink,
//! compaction, late-event counters, the docs check) reads it, so that a family is registered
//! in one line ([`super::builtin`]).

use super::{Family, Operator, TaskKind};
use crate::event::Stream;
use crate::snapshot::{SnapshotError, read_cbor};
use crate::table::{PIPELINE_TABLES, TableSpec};
use crate::time::TimeSettings;

/// Reads an operator's state back.
type RestoreFn = fn(&[u8]) -> Result<Box<dyn Operator>, SnapshotError>;

/// One registered operator type, as the registry keeps it.
#[derive(Clone, Copy)]
pub struct Registered {
    /// Its snapshot section name ([`Family::NAME`]).
    pub name: &'static str,
    /// The kind of task it runs in.
    pub task: TaskKind,
    /// The metric families it computes, each with the stream it counts.
    pub families: &'static [(&'static str, Stream)],
    /// The tables it writes.
    pub tables: &'static [TableSpec],
    create: fn(i32, &TimeSettings) -> Box<dyn Operator>,
    restore: RestoreFn,
}

impl Registered {
    /// The registration of `F`.
    pub fn of<F: Family>() -> Self {
        Registered {
            name: F::NAME,
            task: F::TASK,
            families: F::FAMILIES,
            tables: F::TABLES,
            create: |partition, time| Box::new(F::new(partition, time)),
            restore: |bytes| {
                let mut state: F = read_cbor(bytes)?;
                state.restored();
                Ok(Box::new(state))
            },
        }
    }

    /// Fresh state for `partition`.
    pub fn create(&self, partition: i32, time: &TimeSettings) -> Box<dyn Operator> {
        (self.create)(partition, time)
    }

    /// State written by [`Operator::write_state`].
    ///
    /// # Errors
    /// When the bytes are not this operator's state.
    pub fn restore(&self, bytes: &[u8]) -> Result<Box<dyn Operator>, SnapshotError> {
        (self.restore)(bytes)
    }
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered").field("name", &self.name).field("task", &self.task).finish()
    }
}

/// The operators a pipeline runs, in the order each event meets them.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    operators: Vec<Registered>,
}

impl Registry {
    /// This registry with `F` added after the operators already in it.
    ///
    /// # Panics
    /// When an operator of the same name, a family of the same name or a table of the same
    /// name is registered already: two would overwrite each other's state or files.
    #[must_use]
    pub fn with<F: Family>(mut self) -> Self {
        let new = Registered::of::<F>();
        for existing in &self.operators {
            assert!(existing.name != new.name, "operator {} is registered twice", new.name);
            for (family, _) in new.families {
                assert!(existing.families.iter().all(|(f, _)| f != family), "family {family} is registered twice");
            }
        }
        for table in new.tables {
            assert!(self.table(table.name).is_none(), "table {} is registered twice", table.name);
        }
        self.operators.push(new);
        self
    }

    /// Every registered operator, in order.
    pub fn operators(&self) -> &[Registered] {
        &self.operators
    }

    /// The operators that run in tasks of `kind`, in order.
    pub fn of_kind(&self, kind: TaskKind) -> impl Iterator<Item = &Registered> {
        self.operators.iter().filter(move |r| r.task == kind)
    }

    /// Every metric family, with the stream whose events it counts.
    pub fn families(&self) -> impl Iterator<Item = (&'static str, Stream)> + '_ {
        self.operators.iter().flat_map(|r| r.families.iter().copied())
    }

    /// Every table written: the operators' in registry order, then the pipeline's own.
    pub fn tables(&self) -> Vec<TableSpec> {
        self.operators.iter().flat_map(|r| r.tables.iter().copied()).chain(PIPELINE_TABLES).collect()
    }

    /// The table named `name`.
    pub fn table(&self, name: &str) -> Option<TableSpec> {
        self.tables().into_iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    /// The rows of a `| column | type | meaning |` table under `## name` in docs/tables.md.
    fn documented_columns<'a>(docs: &'a str, table: &str) -> Option<Vec<&'a str>> {
        let section = docs.split("\n## ").find(|s| s.lines().next() == Some(table))?;
        let columns = section
            .lines()
            .skip_while(|l| !l.starts_with("| column |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| l.split('|').nth(1).map(str::trim))
            .collect();
        Some(columns)
    }

    #[test]
    fn every_table_is_documented_column_by_column_in_the_order_written() {
        let docs = include_str!("../../docs/tables.md");
        for table in crate::operators::builtin().tables() {
            let schema = table.schema().expect("a schema");
            let written: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            let documented =
                documented_columns(docs, table.name).unwrap_or_else(|| panic!("no section {}", table.docs()));
            assert_eq!(documented, written, "{}", table.docs());
        }
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn an_operator_registered_twice_is_refused() {
        let _ = crate::operators::builtin().with::<crate::operators::Clickstream>();
    }
}
