//! The R4 structure tables (`r4.json`, written by `tools/gen-fhir-tables/gen.py`)
//! turned once into lookup structures: per type, its elements and a map from
//! every JSON key it accepts (`status`, `valueQuantity`, …) to the element.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::LazyLock;

use serde::Deserialize;

use super::primitives::Prim;

/// The tables, parsed on first use.
pub(super) static TABLES: LazyLock<Tables> =
    LazyLock::new(|| Tables::load(include_str!("r4.json")).unwrap_or_else(|e| panic!("embedded r4.json: {e}")));

/// FNV-1a: the keys are short element names, where SipHash's setup dominates.
#[derive(Default)]
pub(super) struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

pub(super) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;
pub(super) type FastSet<K> = HashSet<K, BuildHasherDefault<Fnv>>;

/// Index of a type in [`Tables::types`].
pub(super) type TypeId = usize;

/// What an element (or one choice of a choice element) holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TypeRef {
    Primitive(Prim),
    Complex(TypeId),
    /// Any resource, validated by its own `resourceType`.
    Resource,
}

pub(super) struct ElementDef {
    /// The name as defined, with `[x]` for choice elements (`value[x]`).
    pub name: &'static str,
    pub min: u32,
    /// Max cardinality `*` (a JSON array) rather than 1.
    pub many: bool,
    pub types: Vec<TypeRef>,
    /// Index into [`Tables::value_sets`] for a checkable required binding.
    pub binding: Option<usize>,
}

/// Which element a JSON key names, and which of its types.
#[derive(Clone, Copy)]
pub(super) struct KeyTarget {
    pub element: usize,
    pub choice: usize,
}

pub(super) struct TypeDef {
    /// `Observation`, `Quantity`, or a backbone path like `Observation.component`.
    pub name: &'static str,
    pub elements: Vec<ElementDef>,
    pub keys: FastMap<Box<str>, KeyTarget>,
    /// Elements with min ≥ 1.
    pub required: Vec<usize>,
}

pub(super) struct ValueSetDef {
    /// The canonical as bound, e.g. `http://hl7.org/fhir/ValueSet/observation-status|4.0.1`.
    pub canonical: &'static str,
    pub codes: FastSet<&'static str>,
    pub by_system: FastMap<&'static str, FastSet<&'static str>>,
    /// A short list of allowed codes for messages.
    pub allowed: String,
}

pub(super) struct Tables {
    pub types: Vec<TypeDef>,
    pub resources: FastMap<&'static str, TypeId>,
    pub value_sets: Vec<ValueSetDef>,
    pub extension: TypeId,
}

#[derive(Deserialize)]
struct RawTable<'a> {
    #[serde(borrow)]
    resources: Vec<&'a str>,
    #[serde(borrow)]
    types: BTreeMap<&'a str, Vec<RawElement<'a>>>,
    #[serde(borrow, rename = "valueSets")]
    value_sets: BTreeMap<&'a str, BTreeMap<&'a str, Vec<&'a str>>>,
}

/// `[name, min, max, [type, ...], binding]`
#[derive(Deserialize)]
struct RawElement<'a>(&'a str, u32, &'a str, #[serde(borrow)] Vec<&'a str>, #[serde(borrow)] Option<&'a str>);

impl Tables {
    pub(super) fn load(text: &'static str) -> Result<Tables, String> {
        let raw: RawTable<'static> = serde_json::from_str(text).map_err(|e| e.to_string())?;

        let mut value_sets = Vec::new();
        let mut vs_index = HashMap::new();
        for (canonical, systems) in &raw.value_sets {
            let mut codes = FastSet::default();
            let mut by_system = FastMap::default();
            for (system, list) in systems {
                codes.extend(list.iter().copied());
                by_system.insert(*system, list.iter().copied().collect());
            }
            let mut shown: Vec<&str> = systems.values().flatten().copied().take(12).collect();
            if codes.len() > shown.len() {
                shown.push("…");
            }
            vs_index.insert(*canonical, value_sets.len());
            value_sets.push(ValueSetDef { canonical, codes, by_system, allowed: shown.join(", ") });
        }

        let type_ids: HashMap<&str, TypeId> = raw.types.keys().enumerate().map(|(i, name)| (*name, i)).collect();
        let mut types = Vec::with_capacity(raw.types.len());
        for (name, raw_elements) in &raw.types {
            let mut elements = Vec::with_capacity(raw_elements.len());
            let mut keys = FastMap::default();
            for (idx, RawElement(el_name, min, max, type_names, binding)) in raw_elements.iter().enumerate() {
                let mut refs = Vec::with_capacity(type_names.len());
                for type_name in type_names {
                    let r = if let Some(p) = Prim::from_name(type_name) {
                        TypeRef::Primitive(p)
                    } else if *type_name == "Resource" {
                        TypeRef::Resource
                    } else {
                        let id = type_ids.get(type_name).ok_or(format!("unknown type {type_name}"))?;
                        TypeRef::Complex(*id)
                    };
                    refs.push(r);
                }
                if let Some(base) = el_name.strip_suffix("[x]") {
                    for (choice, type_name) in type_names.iter().enumerate() {
                        let mut chars = type_name.chars();
                        let first = chars.next().ok_or("empty type name")?;
                        let key = format!("{base}{}{}", first.to_ascii_uppercase(), chars.as_str());
                        keys.insert(key.into_boxed_str(), KeyTarget { element: idx, choice });
                    }
                } else {
                    keys.insert((*el_name).into(), KeyTarget { element: idx, choice: 0 });
                }
                let binding = match binding {
                    Some(b) => Some(*vs_index.get(b).ok_or(format!("unknown value set {b}"))?),
                    None => None,
                };
                elements.push(ElementDef { name: el_name, min: *min, many: *max == "*", types: refs, binding });
            }
            if elements.len() > super::MAX_ELEMENTS {
                return Err(format!("{name} has more than {} elements", super::MAX_ELEMENTS));
            }
            let required = (0..elements.len()).filter(|&i| elements[i].min > 0).collect();
            types.push(TypeDef { name, elements, keys, required });
        }

        let mut resources = FastMap::default();
        for r in &raw.resources {
            resources.insert(*r, *type_ids.get(r).ok_or(format!("no type for resource {r}"))?);
        }
        let extension = *type_ids.get("Extension").ok_or("no Extension type")?;
        Ok(Tables { types, resources, value_sets, extension })
    }
}
