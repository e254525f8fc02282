//! PEFT adapter files for weight-level adapters: the same files as
//! [`save_adapter`](crate::save_adapter) writes, keyed by the PEFT paths a [`PathMap`] gives.

use std::collections::HashMap;
use std::path::Path;

use burn::module::Module;

use crate::adapter::{
    ADAPTER_FILE, KEY_PREFIX, MAGNITUDE, SetValues, base_param_name, expect_shape, pin_spec,
    read_adapter_dir, read_values, unexpected_tensor,
};
use crate::config::{CONFIG_FILE, LoraConfig};
use crate::error::{LoraError, Result};
use crate::io::{HostTensor, serialize_safetensors, write_atomic};
use crate::layer::LayerKind;
use crate::model::{PathWalk, TrainPolicy};
use crate::saved::copy_path;

use super::ops::{Target, inject_adapter, select};
use super::paths::PathMap;
use super::reparam::Layout;
use super::sites::{BaseParam, Scan, scan};

/// PEFT's keys (without [`KEY_PREFIX`]) of an adapter's A and B factors on `module`.
fn factor_keys(layout: Layout, module: &str) -> (String, String) {
    let kind = match layout {
        Layout::Embedding => LayerKind::Embedding,
        _ => LayerKind::Linear,
    };
    let (a, b) = kind.factor_keys();
    (format!("{module}.{a}"), format!("{module}.{b}"))
}

/// PEFT's key of a DoRA magnitude vector on `module`.
fn magnitude_key(module: &str) -> String {
    format!("{module}.{MAGNITUDE}")
}

/// The tensors PEFT would save for weight adapter `name`, keyed as in
/// `adapter_model.safetensors`, and the config to write beside them (with
/// `rank_pattern`/`alpha_pattern` entries wherever an adapter's rank or scale differs from
/// what `config` says, so PEFT rebuilds the same update).
pub fn adapter_state<M: Module>(
    model: &M,
    config: &LoraConfig,
    name: &str,
    map: &PathMap,
) -> Result<(Vec<(String, HostTensor)>, LoraConfig)> {
    let found = scan(model, map);
    let mut config = config.clone();
    let mut out = Vec::new();
    for (path, lora) in &found.sites {
        let Some(i) = lora.metas.iter().position(|m| m.name == name) else {
            continue;
        };
        let module = found.module_of(path);
        let (meta, f) = (&lora.metas[i], &lora.adapters[i]);
        pin_spec(&mut config, &module, meta.r, meta.scale)?;
        let (ka, kb) = factor_keys(lora.layout, &module);
        out.push((ka.clone(), HostTensor::from_tensor(f.lora_a.val(), &ka)?));
        out.push((kb.clone(), HostTensor::from_tensor(f.lora_b.val(), &kb)?));
        if let Some(m) = &f.magnitude {
            let km = magnitude_key(&module);
            out.push((km.clone(), HostTensor::from_tensor(m.val(), &km)?));
            config.use_dora = true;
        }
    }
    if out.is_empty() {
        return Err(no_weight_adapter(&found, name));
    }
    out.extend(saved_base_params(model, &found, &config, name)?);
    let mut out: Vec<(String, HostTensor)> = out
        .into_iter()
        .map(|(k, v)| (format!("{KEY_PREFIX}{k}"), v))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, config))
}

/// The error when no parameter carries weight adapter `name`; it points a model built on
/// `LoraLinear`/`LoraEmbedding` at the factored path's writer.
fn no_weight_adapter(found: &Scan, name: &str) -> LoraError {
    let factored = (found.params.iter())
        .any(|p| crate::model::ModuleKind::of(&p.owner) == crate::model::ModuleKind::Adapter);
    if factored {
        return LoraError::Unsupported(format!(
            "adapter `{name}` of this model lives in LoraLinear/LoraEmbedding layers: write it \
             with lora_core::save_adapter (a TrainModel overrides save_adapter with it)"
        ));
    }
    LoraError::UnknownAdapter {
        module: "(any)".into(),
        adapter: name.to_string(),
    }
}

/// The base parameters adapter `name` trains (its `modules_to_save` copies; what `bias`
/// selects), keyed as PEFT saves them (`<module>.base_layer.<leaf>` inside adapted modules) in
/// PyTorch layout.
fn saved_base_params<M: Module>(
    model: &M,
    found: &Scan,
    config: &LoraConfig,
    name: &str,
) -> Result<Vec<(String, HostTensor)>> {
    let adapted = found.adapted_modules();
    let policy = TrainPolicy::from_sites(config, adapted.clone());
    let copies = crate::saved::scan_copies(model);
    // A parameter with copies is saved as adapter `name`'s copy (if it has one), in its shape.
    let wanted: HashMap<String, &BaseParam> = (found.params.iter())
        .filter_map(|p| {
            let path = match copies.get(&p.burn_path) {
                None => policy.trains(&p.peft_path).then(|| p.burn_path.clone()),
                Some(set) => (set.copy_of(name)).map(|_| copy_path(&p.burn_path, name, &set.leaf)),
            };
            path.map(|path| (path, p))
        })
        .collect();
    let mut out = Vec::new();
    for (burn_path, value) in read_values(model, &wanted.keys().cloned().collect())? {
        let p = wanted[&burn_path];
        let value = HostTensor {
            shape: p.shape.clone(),
            data: value.data,
        };
        let value = torch_layout(p, value, config);
        let key = match p.peft_path.rsplit_once('.') {
            Some((module, leaf)) if adapted.contains(module) => {
                format!("{module}.base_layer.{leaf}")
            }
            _ => p.peft_path.clone(),
        };
        out.push((key, value));
    }
    Ok(out)
}

