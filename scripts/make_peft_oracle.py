"""PEFT as the oracle for module targeting, pattern keys and adapter-config defaults.

Writes fixtures/peft/oracle.json, every expected value computed by calling PEFT (0.21.2) at
generation time:

  target_cases        peft.tuners.tuners_utils.check_target_module_exists(LoraConfig(**config), key)
                      as a bool (an excluded module, `_ExcludedModule`, is falsy and becomes false).
                      Holds PEFT's own tables from tests/test_tuners_utils.py (REGEX_TEST_CASES, the
                      MoE expert-index test, TestTargetedModuleNames / TestExcludedModuleNames), whose
                      expected values are kept below and asserted, plus our own cases. PEFT's tables
                      are transcribed from the tests/ folder of the peft 0.21.2 sdist
                      (`pip download peft==0.21.2 --no-binary :all: --no-deps`), which matches the
                      installed wheel; GitHub main at the time was older in places (root-level
                      layers_pattern keys such as "bar.1.baz" were expected not to match there).
  config_errors       configs that LoraConfig(...) itself rejects, with PEFT's message
  pattern_cases       peft.utils.other.get_pattern_key(keys, key) (rank_pattern / alpha_pattern lookup);
                      matched_key is null when no key matched (PEFT then returns the module path)
  regex_cases         re.fullmatch(pattern, key) for Python-`re` corner cases (look-around, backrefs,
                      `{,n}`, `\\Z`, set-operation-looking classes, verbose mode, ...); "error" when
                      Python refuses to compile the pattern
  lora_config_fields  every field of the peft.LoraConfig dataclass with its default
  models              get_peft_model on the committed tiny fixtures (built from config.json only, so
                      only module names matter): the modules that became LoRA layers and
                      ModulesToSaveWrappers, what save_pretrained wrote (target_modules,
                      modules_to_save, safetensors keys) and what PeftModel.from_pretrained rebuilt.
                      A case PEFT refuses is recorded with "error" instead.

save_pretrained writes target_modules as list(set) when it was a list/set (order depends on
PYTHONHASHSEED); such lists are sorted here. The script re-runs itself with PYTHONHASHSEED=0 so
that PEFT's messages (which print sets) are reproducible too.

Run: python scripts/make_peft_oracle.py   (torch, transformers, peft==0.21.2 from PyPI)
"""

import copy
import dataclasses
import enum
import json
import os
import re
import sys
import tempfile
import warnings

import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import _ExcludedModule, check_target_module_exists
from peft.utils import ModulesToSaveWrapper
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from peft.utils.other import get_pattern_key
from safetensors import safe_open

PEFT_VERSION = "0.21.2"
REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIXTURES = os.path.join(REPO, "fixtures")
OUT = os.path.join(FIXTURES, "peft", "oracle.json")

PEFT_REGEX = "peft tests/test_tuners_utils.py REGEX_TEST_CASES"

# --------------------------------------------------------------------------------------------
# target_cases
# --------------------------------------------------------------------------------------------

# Transcribed verbatim (comments dropped) from tests/test_tuners_utils.py of the peft 0.21.2 sdist:
# (key, target_modules, layers_to_transform, layers_pattern, expected)
REGEX_TEST_CASES = [
    ("", [], None, None, False),
    ("", ["foo"], None, None, False),
    ("foo", [], None, None, False),
    ("foo", ["foo"], None, None, True),
    ("foo", ["bar"], None, None, False),
    ("foo", ["foo", "bar"], None, None, True),
    ("foo", "foo", None, None, True),
    ("foo", ".*oo", None, None, True),
    ("foo", "fo.*", None, None, True),
    ("foo", ".*bar.*", None, None, False),
    ("foobar", ".*oba.*", None, None, True),
    ("foo.bar.1.baz", ["baz"], [1], ["bar"], True),
    ("foo.bar.1.baz", ["baz"], [0], ["bar"], False),
    ("foo.bar.1.baz", ["baz"], [2], ["bar"], False),
    ("foo.bar.10.baz", ["baz"], [0], ["bar"], False),
    ("foo.bar.10.baz", ["baz"], [1], ["bar"], False),
    ("foo.bar.1.baz", ["baz"], [0, 1, 2], ["bar"], True),
    ("foo.bar.1.baz", ["baz", "spam"], [1], ["bar"], True),
    ("foo.bar.1.baz", ["baz", "spam"], [0, 1, 2], ["bar"], True),
    ("bar.1.baz", ["baz"], [0, 2], ["bar"], False),
    ("bar.1.baz", ["baz"], [0, 1, 2], ["foo"], False),
    ("bar.1.baz", ["baz"], [0, 2], ["bar"], False),
    ("bar.1.baz", ["baz"], [0, 1, 2], ["bar"], True),
    ("foo.whatever.1.baz", ["baz"], [1], [], True),
    ("foo.whatever.1.baz", ["baz"], [0], [], False),
    ("foo.whatever.1.baz", ["baz"], [1], "", True),
    ("foo.whatever.1.baz", ["baz"], [0], "", False),
    ("foo.whatever.1.baz", ["baz"], [1], None, True),
    ("foo.whatever.1.baz", ["baz"], [0], None, False),
    ("transformer.h.1.attn.attention.q_proj.foo", ["q_proj"], None, [], False),
    ("transformer.h.1.attn.attention.q_proj", [], None, [], False),
    ("transformer.h.1.attn.attention.q_proj", ["q_proj"], None, [], True),
    ("transformer.h.1.attn.attention.q_proj", ["q_proj", "v_proj"], None, [], True),
    ("transformer.h.1.attn.attention.resid_dropout", ["q_proj", "v_proj"], None, [], False),
    ("transformer.h.1.attn.attention.q_proj", ["q_proj"], [1], ["h"], True),
    ("transformer.h.1.attn.attention.q_proj", ["q_proj"], [0], ["h"], False),
    ("transformer.h.1.attn.attention.q_proj", ["q_proj"], [2], ["h"], False),
    ("transformer.h.1.attn.attention.q_proj", ["q_proj"], [0, 1, 2], ["h"], True),
    ("transformer.h.1.attn.attention.q_proj", ["q_proj", "v_proj"], [0, 1, 2], ["h"], True),
    ("foo.bar.q_proj", ["q_proj"], None, [], True),
    ("foo.bar.1.baz", ["baz"], [1], ["foo"], False),
    ("foo.bar.001.baz", ["baz"], [1], ["bar"], True),
    ("foo.bar.1.spam.2.baz", ["baz"], [1], ["bar"], True),
    ("foo.bar.2.spam.1.baz", ["baz"], [1], ["bar"], False),
    ("bar.001.baz", ["baz"], [1], ["bar"], True),
    ("bar.1.spam.2.baz", ["baz"], [1], ["bar"], True),
    ("bar.2.spam.1.baz", ["baz"], [1], ["bar"], False),
    ("foo.bar.1.baz", ["baz"], [1], ["baz"], False),
    ("blocks.1.weight", ["weight"], [1], ["blocks"], True),
    ("blocks.1.bias", ["weight"], [1], ["blocks"], False),
    ("mlp.blocks.1.weight", ["weight"], [1], ["blocks"], True),
    ("mlp.blocks.1.bias", ["weight"], [1], ["blocks"], False),
    ("model.layers.1.layers.0.up_proj", ["up_proj"], [1], ["layers"], True),
    ("model.layers.1.layers.0.up_proj", ["up_proj"], [0], ["layers"], False),
    ("layers.1.layers.0.up_proj", ["up_proj"], [1], ["layers"], True),
    ("layers.1.layers.0.up_proj", ["up_proj"], [0], ["layers"], False),
    ("model.layers.1.layers.0.up_proj", ["up_proj"], [1], [r"\d+\.layers"], False),
    ("model.layers.1.layers.0.up_proj", ["up_proj"], [0], [r"\d+\.layers"], True),
    ("layers.1.layers.0.up_proj", ["up_proj"], [1], [r"\d+\.layers"], False),
    ("layers.1.layers.0.up_proj", ["up_proj"], [0], [r"\d+\.layers"], True),
]

