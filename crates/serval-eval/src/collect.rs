//! Every input and output element of a model's log rows, collected column by column.
//!
//! A tensor column of the typed table becomes one profile column per element: a scalar keeps
//! the tensor's name, a list element is `name[i]` (`features[3]`, `probabilities[1]`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, ListArray, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Float64Type};
use serde::Serialize;
use serval_batch::prediction_log::TensorColumn;

use crate::EvalError;
use crate::profile::{ColumnCollector, ColumnKind, ColumnProfile};

/// Float tensors are compared as numbers; class ids, text and booleans by frequency.
pub(crate) fn kind_of(data_type: &DataType) -> ColumnKind {
    let item = match data_type {
        DataType::List(f) | DataType::FixedSizeList(f, _) | DataType::LargeList(f) => f.data_type(),
        other => other,
    };
    if item.is_floating() {
        ColumnKind::Numerical
    } else {
        ColumnKind::Categorical
    }
}

/// `array` as `to` (Arrow's cast), failing as the query engine does.
pub(crate) fn cast_to(array: &ArrayRef, to: &DataType) -> Result<ArrayRef, EvalError> {
    Ok(cast(array, to).map_err(datafusion::error::DataFusionError::from)?)
}

/// A batch's tensor column, cast once for every window that reads it.
pub(crate) enum Prepared {
    Numbers(Float64Array),
    Texts(StringArray),
    NumberLists(ListArray),
    TextLists(ListArray),
}

impl Prepared {
    pub(crate) fn of(array: &ArrayRef) -> Result<Prepared, EvalError> {
        let list_of = |item: DataType| DataType::List(Arc::new(Field::new_list_field(item, true)));
        let is_list = matches!(
            array.data_type(),
            DataType::List(_) | DataType::FixedSizeList(..) | DataType::LargeList(_)
        );
        let text = matches!(kind_of(array.data_type()), ColumnKind::Categorical)
            && !is_numeric_item(array.data_type());
        Ok(match (is_list, text) {
            (false, false) => {
                Prepared::Numbers(cast_to(array, &DataType::Float64)?.as_primitive().clone())
            }
            (false, true) => {
                Prepared::Texts(cast_to(array, &DataType::Utf8)?.as_string::<i32>().clone())
            }
            (true, false) => Prepared::NumberLists(
                cast_to(array, &list_of(DataType::Float64))?
                    .as_list::<i32>()
                    .clone(),
            ),
            (true, true) => Prepared::TextLists(
                cast_to(array, &list_of(DataType::Utf8))?
                    .as_list::<i32>()
                    .clone(),
            ),
        })
    }
}

/// Integers are categorical but read as numbers (their text is written without a fraction).
fn is_numeric_item(data_type: &DataType) -> bool {
    let item = match data_type {
        DataType::List(f) | DataType::FixedSizeList(f, _) | DataType::LargeList(f) => f.data_type(),
        other => other,
    };
    item.is_numeric()
}

/// Collectors of every element of a model's tensors, or only of those a reference profiles.
pub(crate) struct TensorCollectors {
    tensors: Vec<TensorSlot>,
    capacity: usize,
}

struct TensorSlot {
    name: String,
    kind: ColumnKind,
    list: bool,
    /// By element index; `None` where the reference has no such column.
    elements: Vec<Option<Collected>>,
}

struct Collected {
    name: String,
    collector: ColumnCollector,
    /// Against a reference: its range and, when it counted every category, its categories.
    range: Option<(f64, f64)>,
    known: Option<HashSet<String>>,
    quality: ColumnQuality,
}

/// What was wrong with a column's values in a window, against its reference.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ColumnQuality {
    /// Nulls, NaN and infinities.
    pub missing: u64,
    /// Numbers outside the reference's [min, max].
    pub out_of_range: u64,
    /// Categories the reference never had.
    pub unseen: u64,
    /// One value only, where the reference had several.
    pub constant: bool,
}

impl ColumnQuality {
    fn is_clean(&self) -> bool {
        *self == ColumnQuality::default()
    }
}

impl TensorCollectors {
    /// Collectors for `columns` (in the source query's order), keeping `capacity` values each.
    /// With a `reference`, only its columns are collected, and data quality is checked
    /// against it.
    pub(crate) fn new(
        columns: &[TensorColumn],
        reference: Option<&BTreeMap<String, ColumnProfile>>,
        capacity: usize,
    ) -> TensorCollectors {
        let tensors = columns
            .iter()
            .map(|c| {
                let list = matches!(
                    c.data_type,
                    DataType::List(_) | DataType::FixedSizeList(..) | DataType::LargeList(_)
                );
                let width = match c.data_type {
                    DataType::FixedSizeList(_, n) => n.max(0) as usize,
                    _ => usize::from(!list),
                };
                let mut slot = TensorSlot {
                    name: c.tensor.clone(),
                    kind: kind_of(&c.data_type),
                    list,
                    elements: Vec::new(),
                };
                (0..width).for_each(|i| slot.grow(i, reference, capacity));
                slot
            })
            .collect();
        TensorCollectors { tensors, capacity }
    }

    /// Adds row `row` of the prepared tensor columns.
    pub(crate) fn add_row(
        &mut self,
        prepared: &[Prepared],
        row: usize,
        reference: Option<&BTreeMap<String, ColumnProfile>>,
    ) {
        for (slot, column) in self.tensors.iter_mut().zip(prepared) {
            slot.add(column, row, reference, self.capacity);
        }
    }