/// A burn value in PyTorch's layout (Linear weights `[out, in]` unless `fan_in_fan_out`); the
/// transpose is its own inverse, so this also turns a file's value into burn's layout.
fn torch_layout(p: &BaseParam, value: HostTensor, config: &LoraConfig) -> HostTensor {
    if p.is_linear_weight() && !config.fan_in_fan_out {
        value.transposed()
    } else {
        value
    }
}

/// Writes weight adapter `name` to `dir` as PEFT does (`adapter_config.json` and
/// `adapter_model.safetensors` with metadata `{"format": "pt"}`), each file atomically.
pub fn save_adapter<M: Module>(
    model: &M,
    config: &LoraConfig,
    name: &str,
    dir: impl AsRef<Path>,
    map: &PathMap,
) -> Result<()> {
    let dir = dir.as_ref();
    let (tensors, config) = adapter_state(model, config, name, map)?;
    let weights = dir.join(ADAPTER_FILE);
    let bytes = serialize_safetensors(&tensors, &[("format", "pt")], &weights)?;
    write_atomic(&weights, &bytes)?;
    write_atomic(&dir.join(CONFIG_FILE), config.to_json()?.as_bytes())
}

/// Loads a PEFT adapter directory onto a copy of any burn module as weight adapter `name`,
/// matching the file's PyTorch paths through `map`.
///
/// Every key and shape is checked before anything is allocated or attached: a missing tensor,
/// a wrong shape, or a tensor that no parameter maps to (often a [`PathMap`] that misses a
/// rename) is an error naming the key; `model` itself is never modified.
pub fn load_adapter<M: Module>(
    model: &M,
    dir: impl AsRef<Path>,
    name: &str,
    map: &PathMap,
) -> Result<(M, LoraConfig)> {
    let (config, mut file, source) = read_adapter_dir(dir.as_ref())?;
    let found = scan(model, map);
    let targets = select(&found, &config)?;
    let mut values = HashMap::new();
    for t in &targets {
        take_factors(t, &config, name, &mut file, &source, &mut values)?;
    }
    take_base_params(&found, &targets, &config, &mut file, &source, &mut values)?;
    let model = inject_adapter(model.clone(), &config.for_loading()?, name, map)?;
    // `modules_to_save` tensors belong to the adapter's own copies.
    let values = crate::saved::redirect_to_copies(&model, values, name);
    let mut mapper = SetValues {
        walk: PathWalk::default(),
        values: &values,
    };
    Ok((model.map(&mut mapper), config))
}

/// Moves one target's factors (and DoRA magnitude) out of `file` into `values`, keyed by the
/// burn path they will have, after checking their shapes against the config.
fn take_factors(
    t: &Target,
    config: &LoraConfig,
    name: &str,
    file: &mut HashMap<String, HostTensor>,
    source: &Path,
    values: &mut HashMap<String, HostTensor>,
) -> Result<()> {
    let module = t.param.peft_module();
    let s = &t.param.shape;
    let r = t.spec.r;
    // [r·E, in] and [out, r·E], in PEFT's orientation (see `Layout`).
    let (a_shape, b_shape, d_out) = match t.layout {
        Layout::Linear | Layout::Embedding => ([r, s[0]], [s[1], r], s[1]),
        Layout::Param2 => ([r, s[1]], [s[0], r], s[0]),
        Layout::Experts => ([r * s[0], s[2]], [s[1], r * s[0]], s[1]),
    };
    let (ka, kb) = factor_keys(t.layout, module);
    let prefix = format!("{}.lora.{name}", t.param.burn_path);
    let mut wanted = vec![
        (ka, a_shape.to_vec(), "lora_a"),
        (kb, b_shape.to_vec(), "lora_b"),
    ];
    if config.use_dora {
        wanted.push((magnitude_key(module), vec![d_out], "magnitude"));
    }
    for (key, shape, field) in wanted {
        let full = format!("{KEY_PREFIX}{key}");
        let value = file.remove(&full).ok_or_else(|| LoraError::MissingTensor {
            key: full.clone(),
            file: source.to_path_buf(),
        })?;
        expect_shape(&full, &value, &shape)?;
        values.insert(format!("{prefix}.{field}"), value);
    }
    Ok(())
}

/// Moves every remaining tensor of `file` (trained base parameters) into `values`; any key
/// that names no parameter is an error.
fn take_base_params(
    found: &Scan,
    targets: &[Target],
    config: &LoraConfig,
    file: &mut HashMap<String, HostTensor>,
    source: &Path,
    values: &mut HashMap<String, HostTensor>,
) -> Result<()> {
    let mut keys: Vec<String> = file.keys().cloned().collect();
    keys.sort();
    let selected: Vec<&str> = targets.iter().map(|t| t.param.peft_module()).collect();
    let hint = format!("; check the PathMap. Selected: [{}]", selected.join(", "));
    for key in keys {
        let unexpected = |reason: &str| unexpected_tensor(&key, source, reason);
        let peft = base_param_name(&key, source, &hint)?;
        let p = found
            .params
            .iter()
            .find(|p| p.peft_path == peft)
            .ok_or_else(|| {
                unexpected("no parameter of the model maps to this name (check the PathMap)")
            })?;
        let Some(value) = file.remove(&key) else {
            continue;
        };
        let value = torch_layout(p, value, config);
        expect_shape(&key, &value, &p.shape)?;
        values.insert(p.burn_path.clone(), value);
    }
    Ok(())
}