# tests/test_tuners_utils.py TestTargetedModuleNames / TestExcludedModuleNames: the MLP test model
# (lin0, relu, drop, lin1, sm) and the module names PEFT's tests expect to be targeted.
MLP_KEYS = ["", "lin0", "relu", "drop", "lin1", "sm"]
MLP_TESTS = [
    ("TestTargetedModuleNames.test_one_targeted_module_regex", {"target_modules": "lin0"}, ["lin0"]),
    ("TestTargetedModuleNames.test_two_targeted_module_regex", {"target_modules": "lin.*"}, ["lin0", "lin1"]),
    ("TestTargetedModuleNames.test_one_targeted_module_list", {"target_modules": ["lin0"]}, ["lin0"]),
    ("TestTargetedModuleNames.test_two_targeted_module_list", {"target_modules": ["lin0", "lin1"]},
     ["lin0", "lin1"]),
    ("TestExcludedModuleNames.test_two_excluded_module_regex",
     {"target_modules": "lin.*", "exclude_modules": "lin0"}, ["lin1"]),
    ("TestExcludedModuleNames.test_two_excluded_module_list",
     {"target_modules": ["lin0", "lin1"], "exclude_modules": "lin0"}, ["lin1"]),
    ("TestExcludedModuleNames.test_multiple_excluded_modules_list",
     {"target_modules": ["lin0", "lin1"], "exclude_modules": ["lin0"]}, ["lin1"]),
    ("TestExcludedModuleNames.test_all_modules_excluded",
     {"target_modules": ["lin0", "lin1", "relu", "drop", "sm"],
      "exclude_modules": ["lin0", "lin1", "relu", "drop", "sm"]}, []),
    ("TestExcludedModuleNames.test_some_modules_excluded_some_unmatched",
     {"target_modules": ["lin0", "non_existent_module"], "exclude_modules": ["lin0"]}, []),
    ("TestExcludedModuleNames.test_exclude_modules_not_used",
     {"target_modules": ["lin1"], "exclude_modules": ["non_existent_module"]}, ["lin1"]),
]

# tests/test_tuners_utils.py test_layers_to_transform_filters_by_layer_not_expert_index (issue #3016):
# ToyMoEModel, 4 layers of self_attn.q_proj + mlp.experts.{0,1}.up_proj; layers_to_transform=[1].
MOE_KEYS = [
    k
    for i in range(4)
    for k in [f"model.layers.{i}.self_attn.q_proj"] + [f"model.layers.{i}.mlp.experts.{e}.up_proj" for e in range(2)]
]
MOE_EXPECTED = {
    "model.layers.1.self_attn.q_proj",
    "model.layers.1.mlp.experts.0.up_proj",
    "model.layers.1.mlp.experts.1.up_proj",
}
MOE_PATTERNS = [None, "layers", ["h", "layers"]]

GPT2_KEYS = ["transformer.wte", "transformer.wpe", "transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
             "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj", "transformer.h.1.attn.c_attn",
             "transformer.h.1.mlp.c_proj", "transformer.h.10.attn.c_attn", "transformer.h.1.ln_1", "lm_head",
             "transformer.h.1.attn", "transformer.h.1", "transformer"]
ROBERTA_KEYS = ["roberta.embeddings.word_embeddings", "roberta.encoder.layer.0.attention.self.query",
                "roberta.encoder.layer.1.attention.self.query", "roberta.encoder.layer.1.attention.self.key",
                "roberta.encoder.layer.1.attention.self.value", "roberta.encoder.layer.1.attention.output.dense",
                "roberta.encoder.layer.1.intermediate.dense", "roberta.encoder.layer.1.output.dense",
                "roberta.encoder.layer.11.attention.self.query", "classifier", "classifier.dense",
                "classifier.out_proj", "lm_head.dense", "lm_head.decoder", "roberta.pooler.dense"]
BERT_KEYS = ["bert.embeddings.word_embeddings", "bert.encoder.layer.0.attention.self.query",
             "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.2.attention.self.value",
             "bert.encoder.layer.1.attention.output.dense", "bert.pooler.dense", "classifier"]


def ours(cfg, keys, why):
    return [(cfg, k, f"ours: {why}", None) for k in keys]


