//! Adapter files in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Keys are `base_model.model.<path>.lora_A.weight` `[r, in]` and `.lora_B.weight` `[out, r]`
//! (transposes of our `[in, r]` / `[r, out]`), `.lora_embedding_A` `[r, n]` /
//! `.lora_embedding_B` `[dim, r]` for embeddings, and full parameters of `modules_to_save` and
//! trained biases under `base_model.model.<hf param path>` in PyTorch layout.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;

use crate::config::{CONFIG_FILE, LoraConfig};
use crate::error::{LoraError, Result};
use crate::io::{
    HostTensor, parse_safetensors, read_file, serialize_safetensors, view_to_host, write_atomic,
};
use crate::layer::Factors;
use crate::linear::replace;
use crate::model::{
    ParamInfo, PathWalk, RowBlock, SavedRole, TrainPolicy, inject_adapter, select_targets,
    visit_params,
};
use crate::sites::LoraSites;

/// PEFT's weights file name.
pub const ADAPTER_FILE: &str = "adapter_model.safetensors";
/// Prefix PEFT puts before every module path.
pub const KEY_PREFIX: &str = "base_model.model.";
/// The name of a PEFT adapter saved with `safe_serialization=False` (a PyTorch pickle).
pub const ADAPTER_BIN_FILE: &str = "adapter_model.bin";

/// PEFT's key (after the module path) of a DoRA magnitude vector.
pub const MAGNITUDE: &str = "lora_magnitude_vector";

fn is_linear_weight(p: &ParamInfo) -> bool {
    p.shape.len() == 2
        && p.hf_path.ends_with(".weight")
        && matches!(p.owner.as_str(), "Struct:Linear" | "Struct:LoraLinear")
}

/// The tensors PEFT would save for adapter `name`, keyed as in `adapter_model.safetensors`.
///
/// Also returns the config to write next to them: `config` plus `rank_pattern`/`alpha_pattern`
/// entries for sites whose adapter is not a plain rank-`r` one (e.g. q/v-sliced adapters
/// exported as their equivalent whole-matrix adapter), so PEFT rebuilds the same update.
pub fn adapter_state<M: Module + LoraSites>(
    model: &M,
    config: &LoraConfig,
    name: &str,
) -> Result<(Vec<(String, HostTensor)>, LoraConfig)> {
    let mut out = Vec::new();
    let mut config = config.clone();
    let mut sites = Vec::new();
    model.visit_lora_sites("", &mut |p, l| {
        if l.adapter_names().iter().any(|n| n == name) {
            let magnitude = l.magnitude(name);
            sites.push((p.to_string(), l.kind(), l.factors(name), magnitude));
        }
    });
    if sites.is_empty() {
        return Err(LoraError::UnknownAdapter {
            module: "(any)".into(),
            adapter: name.to_string(),
        });
    }
    for (path, kind, factors, magnitude) in sites {
        let f = factors?;
        if let Some(m) = magnitude? {
            let key = format!("{KEY_PREFIX}{path}.{MAGNITUDE}");
            out.push((key.clone(), HostTensor::from_tensor(m, &key)?));
            config.use_dora = true;
        }
        pin_spec(&mut config, &path, f.a.dims()[1], f.scale)?;
        let a = HostTensor::from_tensor(f.a, &path)?.transposed();
        let b = HostTensor::from_tensor(f.b, &path)?.transposed();
        let (ka, kb) = kind.factor_keys();
        out.push((format!("{KEY_PREFIX}{path}.{ka}"), a));
        out.push((format!("{KEY_PREFIX}{path}.{kb}"), b));
    }
    let policy = TrainPolicy::new(model, &config);
    let infos: Vec<ParamInfo> = visit_params(model)
        .into_iter()
        .filter(|p| p.adapter_site.is_none() && in_adapter_file(p, &policy, name))
        .collect();
    let wanted: BTreeMap<String, &ParamInfo> =
        infos.iter().map(|p| (p.burn_path.clone(), p)).collect();
    let adapted = crate::model::adapted_paths(model, None);
    for (burn_path, value) in collect_values(model, &wanted)? {
        let info = wanted[&burn_path];
        // A copy is stored flat; the file holds it in its parameter's shape.
        let value = HostTensor {
            shape: info.shape.clone(),
            data: value.data,
        };
        let value = if is_linear_weight(info) && !config.fan_in_fan_out {
            value.transposed()
        } else {
            value
        };
        // PEFT wraps adapted layers, so their own parameters sit under `base_layer`.
        let key = match info.hf_path.rsplit_once('.') {
            Some((module, leaf)) if adapted.iter().any(|a| a == module) => {
                format!("{module}.base_layer.{leaf}")
            }
            _ => info.hf_path.clone(),
        };
        out.push((format!("{KEY_PREFIX}{key}"), value));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, config))
}

