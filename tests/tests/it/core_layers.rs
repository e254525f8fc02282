//! LoraLinear / LoraEmbedding: exactness at init, merge algebra, gradients, and parity with
//! PEFT (fixtures from scripts/make_core_fixtures.py) and with burn's built-in `apply_lora`.

use burn::module::{Lora, Module, ModuleMapper, ModuleVisitor, Param, ParamGroup};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::Distribution;
use lora_core::io::HostTensor;
use lora_core::{
    AdapterSpec, BiasMode, Factors, InitLoraWeights, LoraConfig, LoraLayer, LoraLinear,
    LoraModelExt, inject_adapter,
};

use crate::common::{Tiny, assert_close, devices, host, ids, load};

fn spec(r: usize, alpha: f64, init: InitLoraWeights) -> AdapterSpec {
    AdapterSpec {
        r,
        alpha,
        scale: alpha / r as f64,
        dropout: 0.0,
        init,
        dora: false,
        bias: lora_core::BiasMode::None,
    }
}

#[test]
fn zero_b_gives_the_base_output() {
    for (name, device) in devices() {
        device.seed(7);
        let linear = LinearConfig::new(12, 10).init(&device);
        let x = Tensor::<3>::random([2, 3, 12], Distribution::Normal(0.0, 1.0), &device);
        let base = host(linear.forward(x.clone()));
        let mut lora = LoraLinear::from_linear(linear);
        lora.add_adapter("default", &spec(4, 8.0, InitLoraWeights::Default))
            .unwrap();
        let out = host(lora.forward(x));
        // B = 0 makes the adapter branch exactly zero: identical bits, not just close.
        assert_eq!(out, base, "{name}: B = 0 must leave the output unchanged");
    }
}

#[test]
fn factored_equals_merged_and_merge_is_invertible() {
    for (name, device) in devices() {
        device.seed(11);
        let mut lora = LoraLinear::from_linear(LinearConfig::new(16, 24).init(&device));
        lora.add_adapter("default", &spec(4, 8.0, InitLoraWeights::Random))
            .unwrap();
        let x = Tensor::<2>::random([5, 16], Distribution::Normal(0.0, 1.0), &device);
        let w0 = host(lora.weight.val());
        let factored = host(lora.forward(x.clone()));

        lora.merge("default").unwrap();
        let merged_w = host(lora.weight.val());
        let merged = host(lora.forward(x.clone()));
        assert_close(
            &format!("{name}: factored vs merged"),
            &factored,
            &merged,
            1e-5,
        );
        assert_ne!(merged_w, w0, "{name}: merge must change the weight");

        lora.merge("default").unwrap();
        assert_eq!(
            host(lora.weight.val()),
            merged_w,
            "{name}: second merge is a no-op"
        );

        lora.unmerge("default").unwrap();
        assert_close(
            &format!("{name}: unmerge restores W0"),
            &host(lora.weight.val()),
            &w0,
            1e-6,
        );
        lora.unmerge("default").unwrap();
        assert_close(
            &format!("{name}: second unmerge no-op"),
            &host(lora.weight.val()),
            &w0,
            1e-6,
        );
        assert_close(
            &format!("{name}: unmerged forward"),
            &host(lora.forward(x)),
            &factored,
            1e-5,
        );
    }
}

#[test]
fn adapters_can_be_switched_disabled_and_deleted() {
    let device = burn::tensor::Device::flex();
    device.seed(3);
    let linear = LinearConfig::new(6, 4).init(&device);
    let x = Tensor::<2>::random([3, 6], Distribution::Normal(0.0, 1.0), &device);
    let base = host(linear.forward(x.clone()));
    let mut l = LoraLinear::from_linear(linear);
    l.add_adapter("a", &spec(2, 2.0, InitLoraWeights::Random))
        .unwrap();
    l.add_adapter("b", &spec(3, 3.0, InitLoraWeights::Random))
        .unwrap();
    let both = host(l.forward(x.clone()));
    l.set_active(&["a".into()]).unwrap();
    let only_a = host(l.forward(x.clone()));
    assert_ne!(only_a, both);
    l.merge("a").unwrap();
    assert_close("merged a", &host(l.forward(x.clone())), &only_a, 1e-5);
    // Disabling unmerges first, so the output is the base model's.
    l.set_disabled(true).unwrap();
    assert!(l.merged_adapters().is_empty());
    assert_close("disabled", &host(l.forward(x.clone())), &base, 1e-5);
    l.set_disabled(false).unwrap();
    l.set_active(&["a".into(), "b".into()]).unwrap();
    assert_close("re-enabled", &host(l.forward(x.clone())), &both, 1e-5);
    l.remove_adapter("b").unwrap();
    assert_eq!(l.adapter_names(), vec!["a".to_string()]);
    assert!(l.set_active(&["b".into()]).is_err());
}