def own_target_cases():
    c = []
    # --- list targets: exact and dotted suffix, never a bare suffix ---
    c += ours({"target_modules": ["c_attn"]},
              GPT2_KEYS + ["c_attn", "transformer.h.1.attn.c_attn_x", "transformer.h.1.attn.xc_attn",
                           "transformer.h.1.attn.c_attn.lora_A"], "list target = exact key or '.'+target suffix")
    c += ours({"target_modules": ["attn.c_attn"]},
              ["transformer.h.1.attn.c_attn", "transformer.h.1.crossattn.c_attn", "attn.c_attn", "c_attn"],
              "dotted list target is a suffix on a segment boundary")
    c += ours({"target_modules": ["transformer.h.1.attn.c_attn"]},
              ["transformer.h.1.attn.c_attn", "transformer.h.0.attn.c_attn", "base.transformer.h.1.attn.c_attn"],
              "full path as list target")
    c += ours({"target_modules": ["h.1.attn.c_attn"]},
              ["transformer.h.1.attn.c_attn", "transformer.h.11.attn.c_attn", "h.1.attn.c_attn"],
              "partial path as list target")
    c += ours({"target_modules": ["query", "value"]}, ROBERTA_KEYS + BERT_KEYS, "BERT/RoBERTa query+value")
    c += ours({"target_modules": ["h.*"]}, ["transformer.h.0.attn", "h.*", "transformer.h.*"],
              "list entries are literal, not regexes")
    c += ours({"target_modules": ["c_.*"]}, ["transformer.h.0.attn.c_attn"], "list entries are literal, not regexes")
    c += ours({"target_modules": [""]}, ["", "foo", "foo."], "empty list entry")
    c += ours({"target_modules": ["lm_head", "c_attn"]}, ["lm_head", "transformer.h.0.attn.c_attn", "lm_head.x"],
              "root-level target")
    c += ours({"target_modules": ["layers.0.fc1"]}, ["layers.0.fc1", "model.layers.0.fc1", "model.layers.10.fc1"],
              "root-level key equal to target")
    # --- regex string targets: re.fullmatch against the whole path ---
    c += ours({"target_modules": r"^(?!.*vision).*\.(q|v)_proj$"},
              ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
               "model.layers.0.self_attn.k_proj", "model.vision_tower.layers.0.self_attn.q_proj",
               "vision.q_proj", "q_proj", "model.layers.0.self_attn.q_proj.base_layer"],
              "regex with negative look-ahead")
    c += ours({"target_modules": r".*(?<!lm_)head"},
              ["lm_head", "model.lm_head", "head", "model.head", "score_head", "head.dense", "model.lm_heads"],
              "regex with negative look-behind")
    c += ours({"target_modules": "c_attn"}, ["c_attn", "transformer.h.0.attn.c_attn"], "regex fullmatch, no suffix rule")
    c += ours({"target_modules": ".*c_attn"}, ["c_attn", "transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_attn_x"],
              "regex .*suffix")
    c += ours({"target_modules": r".*\.c_attn"}, ["c_attn", "transformer.h.0.attn.c_attn"], "regex requiring a dot")
    c += ours({"target_modules": r"transformer\.h\.[01]\.attn\.c_attn"},
              ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn", "transformer.h.2.attn.c_attn",
               "transformer.h.10.attn.c_attn"], "regex character class on layer index")
    c += ours({"target_modules": r".*\.(query|value)"}, ROBERTA_KEYS, "regex alternation group")
    c += ours({"target_modules": "q_proj|.*v_proj"}, ["q_proj", "model.q_proj", "v_proj", "model.v_proj"],
              "top-level alternation: fullmatch applies to the whole alternation")
    c += ours({"target_modules": "(?i).*QUERY"}, ["roberta.encoder.layer.0.attention.self.query"],
              "inline case-insensitive flag")
    c += ours({"target_modules": ".*attn.*"},
              ["transformer.h.0.attn.c_attn", "transformer.h.0.attn", "transformer.h.0.mlp.c_fc"], "regex .*x.*")
    c += ours({"target_modules": "all-linear"}, ["all-linear", "transformer.h.0.attn.c_attn"],
              "'all-linear' is not expanded by check_target_module_exists")
    c += ours({"target_modules": r".*encoder\.layer\.\d+\.attention\.self\.(query|key)"},
              ROBERTA_KEYS, "regex \\d+")
    # --- exclude_modules ---
    c += ours({"target_modules": ["query", "key", "value"], "exclude_modules": ["key"]},
              ROBERTA_KEYS + ["key", "query"], "exclude_modules list (exact or '.'+suffix)")
    c += ours({"target_modules": ["c_attn", "c_proj"], "exclude_modules": ["mlp.c_proj"]}, GPT2_KEYS,
              "exclude_modules dotted list entry")
    c += ours({"target_modules": ["c_attn", "c_proj"], "exclude_modules": ["h.0.attn.c_attn"]},
              ["transformer.h.0.attn.c_attn", "transformer.h.10.attn.c_attn", "transformer.h.1.attn.c_attn"],
              "exclude_modules partial path")
    c += ours({"target_modules": ["c_attn", "c_proj"], "exclude_modules": r".*\.h\.0\..*"}, GPT2_KEYS,
              "exclude_modules regex string (fullmatch)")
    c += ours({"target_modules": ["c_attn", "c_proj"], "exclude_modules": "c_proj"},
              ["c_proj", "transformer.h.0.attn.c_proj", "transformer.h.0.attn.c_attn"],
              "exclude_modules string is a fullmatch regex, no suffix rule")
    c += ours({"target_modules": ".*c_.*", "exclude_modules": ["c_fc"]}, GPT2_KEYS,
              "regex target with list exclude")
    c += ours({"target_modules": ["c_attn"], "exclude_modules": ["attn"]},
              ["transformer.h.0.attn", "transformer.h.0.attn.c_attn"],
              "excluding a parent does not exclude its children")
    c += ours({"target_modules": ["c_attn"], "exclude_modules": []}, ["transformer.h.0.attn.c_attn"],
              "empty exclude_modules")
    # --- modules_to_save keeps adapters off a module and its children ---
    mts_keys = ["classifier", "roberta.classifier", "classifier.dense", "classifier.out_proj", "pre_classifier",
                "distilbert.pre_classifier", "classifier_head", "roberta.encoder.layer.0.output.dense"]
    c += ours({"target_modules": ["dense", "out_proj", "classifier", "pre_classifier", "classifier_head"],
               "modules_to_save": ["classifier"]}, mts_keys, "modules_to_save excludes module and children")
    c += ours({"target_modules": ["dense", "out_proj", "classifier"], "modules_to_save": ["classifier.out_proj"]},
              ["classifier.out_proj", "classifier.dense", "classifier", "roberta.classifier.out_proj",
               "classifierXout_proj"], "modules_to_save entry with a dot (inserted into a regex unescaped)")
    c += ours({"target_modules": ["score", "scores"], "modules_to_save": ["score"]}, ["score", "scores", "model.score"],
              "modules_to_save whole segment")
    c += ours({"target_modules": ["lm_head", "c_attn"], "modules_to_save": ["lm_head"]},
              ["lm_head", "transformer.h.0.attn.c_attn"], "modules_to_save lm_head")
    c += ours({"target_modules": ["c_attn"], "modules_to_save": ["h.0"]},
              ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn", "transformer.h.10.attn.c_attn"],
              "modules_to_save path prefix excludes children")
    c += ours({"target_modules": ["c_attn"], "modules_to_save": ["h.*"]},
              ["transformer.h.1.attn.c_attn", "c_attn"], "modules_to_save entries are regex fragments")
    c += ours({"target_modules": ".*c_attn", "modules_to_save": ["attn"]},
              ["transformer.h.0.attn.c_attn", "transformer.h.0.crossattn.c_attn"], "modules_to_save with regex target")
    # --- layers_to_transform / layers_pattern ---
    c += ours({"target_modules": ["c_attn"], "layers_to_transform": 1}, GPT2_KEYS, "layers_to_transform int")
    c += ours({"target_modules": ["c_attn"], "layers_to_transform": [0, 1]}, GPT2_KEYS, "layers_to_transform list")
    c += ours({"target_modules": ["c_attn"], "layers_to_transform": []},
              ["transformer.h.0.attn.c_attn", "lm_head"], "empty layers_to_transform means no layer filter")
    c += ours({"target_modules": ["c_attn"], "layers_to_transform": [-1]}, ["transformer.h.1.attn.c_attn"],
              "negative layer index")
    c += ours({"target_modules": ["c_attn"], "layers_to_transform": 0, "layers_pattern": "h"},
              ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"], "layers_to_transform 0 (falsy int)")
    root = ["h.3.attn.c_attn", "transformer.h.3.attn.c_attn", "h.3.c_attn", "x.h.3.c_attn", "base.h.003.attn.c_attn"]
    for lp in (None, "", [], "h", ["layers", "h"]):
        cfg = {"target_modules": ["c_attn"], "layers_to_transform": [3]}
        if lp is not None:
            cfg["layers_pattern"] = lp
        c += ours(cfg, root, f"root-level keys, layers_pattern {lp!r}")
    fc = ["layers.0.fc1", "model.layers.0.fc1", "model.layers.0.mlp.fc1", "decoder.model.layers.0.fc1", "0.fc1",
          "model.0.fc1", "model.0.mlp.fc1", "layers.10.fc1"]
    for lp in (None, "", "layers", "model.layers", "layer"):
        cfg = {"target_modules": ["fc1"], "layers_to_transform": [0]}
        if lp is not None:
            cfg["layers_pattern"] = lp
        c += ours(cfg, fc, f"root-level/Sequential keys, layers_pattern {lp!r}")
    rob = ["roberta.encoder.layer.0.attention.self.query", "roberta.encoder.layer.1.attention.self.query",
           "roberta.encoder.layer.1.attention.self.value", "roberta.encoder.layer.11.attention.self.query",
           "bert.encoder.layer.1.attention.self.query", "model.layers.1.self_attn.query", "query"]
    for lp in (None, "", [], "layer", "layers", ["layers", "h"], "encoder.layer", ["layers", "layer"]):
        cfg = {"target_modules": ["query", "value"], "layers_to_transform": [1]}
        if lp is not None:
            cfg["layers_pattern"] = lp
        c += ours(cfg, rob, f"BERT/RoBERTa paths, layers_pattern {lp!r}")
    moe = ["model.layers.1.experts.0.w1", "model.layers.0.experts.1.w1", "model.layers.1.block_sparse_moe.experts.0.w1",
           "model.layers.2.experts.1.w1", "layers.1.experts.0.w1", "model.language_model.layers.0.mlp.experts.1.w1"]
    for ltt in ([0], [1]):
        for lp in (None, "layers", ["h", "layers"], "experts", ["experts", "layers"], "lay.*"):
            cfg = {"target_modules": ["w1"], "layers_to_transform": ltt}
            if lp is not None:
                cfg["layers_pattern"] = lp
            c += ours(cfg, moe, f"MoE nested index, layers_pattern {lp!r}")
    c += ours({"target_modules": ["lm_head", "score", "wte"], "layers_to_transform": [0]},
              ["lm_head", "score", "transformer.wte", "model.score"],
              "no layer index: a suffix match is filtered out, an exact key match skips the layer filter")
    c += ours({"target_modules": ["transformer.h.0.attn.c_attn", "c_proj"], "layers_to_transform": [1],
               "layers_pattern": "h"},
              ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj",
               "x.transformer.h.0.attn.c_attn"],
              "an exact key match skips layers_to_transform")
    c += ours({"target_modules": ["c_attn"], "layers_pattern": ""},
              ["transformer.h.0.attn.c_attn"], "empty layers_pattern without layers_to_transform is accepted")
    c += ours({"target_modules": ["c_attn"], "layers_pattern": []},
              ["transformer.h.0.attn.c_attn"], "empty list layers_pattern without layers_to_transform is accepted")
    # --- configs PEFT should reject (they land in config_errors) ---
    c += ours({"target_modules": r".*c_attn", "layers_to_transform": [0]}, ["transformer.h.0.attn.c_attn"],
              "layers_to_transform with a regex target")
    c += ours({"target_modules": r".*c_attn", "layers_pattern": "h"}, ["transformer.h.0.attn.c_attn"],
              "layers_pattern with a regex target")
    c += ours({"target_modules": r".*c_attn", "layers_pattern": "", "layers_to_transform": []},
              ["transformer.h.0.attn.c_attn"], "empty layers_pattern and layers_to_transform with a regex target")
    c += ours({"target_modules": ["c_attn"], "layers_pattern": "h"}, ["transformer.h.0.attn.c_attn"],
              "layers_pattern without layers_to_transform")
    c += ours({"target_modules": ["c_attn"], "layers_pattern": ["h"]}, ["transformer.h.0.attn.c_attn"],
              "list layers_pattern without layers_to_transform")
    c += ours({"target_modules": ["c_attn"], "target_parameters": "c_attn.weight"}, ["transformer.h.0.attn.c_attn"],
              "target_parameters as a string")
    c += ours({"target_modules": ["c_attn"], "task_type": "NOT_A_TASK"}, ["transformer.h.0.attn.c_attn"],
              "unknown task_type")
    # --- target_modules None with target_parameters ---
    c += ours({"target_modules": None, "target_parameters": ["c_attn.weight"]}, ["transformer.h.0.attn.c_attn"],
              "no target_modules, only target_parameters")
    return c


