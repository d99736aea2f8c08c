"""EAGLE-3 draft heads: the model (SGLang's ``LlamaForCausalLMEagle3`` layout), its draft
vocabulary, training with training-time test, and a ``base.Drafter`` for speculative decoding.

Public API::

    config = eagle3_config(target_dir, output_dir, run={...}, options=Eagle3Options(...), task={...})
    train_eagle3(config) -> Eagle3Result                  # the core loop with the EAGLE-3 stages
    Eagle3Drafter.from_pretrained(path, target)          # path: run dir, its final/ or head/, or an export
    plot_metrics(metrics_jsonl_or_run_dir, png_path)     # acceptance vs training steps
    opdplug_drafters.export.export_drafter("eagle3", source_dir, output_dir, target_dir=...)
"""
from .checkpoint import load_head, save_head
from .drafter import Eagle3Drafter
from .config import ARCHITECTURE, default_aux_layers, draft_config, sglang_layer_ids, tensor_specs
from .model import Eagle3Head
from .options import Eagle3Options
from .train import Eagle3Result, eagle3_config, plot_metrics, read_metrics, train_eagle3
from .vocab import build_vocab, check_vocab_maps, count_tokens

__all__ = [
    "ARCHITECTURE",
    "Eagle3Drafter",
    "Eagle3Head",
    "Eagle3Options",
    "Eagle3Result",
    "build_vocab",
    "check_vocab_maps",
    "count_tokens",
    "default_aux_layers",
    "draft_config",
    "eagle3_config",
    "load_head",
    "plot_metrics",
    "read_metrics",
    "save_head",
    "sglang_layer_ids",
    "tensor_specs",
    "train_eagle3",
]