/// Whether adapter `name`'s file holds this (non-factor) parameter: its own `modules_to_save`
/// copy (PEFT saves the adapter's copy under the parameter's own name), or, for a parameter
/// without copies, what the config trains (biases).
fn in_adapter_file(p: &ParamInfo, policy: &TrainPolicy, name: &str) -> bool {
    match &p.saved {
        None => policy.trains(&p.hf_path),
        Some(SavedRole::Original) => false,
        Some(SavedRole::Copy { adapter, .. }) => adapter == name,
    }
}

/// Adds `rank_pattern`/`alpha_pattern` entries for `path` when its adapter's rank or scale is
/// not what `config` gives it, so PEFT rebuilds the same update.
///
/// The file is read back (by PEFT and by us) with sorted keys, and the first matching key wins:
/// the pinned key must sort before any key of the user's that also matches `path` (a user's
/// `{"c_attn": 16}` sorts before `transformer\.h\.0\.attn\.c_attn`). When the plain escaped
/// path would lose, it is written as `(?:)<path>`, which sorts before every ordinary pattern.
pub(crate) fn pin_spec(config: &mut LoraConfig, path: &str, r: usize, scale: f64) -> Result<()> {
    config.rank_pattern.sort();
    config.alpha_pattern.sort();
    let gives = |c: &LoraConfig| -> Result<bool> {
        let spec = c.spec_for(path)?;
        Ok(r == spec.r && (scale - spec.scale).abs() <= 1e-12 * spec.scale.abs().max(1.0))
    };
    if gives(config)? {
        return Ok(());
    }
    let alpha = if config.use_rslora {
        scale * (r as f64).sqrt()
    } else {
        scale * r as f64
    };
    let escaped = regex::escape(path);
    for key in [escaped.clone(), format!("(?:){escaped}")] {
        let mut trial = config.clone();
        trial.rank_pattern.insert(key.clone(), r);
        trial.alpha_pattern.insert(key, alpha);
        trial.rank_pattern.sort();
        trial.alpha_pattern.sort();
        if gives(&trial)? {
            *config = trial;
            return Ok(());
        }
    }
    Err(LoraError::Unsupported(format!(
        "saving `{path}` (rank {r}, scale {scale}): a rank_pattern/alpha_pattern key of the \
         config sorts before any key that could pin it, so PEFT would rebuild another update"
    )))
}

/// Writes adapter `name` to `dir` as PEFT does (`adapter_config.json` and
/// `adapter_model.safetensors` with metadata `{"format": "pt"}`), each file atomically.
pub fn save_adapter<M: Module + LoraSites>(
    model: &M,
    config: &LoraConfig,
    name: &str,
    dir: impl AsRef<Path>,
) -> Result<()> {
    let dir = dir.as_ref();
    let (tensors, config) = adapter_state(model, config, name)?;
    let weights = dir.join(ADAPTER_FILE);
    let bytes = serialize_safetensors(&tensors, &[("format", "pt")], &weights)?;
    write_atomic(&weights, &bytes)?;
    write_atomic(&dir.join(CONFIG_FILE), config.to_json()?.as_bytes())
}