def peft_table_cases():
    c = []
    for key, tm, ltt, lp, expected in REGEX_TEST_CASES:
        cfg = {"target_modules": tm, "layers_to_transform": ltt, "layers_pattern": lp}
        c.append((cfg, key, PEFT_REGEX, expected))
    for name, cfg, expected in MLP_TESTS:
        for key in MLP_KEYS:
            c.append((cfg, key, f"peft tests/test_tuners_utils.py {name}", key in expected))
    for lp in MOE_PATTERNS:
        cfg = {"target_modules": ["q_proj", "up_proj"], "layers_pattern": lp, "layers_to_transform": [1]}
        for key in MOE_KEYS:
            c.append((cfg, key, "peft tests/test_tuners_utils.py test_layers_to_transform_filters_by_layer_not_expert_index",
                      key in MOE_EXPECTED))
    # TestExcludedModuleNames.test_realistic_example: Bloom with its default target modules (from PEFT's
    # mapping) and exclude_modules as a string; expected: every layer except h.2.
    bloom = sorted(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["bloom"])
    cfg = {"target_modules": bloom, "exclude_modules": "transformer.h.2.self_attention.query_key_value"}
    for i in range(5):
        key = f"transformer.h.{i}.self_attention.query_key_value"
        c.append((cfg, key, "peft tests/test_tuners_utils.py TestExcludedModuleNames.test_realistic_example "
                  "(target_modules = PEFT's bloom default)", i != 2))
    # tests/test_config.py test_regex_with_layer_indexing_lora: the valid config
    cfg = {"target_modules": ["foo"], "layers_pattern": ["bar"], "layers_to_transform": [0]}
    for key in ["x.bar.0.foo", "x.bar.1.foo"]:
        c.append((cfg, key, "peft tests/test_config.py test_regex_with_layer_indexing_lora (valid_config)", None))
    c.append(({"target_modules": ".*foo", "layers_to_transform": [0]}, "x.foo",
              "peft tests/test_config.py test_regex_with_layer_indexing_lora (invalid_config1)", None))
    c.append(({"target_modules": ".*foo", "layers_pattern": ["bar"]}, "x.foo",
              "peft tests/test_config.py test_regex_with_layer_indexing_lora (invalid_config2)", None))
    c.append(({"target_modules": ["query", "value"], "layers_pattern": "model.layers", "r": 8, "lora_alpha": 16},
              "model.layers.0.query", "peft tests/test_config.py test_lora_config_layers_to_transform_validation",
              None))
    return c