/// Our LoraLinear given PEFT's base, A and B reproduces PEFT's output and gradients.
#[test]
fn linear_matches_peft_output_and_gradients() {
    let f = load("core/linear.safetensors");
    for (tag, rslora) in [("plain", false), ("rslora", true)] {
        let get = |k: &str| f[&format!("{tag}.{k}")].clone();
        for (name, device) in devices() {
            let device = device.autodiff();
            let weight = get("weight")
                .transposed()
                .to_tensor::<2>(&device, "w")
                .unwrap();
            let bias = get("bias").to_tensor::<1>(&device, "b").unwrap();
            let mut lora = LoraLinear::from_linear(Linear {
                weight: Param::from_tensor(weight).set_require_grad(false),
                bias: Some(Param::from_tensor(bias).set_require_grad(false)),
            });
            let r = 3;
            let scale = lora_core::config::scale(6.0, r, rslora);
            lora.add_adapter(
                "default",
                &AdapterSpec {
                    scale,
                    ..spec(r, 6.0, InitLoraWeights::Default)
                },
            )
            .unwrap();
            let a = get("lora_A")
                .transposed()
                .to_tensor::<2>(&device, "a")
                .unwrap();
            let b = get("lora_B")
                .transposed()
                .to_tensor::<2>(&device, "b")
                .unwrap();
            lora.set_factors("default", Factors { a, b, scale }, "fixture")
                .unwrap();

            let x = get("x").to_tensor::<3>(&device, "x").unwrap();
            let y = lora.forward(x);
            assert_close(
                &format!("{name}/{tag}: output"),
                &host(y.clone()),
                &get("y"),
                1e-5,
            );
            let upstream = get("upstream").to_tensor::<3>(&device, "g").unwrap();
            let grads = (y * upstream).sum().backward();
            let ad = &lora.adapters[0];
            let ga = ad.lora_a.val().grad(&grads).expect("A has a gradient");
            let gb = ad.lora_b[0].val().grad(&grads).expect("B has a gradient");
            assert_close(
                &format!("{name}/{tag}: dA"),
                &host(ga),
                &get("grad_A").transposed(),
                1e-5,
            );
            assert_close(
                &format!("{name}/{tag}: dB"),
                &host(gb),
                &get("grad_B").transposed(),
                1e-5,
            );
            assert!(
                lora.weight.val().grad(&grads).is_none(),
                "frozen W0 gets no gradient"
            );
        }
    }
}

#[test]
fn embedding_matches_peft_output_and_gradients() {
    let f = load("core/embedding.safetensors");
    for (name, device) in devices() {
        let device = device.autodiff();
        let weight = f["weight"].to_tensor::<2>(&device, "w").unwrap();
        let mut e = lora_core::LoraEmbedding::from_embedding(burn::nn::Embedding {
            weight: Param::from_tensor(weight).set_require_grad(false),
        });
        e.add_adapter("default", &spec(2, 4.0, InitLoraWeights::Default))
            .unwrap();
        let a = f["lora_embedding_A"]
            .transposed()
            .to_tensor::<2>(&device, "a")
            .unwrap();
        let b = f["lora_embedding_B"]
            .transposed()
            .to_tensor::<2>(&device, "b")
            .unwrap();
        e.set_factors("default", Factors { a, b, scale: 2.0 }, "fixture")
            .unwrap();
        let y = e.forward(ids(&f["ids"], &device));
        assert_close(
            &format!("{name}: embedding output"),
            &host(y.clone()),
            &f["y"],
            1e-5,
        );
        let grads = (y * f["upstream"].to_tensor::<3>(&device, "g").unwrap())
            .sum()
            .backward();
        let ad = &e.adapters[0];
        let ga = ad.lora_embedding_a.val().grad(&grads).unwrap();
        let gb = ad.lora_embedding_b.val().grad(&grads).unwrap();
        assert_close(
            &format!("{name}: dA"),
            &host(ga),
            &f["grad_A"].transposed(),
            1e-5,
        );
        assert_close(
            &format!("{name}: dB"),
            &host(gb),
            &f["grad_B"].transposed(),
            1e-5,
        );
    }
}