/// Loads a PEFT adapter directory onto a copy of `model` as adapter `name`.
///
/// Every key and shape is checked against the model before anything is applied; a missing
/// tensor, a wrong shape, or a tensor that belongs to no module is an error naming the key, and
/// `model` itself is never modified.
pub fn load_adapter<M: Module + LoraSites>(
    model: &M,
    dir: impl AsRef<Path>,
    name: &str,
) -> Result<(M, LoraConfig)> {
    let (config, file, path) = read_adapter_dir(dir.as_ref())?;
    let model = apply_adapter_state(model, &config, name, file, &path)?;
    Ok((model, config))
}

/// Reads a PEFT adapter directory: its config, its tensors by key, and the weights file path.
pub(crate) fn read_adapter_dir(
    dir: &Path,
) -> Result<(LoraConfig, HashMap<String, HostTensor>, std::path::PathBuf)> {
    let config = LoraConfig::load(dir.join(CONFIG_FILE))?;
    let path = dir.join(ADAPTER_FILE);
    let bin = dir.join(ADAPTER_BIN_FILE);
    let (file, path) = if !path.exists() && bin.exists() {
        // PEFT's `safe_serialization=False`: the same keys in a PyTorch pickle.
        (crate::io::read_pytorch(&bin)?, bin)
    } else {
        let bytes = read_file(&path)?;
        let st = parse_safetensors(&bytes, &path)?;
        let mut file: HashMap<String, HostTensor> = HashMap::new();
        for (key, view) in st.tensors() {
            file.insert(key.clone(), view_to_host(&key, &view)?);
        }
        (file, path)
    };
    // A NaN in a factor would poison every output silently; PEFT loads it, we refuse it.
    let mut keys: Vec<&String> = file.keys().collect();
    keys.sort();
    if let Some(key) = keys
        .into_iter()
        .find(|k| file[*k].data.iter().any(|v| !v.is_finite()))
    {
        return Err(LoraError::NonFinite {
            key: key.clone(),
            context: format!("in {}", path.display()),
        });
    }
    Ok((config, file, path))
}

/// Applies PEFT-keyed tensors (as read from an adapter file) to a copy of `model`.
/// `source` names the file in errors.
pub fn apply_adapter_state<M: Module + LoraSites>(
    model: &M,
    config: &LoraConfig,
    name: &str,
    mut file: HashMap<String, HostTensor>,
    source: &Path,
) -> Result<M> {
    // The file is checked against the config and the model before the adapter is allocated:
    // a corrupt rank must be a shape error, not a huge random initialisation.
    let sites = take_site_values(model, config, &mut file, source)?;
    let full = take_base_values(model, config, file, source)?;
    let mut model = inject_adapter(model.clone(), &config.for_loading()?, name)?;
    // All checks passed: apply.
    for site in sites {
        let key = format!("{KEY_PREFIX}{}", site.path);
        let mut result = Ok(());
        let mut site = Some(site);
        model.visit_lora_sites_mut("", &mut |p, l| {
            if let Some(s) = site.take_if(|s| s.path == p) {
                result = l.set_factors(name, s.factors, &key);
                if let (Ok(()), Some((m, key))) = (&result, s.magnitude) {
                    result = l.set_magnitude(name, m, &key);
                }
            }
            Ok(())
        })?;
        result?;
    }
    if !full.is_empty() {
        let full = crate::saved::redirect_to_copies(&model, full, name);
        let mut mapper = SetValues {
            walk: PathWalk::default(),
            values: &full,
        };
        model = model.map(&mut mapper);
    }
    Ok(model)
}