def drop_none(cfg):
    return {k: v for k, v in cfg.items() if v is not None or k == "target_modules"}


def make_target_cases():
    cases, errors, seen_err = [], [], set()
    for cfg, key, source, expected in peft_table_cases() + own_target_cases():
        cfg = drop_none(cfg)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                config = LoraConfig(**cfg)
        except (ValueError, TypeError) as e:
            assert expected is None or expected is False, (cfg, key, source)
            ident = json.dumps(cfg, sort_keys=True)
            if ident not in seen_err:
                seen_err.add(ident)
                errors.append({"config": cfg, "source": source, "error": f"{type(e).__name__}: {e}"})
            continue
        result = check_target_module_exists(config, key)
        matched = bool(result)
        if isinstance(result, _ExcludedModule):
            assert matched is False
        if expected is not None:
            assert matched == expected, (cfg, key, source, result)
        cases.append({"config": cfg, "key": key, "matched": matched, "source": source,
                      "excluded": isinstance(result, _ExcludedModule)})
    return cases, errors


# --------------------------------------------------------------------------------------------
# pattern_cases
# --------------------------------------------------------------------------------------------

# tests/test_tuners_utils.py TestRankAndAlphaPattern: the nested Outer/Middle/Inner model and, per
# test, the pattern dict and the expected r (rank tests, default 8) or scaling (alpha tests).
OUTER_KEYS = ["foo", "bar", "module.foo", "module.foobar", "module.module.foo", "module.module.barfoo"]
RANK_TESTS = [
    ("test_rank_and_alpha_pattern_no_matching_keys", {"bla": 4, "oof": 6}, [8, 8, 8, 8, 8, 8]),
    ("test_rank_pattern_target_all", {"foo": 16}, [16, 8, 16, 8, 16, 8]),
    ("test_rank_pattern_target_outer", {"^foo": 16}, [16, 8, 8, 8, 8, 8]),
    ("test_rank_pattern_target_middle", {"^module.foo": 16}, [8, 8, 16, 8, 8, 8]),
    ("test_rank_pattern_target_inner", {"module.module.foo": 16}, [8, 8, 8, 8, 16, 8]),
    ("test_rank_pattern_target_inner_with_caret", {"^module.module.foo": 16}, [8, 8, 8, 8, 16, 8]),
    ("test_rank_pattern_target_middle_inner", {"module.foo": 16}, [8, 8, 16, 8, 16, 8]),
    ("test_rank_pattern_target_middle_inner_different_ranks", {"^module.foo": 16, "^module.module.foo": 24},
     [8, 8, 16, 8, 24, 8]),
    ("test_rank_pattern_target_outer_middle", {"^foo": 16, "^module.foo": 24}, [16, 8, 24, 8, 8, 8]),
    ("test_rank_pattern_target_outer_inner", {"^foo": 16, "module.module.foo": 24}, [16, 8, 8, 8, 24, 8]),
    ("test_rank_pattern_target_outer_inner_with_caret", {"^foo": 16, "^module.module.foo": 24},
     [16, 8, 8, 8, 24, 8]),
    ("test_rank_pattern_target_outer_middle_inner_with_caret", {"^foo": 16, "^module.foo": 24, "^module.module.foo": 32},
     [16, 8, 24, 8, 32, 8]),
    ("test_rank_pattern_target_outer_middle_inner_with_caret_dict_order",
     {"^module.module.foo": 32, "^module.foo": 24, "^foo": 16}, [16, 8, 24, 8, 32, 8]),
]


def pattern_match(keys, key):
    """PEFT's get_pattern_key, with "nothing matched" (it returns `key` itself) mapped to None."""
    got = get_pattern_key(keys, key)
    if got in keys:
        # `key` may itself be one of the keys; then PEFT returned it because the loop reached it and
        # its regex matched (a module path always matches itself), so it is a real match.
        assert re.match(rf"(.*\.)?({got})$", key), (keys, key, got)
        return got
    assert got == key
    return None


def make_pattern_cases():
    cases = []
    for name, pattern, expected_r in RANK_TESTS:
        keys = list(pattern)
        for key, r in zip(OUTER_KEYS, expected_r):
            m = pattern_match(keys, key)
            assert pattern.get(m, 8) == r, (name, key, m)
            cases.append({"keys": keys, "key": key, "matched_key": m,
                          "source": f"peft tests/test_tuners_utils.py TestRankAndAlphaPattern.{name}"})
    # tests/test_initialization.py test_rank_alpha_pattern_override: rank_pattern {"linear": 8},
    # alpha_pattern {"0.linear": 2} on nn.Sequential(layer, layer) -> module path "0.linear".
    for keys, expected in ((["linear"], "linear"), (["0.linear"], "0.linear")):
        assert pattern_match(keys, "0.linear") == expected
        cases.append({"keys": keys, "key": "0.linear", "matched_key": expected,
                      "source": "peft tests/test_initialization.py test_rank_alpha_pattern_override"})
    own = [
        ([r"transformer\.h\.0\.attn\.c_attn", "c_attn"],
         ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn", "transformer.h.0.attn.c_proj"],
         "escaped full path before a suffix"),
        (["c_attn", r"transformer\.h\.0\.attn\.c_attn"], ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"],
         "order dependence: first matching key wins"),
        (["c_attn", "transformer.h.0.attn.c_attn"], ["transformer.h.0.attn.c_attn"],
         "key equal to a later pattern still takes the earlier match"),
        (["transformer.h.0.attn.c_attn"], ["transformer.h.0.attn.c_attn", "transformer.hX0.attn.c_attn",
                                           "transformer.h.1.attn.c_attn", "base.transformer.h.0.attn.c_attn"],
         "unescaped dots are wildcards"),
        ([r"h\.[01]\.attn\.c_attn"], ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn",
                                      "transformer.h.2.attn.c_attn", "transformer.h.10.attn.c_attn",
                                      "h.0.attn.c_attn"], "character class"),
        ([".*query"], ["roberta.encoder.layer.0.attention.self.query", "roberta.encoder.layer.0.attention.self.query_proj",
                       "query"], ".* prefix"),
        (["attention"], ["roberta.encoder.layer.0.attention.self.query", "roberta.encoder.layer.0.attention"],
         "a middle segment does not match"),
        (["encoder.layer"], ["roberta.encoder.layer.0.attention.self.query"], "a middle path does not match"),
        (["layer.1.*"], ["roberta.encoder.layer.1.attention.self.query", "roberta.encoder.layer.0.attention.self.query",
                         "roberta.encoder.layer.11.attention.self.query"], "middle part followed by .*"),
        (["^transformer"], ["transformer.h.0.attn.c_attn", "transformer"], "leading ^"),
        (["^transformer.*"], ["transformer.h.0.attn.c_attn", "base.transformer.h.0.attn.c_attn"], "leading ^ with .*"),
        (["^c_attn"], ["c_attn", "transformer.h.0.attn.c_attn"], "leading ^ on a suffix"),
        (["^h.0.attn.c_attn"], ["transformer.h.0.attn.c_attn", "h.0.attn.c_attn"], "leading ^ on a partial path"),
        (["attn"], ["transformer.h.0.attn.c_attn", "transformer.h.0.attn"], "suffix must start at a segment"),
        (["._attn", "_attn"], ["transformer.h.0.attn.c_attn"], "'.' wildcard can cross into a segment"),
        (["c_attn|c_proj"], ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_proj", "transformer.h.0.mlp.c_fc"],
         "alternation inside the key"),
        (["c_attn$"], ["transformer.h.0.attn.c_attn"], "trailing $"),
        (["(q|v)_proj"], ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"], "group"),
        (["lin"], ["0.linear"], "prefix of the last segment does not match"),
        (["linear"], ["0.linear", "linear"], "segment suffix"),
        (["0.linear"], ["1.linear", "model.0.linear", "model.10.linear"], "index.name"),
        ([], ["transformer.h.0.attn.c_attn"], "no keys"),
        (["foo"], ["foo"], "root key equal to the pattern"),
        (["h\\.0\\..*"], ["transformer.h.0.attn.c_attn", "transformer.h.10.attn.c_attn"], "escaped prefix and .*"),
        (["(?i)C_ATTN"], ["transformer.h.0.attn.c_attn"], "inline flag (not at the start once wrapped)"),
    ]
    for keys, paths, why in own:
        for key in paths:
            case = {"keys": keys, "key": key, "source": f"ours: {why}"}
            try:
                case["matched_key"] = pattern_match(keys, key)
            except re.error as e:
                case["matched_key"] = None
                case["error"] = f"re.error: {e}"
            cases.append(case)
    return cases