    /// The profile of every collected column, with its data-quality findings against the
    /// reference.
    pub(crate) fn finish(self) -> Vec<(String, ColumnProfile, ColumnQuality)> {
        self.tensors
            .into_iter()
            .flat_map(|slot| slot.elements.into_iter().flatten())
            .map(|c| {
                let mut quality = c.quality;
                let profile = c.collector.finish();
                quality.missing = profile.missing;
                let reference_varied = c.range.is_some_and(|(lo, hi)| lo < hi)
                    || c.known.as_ref().is_some_and(|known| known.len() > 1);
                quality.constant = reference_varied && is_constant(&profile);
                (c.name, profile, quality)
            })
            .collect()
    }
}

fn is_constant(profile: &ColumnProfile) -> bool {
    profile.count >= 2
        && match profile.kind {
            ColumnKind::Numerical => profile.min == profile.max,
            ColumnKind::Categorical => profile.frequencies.len() == 1,
        }
}

/// The findings worth reporting: columns with something wrong.
pub(crate) fn violations(
    columns: &[(String, ColumnProfile, ColumnQuality)],
) -> BTreeMap<String, ColumnQuality> {
    columns
        .iter()
        .filter(|(_, _, q)| !q.is_clean())
        .map(|(name, _, q)| (name.clone(), q.clone()))
        .collect()
}

impl TensorSlot {
    fn element_name(&self, index: usize) -> String {
        if self.list {
            format!("{}[{index}]", self.name)
        } else {
            self.name.clone()
        }
    }

    /// Makes room for element `index` (a list may be longer in some rows).
    fn grow(
        &mut self,
        index: usize,
        reference: Option<&BTreeMap<String, ColumnProfile>>,
        capacity: usize,
    ) {
        while self.elements.len() <= index {
            let i = self.elements.len();
            let name = self.element_name(i);
            let known = reference.map(|r| r.get(&name));
            let collected = match known {
                Some(None) => None,
                Some(Some(profile)) => Some(Collected::against(name, profile, capacity, i)),
                None => Some(Collected {
                    collector: ColumnCollector::new(self.kind, capacity, i as u64),
                    name,
                    range: None,
                    known: None,
                    quality: ColumnQuality::default(),
                }),
            };
            self.elements.push(collected);
        }
    }

    fn add(
        &mut self,
        column: &Prepared,
        row: usize,
        reference: Option<&BTreeMap<String, ColumnProfile>>,
        capacity: usize,
    ) {
        match column {
            Prepared::Numbers(values) => {
                let value = (!values.is_null(row)).then(|| values.value(row));
                self.push_number(0, value, reference, capacity);
            }
            Prepared::Texts(values) => {
                let value = (!values.is_null(row)).then(|| values.value(row));
                self.push_text(0, value, reference, capacity);
            }
            Prepared::NumberLists(lists) | Prepared::TextLists(lists) => {
                if lists.is_null(row) {
                    return self.push_all_missing();
                }
                let offsets = lists.value_offsets();
                let items = lists.values();
                for (i, at) in (offsets[row] as usize..offsets[row + 1] as usize).enumerate() {
                    if let Prepared::NumberLists(_) = column {
                        let values = items.as_primitive::<Float64Type>();
                        let value = (!values.is_null(at)).then(|| values.value(at));
                        self.push_number(i, value, reference, capacity);
                    } else {
                        let values = items.as_string::<i32>();
                        let value = (!values.is_null(at)).then(|| values.value(at));
                        self.push_text(i, value, reference, capacity);
                    }
                }
            }
        }
    }

    fn push_all_missing(&mut self) {
        for c in self.elements.iter_mut().flatten() {
            c.collector.push_missing();
        }
    }

    fn push_number(
        &mut self,
        index: usize,
        value: Option<f64>,
        reference: Option<&BTreeMap<String, ColumnProfile>>,
        capacity: usize,
    ) {
        // A categorical column counts a number by its text, seen or unseen like any category.
        if let (ColumnKind::Categorical, Some(v)) = (self.kind, value) {
            let text = crate::profile::category_text(v);
            return self.push_text(index, Some(&text), reference, capacity);
        }
        self.grow(index, reference, capacity);
        let Some(Some(c)) = self.elements.get_mut(index) else {
            return;
        };
        match value {
            Some(v) => {
                if let Some((lo, hi)) = c.range
                    && v.is_finite()
                    && (v < lo || v > hi)
                {
                    c.quality.out_of_range += 1;
                }
                c.collector.push_number(v);
            }
            None => c.collector.push_missing(),
        }
    }

    fn push_text(
        &mut self,
        index: usize,
        value: Option<&str>,
        reference: Option<&BTreeMap<String, ColumnProfile>>,
        capacity: usize,
    ) {
        self.grow(index, reference, capacity);
        let Some(Some(c)) = self.elements.get_mut(index) else {
            return;
        };
        match value {
            Some(v) => {
                if c.known.as_ref().is_some_and(|known| !known.contains(v)) {
                    c.quality.unseen += 1;
                }
                c.collector.push_category(v);
            }
            None => c.collector.push_missing(),
        }
    }
}

impl Collected {
    fn against(name: String, reference: &ColumnProfile, capacity: usize, seed: usize) -> Collected {
        let range = reference.min.zip(reference.max);
        // A reference that counted every category it saw can tell an unseen one.
        let counted: u64 = reference.frequencies.values().sum();
        let known = (reference.kind == ColumnKind::Categorical && counted == reference.count)
            .then(|| reference.frequencies.keys().cloned().collect());
        Collected {
            name,
            collector: ColumnCollector::new(reference.kind, capacity, seed as u64),
            range,
            known,
            quality: ColumnQuality::default(),
        }
    }
}