/// The error for a file tensor that fits nothing in the model.
pub(crate) fn unexpected_tensor(key: &str, source: &Path, reason: &str) -> LoraError {
    LoraError::UnexpectedTensor {
        key: key.to_string(),
        file: source.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The parameter path a non-factor key of an adapter file names (PEFT's prefix and
/// `base_layer` segment removed). LoRA tensors left at this point belong to no selected
/// module: an error, with `hint` appended to the reason.
pub(crate) fn base_param_name(key: &str, source: &Path, hint: &str) -> Result<String> {
    let Some(path) = key.strip_prefix(KEY_PREFIX) else {
        return Err(unexpected_tensor(
            key,
            source,
            &format!("keys must start with `{KEY_PREFIX}`"),
        ));
    };
    let path = path.replace(".base_layer.", ".");
    if path.contains("lora_") {
        return Err(unexpected_tensor(
            key,
            source,
            &format!(
                "LoRA factors for a module the config does not target (or an unsupported LoRA \
                 variant){hint}"
            ),
        ));
    }
    Ok(path)
}

/// One site's values from an adapter file, checked and ready to set.
struct SiteValues {
    path: String,
    factors: Factors,
    /// The DoRA magnitude and its key.
    magnitude: Option<(Tensor<1>, String)>,
}

/// Moves every adapted site's factors (and DoRA magnitudes) out of `file`, checking keys and
/// shapes.
fn take_site_values<M: Module + LoraSites>(
    model: &M,
    config: &LoraConfig,
    file: &mut HashMap<String, HostTensor>,
    source: &Path,
) -> Result<Vec<SiteValues>> {
    let mut take = |key: String, shape: &[usize]| {
        let t = file.remove(&key).ok_or_else(|| LoraError::MissingTensor {
            key: key.clone(),
            file: source.to_path_buf(),
        })?;
        expect_shape(&key, &t, shape)?;
        Ok::<_, LoraError>((t, key))
    };
    let selected = select_targets(model, config)?;
    let mut sites = Vec::new();
    model.visit_lora_sites("", &mut |p, l| {
        if selected.iter().any(|(s, _)| s == p) {
            sites.push((p.to_string(), l.kind(), l.dims()));
        }
    });
    let device = device_of(model)?;
    let mut out = Vec::with_capacity(sites.len());
    for (path, kind, (d_in, d_out)) in sites {
        let spec = config.spec_for(&path)?;
        let (ka, kb) = kind.factor_keys();
        let (a, key_a) = take(format!("{KEY_PREFIX}{path}.{ka}"), &[spec.r, d_in])?;
        let (b, key_b) = take(format!("{KEY_PREFIX}{path}.{kb}"), &[d_out, spec.r])?;
        let magnitude = match spec.dora {
            true => {
                let (m, key) = take(format!("{KEY_PREFIX}{path}.{MAGNITUDE}"), &[d_out])?;
                Some((m.to_tensor::<1>(&device, &key)?, key))
            }
            false => None,
        };
        let factors = Factors {
            a: a.transposed().to_tensor(&device, &key_a)?,
            b: b.transposed().to_tensor(&device, &key_b)?,
            scale: spec.scale,
        };
        out.push(SiteValues {
            path,
            factors,
            magnitude,
        });
    }
    Ok(out)
}

/// The remaining tensors of `file` must be parameters of the model (`modules_to_save`,
/// biases): their values by burn path, in burn's layout.
fn take_base_values<M: Module + LoraSites>(
    model: &M,
    config: &LoraConfig,
    mut file: HashMap<String, HostTensor>,
    source: &Path,
) -> Result<HashMap<String, HostTensor>> {
    let infos = visit_params(model);
    let mut full: HashMap<String, HostTensor> = HashMap::new();
    let mut keys: Vec<String> = file.keys().cloned().collect();
    keys.sort();
    for key in keys {
        let unexpected = |reason: &str| unexpected_tensor(&key, source, reason);
        let hf = base_param_name(&key, source, "")?;
        let info = infos
            .iter()
            .find(|p| p.adapter_site.is_none() && p.hf_path == hf && !is_copy(p))
            .ok_or_else(|| unexpected("no parameter of the model has this name"))?;
        let Some(value) = file.remove(&key) else {
            continue;
        };
        let value = if is_linear_weight(info) && !config.fan_in_fan_out {
            value.transposed()
        } else {
            value
        };
        expect_shape(&key, &value, &info.shape)?;
        full.insert(info.burn_path.clone(), value);
    }
    Ok(full)
}

fn is_copy(p: &ParamInfo) -> bool {
    matches!(p.saved, Some(SavedRole::Copy { .. }))
}

pub(crate) fn expect_shape(key: &str, t: &HostTensor, expected: &[usize]) -> Result<()> {
    if t.shape != expected {
        return Err(LoraError::ShapeMismatch {
            key: key.to_string(),
            expected: expected.to_vec(),
            found: t.shape.clone(),
        });
    }
    Ok(())
}

/// The device of the model's first LoRA site.
fn device_of<M: LoraSites>(model: &M) -> Result<Device> {
    let mut device = None;
    model.visit_lora_sites("", &mut |_, l| {
        if device.is_none() {
            device = Some(l.device());
        }
    });
    device.ok_or_else(|| LoraError::NoTargetMatched {
        targets: "(adapter)".into(),
        available: "(the model has no LoRA-capable module)".into(),
    })
}

/// Reads the values of the parameters named (by burn path) in `wanted`.
fn collect_values<M: Module>(
    model: &M,
    wanted: &BTreeMap<String, &ParamInfo>,
) -> Result<Vec<(String, HostTensor)>> {
    read_values(model, &wanted.keys().cloned().collect())
}

/// Reads the stored values of the parameters at the given burn paths (a reparameterized
/// parameter gives its base), in path order.
pub(crate) fn read_values<M: Module>(
    model: &M,
    wanted: &std::collections::BTreeSet<String>,
) -> Result<Vec<(String, HostTensor)>> {
    let values = crate::model::stored_values(model, wanted).into_iter();
    values
        .map(|(path, (v, shape))| {
            let flat = HostTensor::from_tensor(v, &path)?;
            Ok((
                path,
                HostTensor {
                    shape,
                    data: flat.data,
                },
            ))
        })
        .collect()
}

/// Replaces the values of the parameters at the given burn paths (ids and trainability kept).
pub(crate) struct SetValues<'a> {
    pub walk: PathWalk,
    pub values: &'a HashMap<String, HostTensor>,
}

impl ModuleMapper for SetValues<'_> {
    fn enter_module(&mut self, name: &str, kind: &str) {
        self.walk.enter(name, kind);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.walk.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.walk.path.join(".");
        match self.values.get(&path) {
            // Shapes (and so ranks) were checked before mapping.
            Some(v) if v.shape.len() == D => {
                let t: Tensor<D> = Tensor::from_data(
                    TensorData::new(v.data.clone(), v.shape.clone()),
                    &param.lazy_device(),
                );
                replace(&param, t)
            }
            _ => param,
        }
    }
}

/// What [`load_state_dict`] did not match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateDictReport {
    /// Model parameters (Hugging Face names) with no tensor in the state dict; they keep their
    /// current values.
    pub missing: Vec<String>,
    /// State-dict keys that name no parameter of the model.
    pub unused: Vec<String>,
}