# --------------------------------------------------------------------------------------------
# regex_cases
# --------------------------------------------------------------------------------------------

REGEX_TABLE = [
    (r".*\.(q|v)_proj", ["model.layers.0.q_proj", "model.layers.0.k_proj", "q_proj"]),
    (r"model\.layers\.\d+\.self_attn\.q_proj", ["model.layers.12.self_attn.q_proj", "model.layers.x.self_attn.q_proj"]),
    (r"^(?!.*vision).*\.(q|v)_proj$", ["model.layers.0.q_proj", "model.vision.layers.0.q_proj"]),
    (r"(?=.*attn).*c_proj", ["transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_proj"]),
    (r".*(?<=attn\.)c_proj", ["transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_proj"]),
    (r".*(?<!lm_)head", ["lm_head", "score_head", "head"]),
    (r"(?P<x>a)(?P=x)", ["aa", "ab", "a"]),
    (r"(a)\1", ["aa", "ab"]),
    (r"a.*?b", ["axxb", "axbxb"]),
    (r"a+?", ["aaa"]),
    (r"a{,2}", ["", "a", "aa", "aaa", "a{,2}"]),
    (r"a{2,}", ["a", "aa", "aaaa"]),
    (r"a{,}", ["", "aaa", "a{,}"]),
    (r"a{x}", ["a{x}", "a"]),
    (r"a{1,2", ["a{1,2", "a"]),
    (r"abc\Z", ["abc", "abc\n"]),
    (r"abc$", ["abc", "abc\n"]),
    ("abc$\n", ["abc\n"]),
    (r"\Aabc", ["abc"]),
    (r"(?i)query", ["QUERY", "Query", "query"]),
    (r"(?i:Q)uery", ["query", "qUERY"]),
    (r"a(?i)b", ["ab"]),
    (r"[a&&b]+", ["a", "b", "&", "a&&b"]),
    (r"[a--b]+", ["a", "-", "b"]),
    (r"[+--]+", ["+", ",", "-", "+,-"]),
    (r"[a~~b]+", ["a", "~", "b", "a~~b"]),
    (r"[a||b]+", ["a", "|", "b"]),
    (r"[[]", ["[", "[]"]),
    (r"[[a]]", ["a]", "[]", "a"]),
    (r"[]a]", ["]", "a"]),
    (r"[^]a]", ["b", "]"]),
    (r"[[:alpha:]]+", ["abc", ":", "[:alpha:]"]),
    (r"(?x) a [ ] b ", ["a b", "ab"]),
    (r"(?x) a b # comment", ["ab", "a b"]),
    (r"(?x)a\ b", ["a b", "ab"]),
    (r"\d+", ["123", "\u0661\u0662", "1a"]),
    (r"\w+", ["abc_1", "\u00e9t\u00e9", "a-b"]),
    (r"\bfoo\b.*", ["foo.bar", "foobar"]),
    (r"a++b", ["aab"]),
    (r"a++a", ["aaa"]),
    (r"(?>a+)a", ["aaa"]),
    (r"(?s).+", ["a\nb"]),
    (r".+", ["a\nb"]),
    (r"(a|ab)(c|bcd)(d*)", ["abcd"]),
    (r"\.", [".", "a"]),
    (r"\x41", ["A"]),
    (r"\u0041", ["A"]),
    (r"\N{LATIN SMALL LETTER A}", ["a"]),
    (r"\p{L}+", ["abc"]),
    (r"[\w.]+", ["model.layers.0"]),
    (r"(?#comment)abc", ["abc"]),
    (r"(?P<name>abc)", ["abc"]),
    (r"(?<name>abc)", ["abc"]),
    (r"(?:a|b)*", ["abab", ""]),
    (r"a|b|", ["", "a", "c"]),
    (r"*a", ["a"]),
    (r"a**", ["aa"]),
    (r"(?(1)a|b)", ["b"]),
    (r"(a)?(?(1)b|c)", ["ab", "c", "b"]),
]


def make_regex_cases():
    cases = []
    for pattern, keys in REGEX_TABLE:
        for key in keys:
            case = {"pattern": pattern, "key": key}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # FutureWarning for possible set operations
                    case["matched"] = re.fullmatch(pattern, key) is not None
            except re.error as e:
                case["matched"] = None
                case["error"] = f"re.error: {e}"
            cases.append(case)
    return cases


# --------------------------------------------------------------------------------------------
# lora_config_fields
# --------------------------------------------------------------------------------------------


def jsonable(v):
    if isinstance(v, enum.Enum):
        return jsonable(v.value)
    if isinstance(v, (set, frozenset)):
        return sorted(jsonable(x) for x in v)
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return jsonable(dataclasses.asdict(v))
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return None


def make_lora_config_fields():
    out = {}
    for f in dataclasses.fields(LoraConfig):
        if f.default is not dataclasses.MISSING:
            d = f.default
        elif f.default_factory is not dataclasses.MISSING:
            d = f.default_factory()
        else:
            d = None
        out[f.name] = jsonable(d)
    return out


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------