/// Collects burn's built-in LoRA factors by path; sets B to a given value.
struct BuiltIn {
    path: Vec<String>,
    b_value: Option<Tensor<2>>,
    a: Option<Tensor<2>>,
}
impl ModuleMapper for BuiltIn {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.join(".");
        if path == "weight.lora.a" {
            let t: Tensor<2> = p.val().reshape([p.dims()[0], p.dims()[1]]);
            self.a = Some(t);
            p
        } else if path == "weight.lora.b" {
            let b = self.b_value.take().expect("B value given");
            let b: Tensor<D> = b.reshape(p.dims());
            p.map(|_| b).set_require_grad(true)
        } else {
            p
        }
    }
}

/// Same A and B in burn's `apply_lora` and in ours ⇒ same outputs and factor gradients.
#[test]
fn matches_burn_builtin_lora() {
    for (name, device) in devices() {
        let device = device.autodiff();
        device.seed(5);
        let (d_in, d_out, r) = (10, 7, 3);
        let linear = LinearConfig::new(d_in, d_out).init(&device);
        let x = Tensor::<2>::random([4, d_in], Distribution::Normal(0.0, 1.0), &device);
        let upstream = Tensor::<2>::random([4, d_out], Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<2>::random([r, d_out], Distribution::Normal(0.0, 0.5), &device);

        let builtin = linear
            .clone()
            .apply_lora(Lora::new(r, 6.0).set_param_group(ParamGroup::all()));
        let mut m = BuiltIn {
            path: vec![],
            b_value: Some(b.clone()),
            a: None,
        };
        let builtin: Linear = builtin.map(&mut m);
        let a = m.a.expect("built-in A found").detach();

        let mut ours = LoraLinear::from_linear(linear.no_grad());
        ours.add_adapter("default", &spec(r, 6.0, InitLoraWeights::Default))
            .unwrap();
        ours.set_factors(
            "default",
            Factors {
                a: a.clone(),
                b: b.clone(),
                scale: 2.0,
            },
            "t",
        )
        .unwrap();

        let y_builtin = builtin.forward(x.clone());
        let y_ours = ours.forward(x);
        assert_close(
            &format!("{name}: output"),
            &host(y_ours.clone()),
            &host(y_builtin.clone()),
            1e-5,
        );

        let g_b = (y_builtin * upstream.clone()).sum().backward();
        let g_o = (y_ours * upstream).sum().backward();
        let grads_builtin = GradientsParams::from_grads(g_b, &builtin);
        let grads_ours = GradientsParams::from_grads(g_o, &ours);
        assert_eq!(grads_builtin.len(), 2, "built-in trains only A and B");
        assert_eq!(grads_ours.len(), 2, "ours trains only A and B");
        let adapter = builtin.weight.adapter().expect("built-in adapter");
        let ga_builtin: Tensor<2> = grads_builtin.get(adapter.a.id).unwrap();
        let gb_builtin: Tensor<2> = grads_builtin.get(adapter.b.id).unwrap();
        let ga_ours: Tensor<2> = grads_ours.get(ours.adapters[0].lora_a.id).unwrap();
        let gb_ours: Tensor<2> = grads_ours.get(ours.adapters[0].lora_b[0].id).unwrap();
        assert_close(
            &format!("{name}: dA"),
            &host(ga_ours),
            &host(ga_builtin),
            1e-5,
        );
        assert_close(
            &format!("{name}: dB"),
            &host(gb_ours),
            &host(gb_builtin),
            1e-5,
        );
    }
}

fn param_values(model: &Tiny) -> Vec<(String, HostTensor)> {
    lora_core::visit_params(model)
        .into_iter()
        .zip(all_tensors(model))
        .map(|(i, t)| (i.burn_path, t))
        .collect()
}

fn all_tensors(model: &Tiny) -> Vec<HostTensor> {
    struct V(Vec<HostTensor>);
    impl ModuleVisitor for V {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.push(host(p.val()));
        }
    }
    let mut v = V(vec![]);
    model.visit(&mut v);
    v.0
}