/// Loads PyTorch-named tensors (e.g. a `model.safetensors` state dict) into the model's base
/// parameters, by Hugging Face path: linear weights are transposed from `[out, in]` unless
/// `fan_in_fan_out` (GPT-2's `Conv1D` stores `[in, out]`), LayerNorm `weight`/`bias` go to
/// burn's `gamma`/`beta`. Every matched shape is checked before anything is applied.
pub fn load_state_dict<M: Module + LoraSites>(
    model: M,
    mut state: HashMap<String, HostTensor>,
    fan_in_fan_out: bool,
) -> Result<(M, StateDictReport)> {
    let mut report = StateDictReport::default();
    let mut values = HashMap::new();
    let mut split_tables = BTreeSet::new();
    for info in visit_params(&model) {
        if info.adapter_site.is_some() || is_copy(&info) {
            continue;
        }
        if let Some(rows) = info.rows {
            // One block of a table split to fit the device: its rows of the whole tensor.
            let Some(table) = state.get(&info.hf_path) else {
                if split_tables.insert(info.hf_path.clone()) {
                    report.missing.push(info.hf_path.clone());
                }
                continue;
            };
            split_tables.insert(info.hf_path.clone());
            let value = table_rows(&info, rows, table)?;
            values.insert(info.burn_path.clone(), value);
            continue;
        }
        let Some(value) = state.remove(&info.hf_path) else {
            report.missing.push(info.hf_path.clone());
            continue;
        };
        let value = if is_linear_weight(&info) && !fan_in_fan_out {
            value.transposed()
        } else {
            value
        };
        expect_shape(&info.hf_path, &value, &info.shape)?;
        values.insert(info.burn_path.clone(), value);
    }
    for table in &split_tables {
        state.remove(table);
    }
    report.unused = state.into_keys().collect();
    report.unused.sort();
    let mut mapper = SetValues {
        walk: PathWalk::default(),
        values: &values,
    };
    Ok((model.map(&mut mapper), report))
}