GPT2 = ("gpt2/tiny-a", "GPT2LMHeadModel")
ROB = ("encoder/roberta-a", "RobertaForSequenceClassification")
BERT = ("encoder/bert-b", "BertForSequenceClassification")
MLM = ("encoder/roberta-mlm", "RobertaForMaskedLM")

MODEL_CASES = [
    # name, (fixture, class), task_type, LoraConfig kwargs
    ("gpt2-all-linear", GPT2, None, {"target_modules": "all-linear"}),
    ("gpt2-all-linear-causal", GPT2, "CAUSAL_LM", {"target_modules": "all-linear"}),
    ("gpt2-ALL-LINEAR", GPT2, None, {"target_modules": "ALL-LINEAR"}),
    ("gpt2-All-Linear-causal", GPT2, "CAUSAL_LM", {"target_modules": "All-Linear"}),
    ("gpt2-all-linear-exclude-c_fc", GPT2, "CAUSAL_LM", {"target_modules": "all-linear", "exclude_modules": ["c_fc"]}),
    ("gpt2-c_attn", GPT2, "CAUSAL_LM", {"target_modules": ["c_attn"]}),
    ("gpt2-c_attn-ltt1", GPT2, "CAUSAL_LM", {"target_modules": ["c_attn"], "layers_to_transform": [1]}),
    ("gpt2-c_attn-ltt1-int-h", GPT2, None, {"target_modules": ["c_attn"], "layers_to_transform": 1,
                                            "layers_pattern": "h"}),
    ("gpt2-c_attn-ltt0-pattern-empty", GPT2, None, {"target_modules": ["c_attn"], "layers_to_transform": [0],
                                                    "layers_pattern": ""}),
    ("gpt2-c_attn-ltt0-pattern-layer", GPT2, None, {"target_modules": ["c_attn"], "layers_to_transform": [0],
                                                    "layers_pattern": "layer"}),
    ("gpt2-regex", GPT2, None, {"target_modules": r".*\.h\.1\..*c_(attn|proj)"}),
    ("gpt2-exclude-mlp.c_proj", GPT2, None, {"target_modules": ["c_attn", "c_proj"], "exclude_modules": ["mlp.c_proj"]}),
    ("gpt2-wte", GPT2, None, {"target_modules": ["wte"]}),
    ("gpt2-wte-c_attn-causal", GPT2, "CAUSAL_LM", {"target_modules": ["wte", "c_attn"]}),
    ("gpt2-lm_head", GPT2, None, {"target_modules": ["lm_head"]}),
    ("gpt2-mts-lm_head", GPT2, None, {"target_modules": ["c_attn"], "modules_to_save": ["lm_head"]}),
    ("gpt2-mts-ln_f", GPT2, None, {"target_modules": ["c_attn"], "modules_to_save": ["ln_f"]}),
    ("gpt2-mts-bare-suffix-proj", GPT2, None, {"target_modules": ["c_attn"], "modules_to_save": ["proj"]}),
    ("gpt2-no-match", GPT2, None, {"target_modules": ["nonexistent"]}),
    ("gpt2-default-targets", GPT2, "CAUSAL_LM", {}),
    ("roberta-a-all-linear", ROB, None, {"target_modules": "all-linear"}),
    ("roberta-a-all-linear-seqcls", ROB, "SEQ_CLS", {"target_modules": "all-linear"}),
    ("roberta-a-query-value-seqcls", ROB, "SEQ_CLS", {"target_modules": ["query", "value"]}),
    ("roberta-a-query-value", ROB, None, {"target_modules": ["query", "value"]}),
    ("roberta-a-mts-classifier-dense", ROB, None, {"target_modules": ["dense"], "modules_to_save": ["classifier"]}),
    ("roberta-a-mts-classifier-dense-seqcls", ROB, "SEQ_CLS", {"target_modules": ["dense"],
                                                               "modules_to_save": ["classifier"]}),
    ("roberta-a-dense-seqcls", ROB, "SEQ_CLS", {"target_modules": ["dense"]}),
    ("roberta-a-mts-dense", ROB, None, {"target_modules": ["query", "value"], "modules_to_save": ["dense"]}),
    ("roberta-a-mts-dense-seqcls", ROB, "SEQ_CLS", {"target_modules": ["query", "value"], "modules_to_save": ["dense"]}),
    ("roberta-a-mts-out_proj-seqcls", ROB, "SEQ_CLS", {"target_modules": ["query", "value"],
                                                       "modules_to_save": ["out_proj"]}),
    ("roberta-a-dense-and-mts-dense", ROB, None, {"target_modules": ["dense"], "modules_to_save": ["dense"]}),
    ("roberta-a-exclude-key", ROB, None, {"target_modules": ["query", "key", "value"], "exclude_modules": ["key"]}),
    ("roberta-a-exclude-key-seqcls", ROB, "SEQ_CLS", {"target_modules": ["query", "key", "value"],
                                                      "exclude_modules": ["key"]}),
    ("roberta-a-word_embeddings", ROB, None, {"target_modules": ["word_embeddings"]}),
    ("roberta-a-word_embeddings-query-seqcls", ROB, "SEQ_CLS", {"target_modules": ["word_embeddings", "query"]}),
    ("roberta-a-classifier-target-seqcls", ROB, "SEQ_CLS", {"target_modules": ["query", "out_proj"]}),
    ("roberta-a-default-targets-seqcls", ROB, "SEQ_CLS", {}),
    ("bert-b-all-linear", BERT, None, {"target_modules": "all-linear"}),
    ("bert-b-all-linear-seqcls", BERT, "SEQ_CLS", {"target_modules": "all-linear"}),
    ("bert-b-query-value-seqcls", BERT, "SEQ_CLS", {"target_modules": ["query", "value"]}),
    ("bert-b-query-value-ltt0-layer", BERT, None, {"target_modules": ["query", "value"], "layers_to_transform": [0],
                                                   "layers_pattern": "layer"}),
    ("bert-b-query-value-ltt0-layer-seqcls", BERT, "SEQ_CLS", {"target_modules": ["query", "value"],
                                                               "layers_to_transform": [0], "layers_pattern": "layer"}),
    ("bert-b-query-value-ltt0", BERT, None, {"target_modules": ["query", "value"], "layers_to_transform": [0]}),
    ("bert-b-query-value-ltt2-layers-layer", BERT, None, {"target_modules": ["query", "value"],
                                                          "layers_to_transform": 2,
                                                          "layers_pattern": ["layers", "layer"]}),
    ("bert-b-query-value-ltt0-layers", BERT, None, {"target_modules": ["query", "value"], "layers_to_transform": [0],
                                                    "layers_pattern": "layers"}),
    ("bert-b-exclude-regex", BERT, None, {"target_modules": ["query", "value"], "exclude_modules": r".*layer\.0\..*"}),
    ("bert-b-exclude-key", BERT, "SEQ_CLS", {"target_modules": ["query", "key", "value"], "exclude_modules": ["key"]}),
    ("bert-b-word_embeddings", BERT, None, {"target_modules": ["word_embeddings"]}),
    ("bert-b-mts-pooler-seqcls", BERT, "SEQ_CLS", {"target_modules": ["query", "value"], "modules_to_save": ["pooler"]}),
    ("bert-b-dense-seqcls", BERT, "SEQ_CLS", {"target_modules": ["dense"]}),
    ("roberta-mlm-all-linear", MLM, None, {"target_modules": "all-linear"}),
    ("roberta-mlm-all-linear-seqcls", MLM, "SEQ_CLS", {"target_modules": "all-linear"}),
    ("roberta-mlm-dense", MLM, None, {"target_modules": ["dense"]}),
    ("roberta-mlm-word_embeddings", MLM, None, {"target_modules": ["word_embeddings"]}),
    ("roberta-mlm-decoder", MLM, None, {"target_modules": ["decoder"]}),
    ("roberta-mlm-mts-lm_head", MLM, None, {"target_modules": ["query", "value"], "modules_to_save": ["lm_head"]}),
]