/// Only adapter factors (plus `lora_only` biases and `modules_to_save`) get gradients and
/// optimizer state; after AdamW steps with weight decay every frozen tensor is bit-identical.
#[test]
fn only_selected_parameters_train() {
    for (name, device) in devices() {
        let device = device.autodiff();
        device.seed(9);
        let config = LoraConfig::new(2, 4.0, &["q", "v"])
            .with_init(InitLoraWeights::Random)
            .with_bias(BiasMode::LoraOnly)
            .with_modules_to_save(&["head"]);
        let mut model = inject_adapter(Tiny::new(&device), &config, "default").unwrap();
        let before = param_values(&model);
        let ids = Tensor::<2, Int>::from_data([[1, 2, 3], [4, 5, 6]], &device);
        let mut optim = AdamWConfig::new().with_weight_decay(0.1).init();
        for _ in 0..3 {
            let loss = model.forward(ids.clone()).powf_scalar(2.0).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            // 4 sites × (A, B) + 4 biases of q/v + head weight and bias.
            assert_eq!(grads.len(), 4 * 2 + 4 + 2, "{name}: gradient count");
            model = optim.step(1e-2, model, grads);
        }
        assert_eq!(
            optim.to_record().len(),
            2 * (4 * 2 + 4 + 2),
            "{name}: AdamW moments only for trainable params"
        );
        let after = param_values(&model);
        // The head trains as PEFT's copy for the adapter; its original stays frozen.
        let trains = |p: &str| {
            p.contains(".adapters.")
                || p.starts_with("head.") && p.contains(".modules_to_save.default.")
                || (p.ends_with(".bias") && (p.contains(".q.") || p.contains(".v.")))
        };
        for ((path, b), (_, a)) in before.iter().zip(&after) {
            if trains(path) {
                assert_ne!(a, b, "{name}: {path} should have trained");
            } else {
                assert_eq!(a, b, "{name}: frozen {path} changed");
            }
        }
    }
}

#[test]
fn model_level_merge_matches_unmerged() {
    let device = Device::flex();
    device.seed(1);
    let config = LoraConfig::new(3, 6.0, &["q", "v", "fc", "out", "emb", "head"])
        .with_init(InitLoraWeights::Random);
    let model = Tiny::new(&device);
    let ids = Tensor::<2, Int>::from_data([[1, 2, 3, 4], [5, 6, 7, 8]], &device);
    let base = host(model.forward(ids.clone()));
    let mut model = inject_adapter(model, &config, "default").unwrap();
    let unmerged = host(model.forward(ids.clone()));
    assert!(
        crate::common::max_diff(&unmerged, &base) > 1e-3,
        "random B changes the output"
    );
    model.merge_active().unwrap();
    assert_close("merged", &host(model.forward(ids.clone())), &unmerged, 1e-5);
    model.unmerge_all().unwrap();
    assert_close(
        "unmerged again",
        &host(model.forward(ids.clone())),
        &unmerged,
        1e-5,
    );
    model.merge_active().unwrap();
    // Disabling unmerges and switches every adapter off: the base model's output again.
    model.set_adapters_disabled(true).unwrap();
    assert_close("disabled", &host(model.forward(ids.clone())), &base, 1e-5);
    model.set_adapters_disabled(false).unwrap();
    assert_close("enabled", &host(model.forward(ids)), &unmerged, 1e-5);
}