/// Reads every tensor of a safetensors file as f32 (F16/BF16/F64 are converted).
pub fn read_safetensors(path: impl AsRef<Path>) -> Result<HashMap<String, HostTensor>> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    let st = parse_safetensors(&bytes, path)?;
    st.tensors()
        .into_iter()
        .map(|(k, v)| view_to_host(&k, &v).map(|t| (k, t)))
        .collect()
}

/// The model's base parameters (adapters excluded) as a PyTorch-named state dict: the inverse of
/// [`load_state_dict`]. Linear weights go back to `[out, in]` unless `fan_in_fan_out`, LayerNorm
/// `gamma`/`beta` to `weight`/`bias`. Merge adapters first to export a merged model; a
/// `modules_to_save` module gives the copy in use (PEFT's `merge_and_unload` keeps it).
pub fn export_state_dict<M: Module + LoraSites>(
    model: &M,
    fan_in_fan_out: bool,
) -> Result<Vec<(String, HostTensor)>> {
    let infos: Vec<ParamInfo> = visit_params(model)
        .into_iter()
        .filter(|p| p.adapter_site.is_none() && !is_copy(p))
        .collect();
    let wanted: BTreeMap<String, &ParamInfo> =
        infos.iter().map(|p| (p.burn_path.clone(), p)).collect();
    let in_use = crate::saved::copies_in_use(model)?;
    let mut out = Vec::with_capacity(infos.len());
    for (burn_path, value) in collect_values(model, &wanted)? {
        let info = wanted[&burn_path];
        let value = match in_use.get(&burn_path) {
            Some(copy) => HostTensor {
                shape: info.shape.clone(),
                data: copy.data.clone(),
            },
            None => value,
        };
        let value = if is_linear_weight(info) && !fan_in_fan_out {
            value.transposed()
        } else {
            value
        };
        let start = info.rows.map_or(0, |r| r.start);
        out.push(((info.hf_path.clone(), start), value));
    }
    // Row blocks of a split table in row order, then joined.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(join_row_blocks(
        out.into_iter().map(|((key, _), v)| (key, v)).collect(),
    ))
}

/// The rows of `table` (a whole state-dict tensor) that the row block `info` holds, after
/// checking the table's shape against the model's.
fn table_rows(info: &ParamInfo, rows: RowBlock, table: &HostTensor) -> Result<HostTensor> {
    let dim = info.shape[1];
    expect_shape(&info.hf_path, table, &[rows.table_rows, dim])?;
    let n = info.shape[0];
    let data = (table.data.get(rows.start * dim..(rows.start + n) * dim)).ok_or_else(|| {
        LoraError::Data {
            key: info.hf_path.clone(),
            reason: format!("{} values for shape {:?}", table.data.len(), table.shape),
        }
    })?;
    Ok(HostTensor {
        shape: info.shape.clone(),
        data: data.to_vec(),
    })
}

/// Joins the row blocks of split tables (consecutive entries with one `hf_path`, in row order)
/// into the whole tensor a state dict holds.
fn join_row_blocks(entries: Vec<(String, HostTensor)>) -> Vec<(String, HostTensor)> {
    let mut out: Vec<(String, HostTensor)> = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        match out.last_mut() {
            Some((last, table)) if *last == key && table.shape.len() == 2 => {
                table.shape[0] += value.shape[0];
                table.data.extend(value.data);
            }
            _ => out.push((key, value)),
        }
    }
    out
}

/// Writes tensors as a safetensors file (metadata `{"format": "pt"}`), atomically.
pub fn save_safetensors(path: impl AsRef<Path>, tensors: &[(String, HostTensor)]) -> Result<()> {
    let path = path.as_ref();
    let bytes = serialize_safetensors(tensors, &[("format", "pt")], path)?;
    write_atomic(path, &bytes)
}
