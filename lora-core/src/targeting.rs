//! PEFT 0.21.2's selection rules, rule for rule: which modules get an adapter
//! (`check_target_module_exists`), which train fully (`_set_trainable` for `modules_to_save`),
//! and which rank and alpha each adapted module gets (`get_pattern_key`). Patterns have Python's
//! `re` meaning (look-around and backreferences included); a construct that Python reads
//! differently is refused with an error naming it. `fixtures/peft/oracle.json`, written by PEFT
//! itself, is the table the tests hold these rules to.

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::{AdapterSpec, LoraConfig, OneOrMany, TargetModules, scale};
use crate::error::Result;
use crate::pyregex::PyRegex;

/// The `target_modules` shorthand for "every linear layer" (matched case-insensitively, as in
/// PEFT).
pub const ALL_LINEAR: &str = "all-linear";

/// Whether a `target_modules` string is the [`ALL_LINEAR`] shorthand.
pub fn is_all_linear(pattern: &str) -> bool {
    pattern.eq_ignore_ascii_case(ALL_LINEAR)
}

/// What PEFT adds to `modules_to_save` for a task type before it selects targets
/// (`PeftModelForSequenceClassification` and its siblings): the task's head, so it trains fully
/// and is never given an adapter.
pub fn task_head_modules(task_type: Option<&str>) -> &'static [&'static str] {
    match task_type {
        Some("SEQ_CLS" | "TOKEN_CLS") => &["classifier", "score"],
        Some("QUESTION_ANS") => &["qa_outputs"],
        _ => &[],
    }
}

/// `rank_pattern` / `alpha_pattern`: pattern keys with values, in the order they were written.
///
/// Order matters: PEFT uses the first key that matches a module, in dict order (file order when
/// read from JSON). PEFT writes these maps with sorted keys; so does
/// [`LoraConfig::to_json`](crate::LoraConfig::to_json).
#[derive(Debug, Clone, PartialEq)]
pub struct PatternMap<V>(Vec<(String, V)>);