def build(fixture, cls_name):
    config = transformers.AutoConfig.from_pretrained(os.path.join(FIXTURES, fixture))
    torch.manual_seed(0)
    return getattr(transformers, cls_name)._from_config(config).eval()


def inspect(model):
    lora, mts = [], []
    for name, m in model.named_modules():
        if isinstance(m, LoraLayer):
            lora.append(name)
        if isinstance(m, ModulesToSaveWrapper):
            mts.append(name)
    return sorted(lora), sorted(mts)




def run_model_case(name, fixture_cls, task_type, kwargs):
    fixture, cls_name = fixture_cls
    rec = {"name": name, "fixture": fixture, "class": cls_name, "task_type": task_type, "config": kwargs}
    base = build(fixture, cls_name)
    cfg = copy.deepcopy(kwargs)  # PEFT extends modules_to_save in place for SEQ_CLS
    if task_type is not None:
        cfg["task_type"] = task_type
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = get_peft_model(base, LoraConfig(**cfg))
    except Exception as e:  # PEFT refused the case: record its message
        rec["error"] = f"{type(e).__name__}: {e}"
        return rec
    # PEFT's own warnings only (not transformers' deprecation notices)
    peft_dir = os.path.dirname(peft.__file__)
    rec["warnings"] = sorted({str(w.message) for w in caught if os.path.abspath(w.filename).startswith(peft_dir)})
    rec["lora_modules"], rec["modules_to_save"] = inspect(model.base_model.model)
    with tempfile.TemporaryDirectory() as d:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save_pretrained(d)
        with open(os.path.join(d, "adapter_config.json")) as f:
            written = json.load(f)
        target_modules = written.get("target_modules")
        if isinstance(target_modules, list):
            # save_pretrained writes the set as list(set): its order is not reproducible, so sort it
            target_modules = sorted(target_modules)
        # modules_to_save is a plain list in LoraConfig and is written in order
        rec["saved_config"] = {"target_modules": target_modules, "modules_to_save": written.get("modules_to_save")}
        with safe_open(os.path.join(d, "adapter_model.safetensors"), "pt") as f:
            rec["saved_keys"] = sorted(f.keys())
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reloaded = PeftModel.from_pretrained(build(fixture, cls_name), d)
        except Exception as e:  # PEFT cannot load what it saved: record its message
            rec["reload_error"] = f"{type(e).__name__}: {e}"
            return rec
        rec["reloaded_lora_modules"], rec["reloaded_modules_to_save"] = inspect(reloaded.base_model.model)
    return rec


def adapter_state(peft_model):
    """What a user of several adapters observes: per LoRA layer, its adapters and which of them
    are active; and the parameter counts of print_trainable_parameters."""
    layers = {}
    for name, m in peft_model.base_model.model.named_modules():
        if isinstance(m, LoraLayer):
            have = sorted(set(m.lora_A.keys()) | set(m.lora_embedding_A.keys()))
            layers[name] = {"adapters": have, "active": [a for a in m.active_adapters if a in have]}
    params = list(peft_model.named_parameters())
    return {
        "layers": layers,
        "trainable": sum(p.numel() for _, p in params if p.requires_grad),
        "lora_trainable": sum(p.numel() for n, p in params if p.requires_grad and "lora_" in n),
        "total": sum(p.numel() for _, p in params),
    }


# Adapter configs of the multi-adapter sequence (rank, alpha, targets).
MULTI_A = {"r": 2, "lora_alpha": 4, "target_modules": ["c_attn"]}
MULTI_B = {"r": 3, "lora_alpha": 3, "target_modules": ["c_attn", "c_fc"]}


def make_multi_adapter():
    """PEFT's multi-adapter rules on tiny-a: add_adapter, set_adapter, delete_adapter, bias."""
    steps = []
    pm = get_peft_model(build("gpt2/tiny-a", "GPT2LMHeadModel"), LoraConfig(**MULTI_A), adapter_name="a")
    steps.append({"op": "inject a", "state": adapter_state(pm)})
    pm.add_adapter("b", LoraConfig(**MULTI_B))
    steps.append({"op": "add b", "state": adapter_state(pm)})
    pm.base_model.set_adapter(["a", "b"])
    steps.append({"op": "activate a b", "state": adapter_state(pm)})
    pm.base_model.set_adapter("a")
    steps.append({"op": "activate a", "state": adapter_state(pm)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.delete_adapter("a")
    steps.append({"op": "delete a", "state": adapter_state(pm)})
    bias = []
    for first, second in (("all", "lora_only"), ("all", "none"), ("none", "all")):
        pm = get_peft_model(build("gpt2/tiny-a", "GPT2LMHeadModel"),
                            LoraConfig(**MULTI_A, bias=first), adapter_name="a")
        try:
            pm.add_adapter("b", LoraConfig(**MULTI_B, bias=second))
            error = None
        except ValueError as e:
            error = str(e)
        bias.append({"first": first, "second": second, "error": error})
    return {"a": MULTI_A, "b": MULTI_B, "steps": steps, "bias": bias}


def main():
    # PEFT's error messages print sets (e.g. "Target modules {'value', 'query'} not found"), whose order
    # depends on string hashing: pin it so the output is reproducible.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, "PYTHONHASHSEED": "0"})
    assert peft.__version__ == PEFT_VERSION, f"need peft=={PEFT_VERSION}, found {peft.__version__}"
    transformers.logging.set_verbosity_error()
    target_cases, config_errors = make_target_cases()
    out = {
        "peft_version": peft.__version__,
        "target_cases": target_cases,
        "config_errors": config_errors,
        "pattern_cases": make_pattern_cases(),
        "regex_cases": make_regex_cases(),
        "lora_config_fields": make_lora_config_fields(),
        "models": [run_model_case(*case) for case in MODEL_CASES],
        "multi_adapter": make_multi_adapter(),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True, ensure_ascii=True)
        f.write("\n")
    for k, v in out.items():
        if isinstance(v, (list, dict)):
            print(f"{k}: {len(v)}", file=sys.stderr)


if __name__ == "__main__":
    main()