impl<V> Default for PatternMap<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V> PatternMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` (kept in place if present, appended otherwise, like a Python dict).
    pub fn insert(&mut self, key: impl Into<String>, value: V) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    /// Values in order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sorts the keys, the order a file written by PEFT (or by us) is read back in.
    pub fn sort(&mut self) {
        self.0.sort_by(|a, b| a.0.cmp(&b.0));
    }

    /// Compiles every key (an unusable one is an error at validation, not at injection).
    pub fn check(&self, field: &str) -> Result<()> {
        for (k, _) in &self.0 {
            pattern_key_regex(field, k)?;
        }
        Ok(())
    }

    /// The first key that matches module `path` with `get_pattern_key`'s rule
    /// (`re.match(rf"(.*\.)?({key})$", path)`), and its value.
    pub fn lookup(&self, field: &str, path: &str) -> Result<Option<(&str, &V)>> {
        for (k, v) in &self.0 {
            if pattern_key_regex(field, k)?.is_match(path)? {
                return Ok(Some((k, v)));
            }
        }
        Ok(None)
    }
}

impl<V: Serialize> Serialize for PatternMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for PatternMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Ordered<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Ordered<V> {
            type Value = PatternMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map from pattern to value")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut a: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = PatternMap::new();
                while let Some((k, v)) = a.next_entry::<String, V>()? {
                    out.insert(k, v);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Ordered(std::marker::PhantomData))
    }
}

impl LoraConfig {
    /// Whether the module at `path` gets an adapter, by PEFT's `check_target_module_exists`:
    /// `exclude_modules` and `modules_to_save` exclude first; a `target_modules` string must
    /// match the whole path (`re.fullmatch`); a list entry matches exactly or as a dotted suffix,
    /// and only suffix matches are then filtered by `layers_to_transform`.
    ///
    /// `is_linear` tells the [`ALL_LINEAR`] shorthand which sites qualify; the caller leaves out
    /// the model's output layer, as PEFT does.
    pub fn is_target(&self, path: &str, is_linear: bool) -> Result<bool> {
        if self.is_excluded(path)? {
            return Ok(false);
        }
        match &self.target_modules {
            None => Ok(false),
            Some(TargetModules::Regex(p)) if is_all_linear(p) => Ok(is_linear),
            Some(TargetModules::Regex(p)) => {
                PyRegex::fullmatch("target_modules", p)?.is_match(path)
            }
            Some(TargetModules::List(list)) if list.iter().any(|t| t == path) => Ok(true),
            Some(TargetModules::List(list)) => {
                if !list.iter().any(|t| ends_with_segment(path, t)) {
                    return Ok(false);
                }
                match self.layer_filter() {
                    None => Ok(true),
                    Some(layers) => Ok(self
                        .layer_index(path)?
                        .is_some_and(|i| layers.iter().any(|&l| u64::try_from(l) == Ok(i as u64)))),
                }
            }
        }
    }

    /// `exclude_modules` (a string: full match; a list: exact or dotted suffix) and the
    /// `modules_to_save` guard (`(^|.*\.)<name>($|\..*)`: the module, its dotted-suffix
    /// namesakes and everything inside them).
    fn is_excluded(&self, path: &str) -> Result<bool> {
        let excluded = match &self.exclude_modules {
            Some(TargetModules::Regex(p)) if !p.is_empty() => {
                PyRegex::fullmatch("exclude_modules", p)?.is_match(path)?
            }
            Some(TargetModules::List(l)) => {
                l.iter().any(|t| t == path || ends_with_segment(path, t))
            }
            _ => false,
        };
        if excluded {
            return Ok(true);
        }
        for m in self.effective_modules_to_save() {
            let guard = format!(r"(^|.*\.){m}($|\..*)");
            if PyRegex::prefix("modules_to_save", &guard)?.is_match(path)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `layers_to_transform` as a list, or `None` when it does not filter (absent or empty).
    fn layer_filter(&self) -> Option<Vec<i64>> {
        let layers = self.layers_to_transform.as_ref()?.to_vec();
        (!layers.is_empty()).then_some(layers)
    }

    /// The layer index PEFT reads from a module path: the first number after a `layers_pattern`
    /// entry (which may also start the path), or with no pattern (absent, `""` or `[]`) the
    /// first number that follows a dotted segment. `None` when the path has none.
    pub fn layer_index(&self, path: &str) -> Result<Option<usize>> {
        let regexes: Vec<String> = match &self.layers_pattern {
            Some(OneOrMany::One(p)) if !p.is_empty() => vec![layer_regex(p)],
            Some(OneOrMany::Many(ps)) if !ps.is_empty() => {
                ps.iter().map(|p| layer_regex(p)).collect()
            }
            // Lazy, so MoE paths such as `layers.1.experts.0.w1` give the layer, not the expert.
            _ => vec![r".*?\.[^.]*\.(?P<idx>\d+)\.".to_string()],
        };
        for re in regexes {
            if let Some(idx) = PyRegex::prefix("layers_pattern", &re)?.named_group(path, "idx")? {
                return Ok(idx.and_then(|i| i.parse().ok()));
            }
        }
        Ok(None)
    }

    /// Rank, alpha and scale for the module at `path`: the first matching `rank_pattern` /
    /// `alpha_pattern` key wins, else `r` / `lora_alpha`.
    pub fn spec_for(&self, path: &str) -> Result<AdapterSpec> {
        let r = match self.rank_pattern.lookup("rank_pattern", path)? {
            Some((_, &r)) => r,
            None => self.r,
        };
        let alpha = match self.alpha_pattern.lookup("alpha_pattern", path)? {
            Some((_, &a)) => a,
            None => self.lora_alpha,
        };
        Ok(AdapterSpec {
            r,
            alpha,
            scale: scale(alpha, r, self.use_rslora),
            dropout: self.lora_dropout,
            init: self.init_lora_weights,
            dora: self.use_dora,
            bias: self.bias,
        })
    }

    /// `modules_to_save` plus what PEFT adds for [`task_type`](Self::task_type)
    /// ([`task_head_modules`]), without repeats.
    pub fn effective_modules_to_save(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        let given = self.modules_to_save.iter().flatten().map(String::as_str);
        for m in given.chain(task_head_modules(self.task_type.as_deref()).iter().copied()) {
            if !m.is_empty() && !out.contains(&m) {
                out.push(m);
            }
        }
        out
    }

    /// Whether the module at `module_path` trains fully: PEFT wraps every module whose path
    /// ends with a `modules_to_save` entry, as a plain string suffix (so `classifier` also
    /// wraps `pre_classifier`), and everything inside a wrapped module trains with it.
    pub fn saves_module(&self, module_path: &str) -> bool {
        let mods = self.effective_modules_to_save();
        let ancestors = module_path
            .match_indices('.')
            .map(|(i, _)| &module_path[..i])
            .chain(std::iter::once(module_path));
        ancestors
            .filter(|p| !p.is_empty())
            .any(|p| mods.iter().any(|m| p.ends_with(m)))
    }

    /// The `modules_to_save` entries (as [`effective_modules_to_save`] gives them) that match
    /// none of `module_paths`.
    ///
    /// [`effective_modules_to_save`]: Self::effective_modules_to_save
    pub fn unmatched_modules_to_save<'a>(
        &self,
        module_paths: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Vec<String> {
        self.effective_modules_to_save()
            .into_iter()
            .filter(|m| !module_paths.clone().into_iter().any(|p| p.ends_with(m)))
            .map(str::to_string)
            .collect()
    }
}

/// `get_pattern_key`'s regex for one key.
fn pattern_key_regex(field: &str, key: &str) -> Result<PyRegex> {
    PyRegex::prefix(field, &format!(r"(.*\.)?({key})$"))
}

/// PEFT's layer-index regex for one `layers_pattern` entry (inserted as a regex, as PEFT does).
fn layer_regex(pattern: &str) -> String {
    format!(r"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.")
}

/// `path == t` or `path` ends with `.t`.
fn ends_with_segment(path: &str, t: &str) -> bool {
    path.strip_suffix(t)
        .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
}
