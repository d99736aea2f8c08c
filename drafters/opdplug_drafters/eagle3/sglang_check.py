"""Load an exported EAGLE-3 head with SGLang's own ``LlamaForCausalLMEagle3`` and check every weight.

Runs with SGLang's Python (its own venv; SGLang cannot be imported beside opdplug's torch), on CPU:

    python sglang_check.py EXPORT_DIR [REFERENCE.safetensors | -] [MASTER_PORT]

It imports nothing from opdplug. Steps: a world-size-1 gloo process group and SGLang's model
parallel groups; the config through SGLang's ``get_config``; the class named by
``architectures`` among ``llama_eagle3.EntryClass``; every parameter filled with NaN; every
``weight_loader`` wrapped to record which file tensor it received; ``load_weights`` fed the file
through SGLang's own ``safetensors_weights_iterator``. Then: every file tensor consumed (``t2d``
is skipped by SGLang by design, ``d2t`` becomes ``hot_token_id``), every loaded region equal to
its file tensor, no NaN left outside vocabulary padding rows, ``hot_token_id == d2t + arange``
consistent with ``t2d``. With a reference file (tokens, features, positions and opdplug's logits
and pre-norm output of one extend over them), the head's forward is recomputed with SGLang's own
modules (attention by hand: RadixAttention needs a serving batch) and compared; the variant norms
SGLang built (``input_norm``, ``fc_norm``, ``norm_output``) are applied as its forward does, and
reported under ``variant_norms``.

Prints one line ``REPORT {json}``; ``problems`` lists everything wrong (empty: all good).
"""
import json, os, sys
os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
for k, v in dict(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0").items():
    os.environ.setdefault(k, v)
os.environ["MASTER_PORT"] = sys.argv[3] if len(sys.argv) > 3 else os.environ.get("MASTER_PORT", "29533")
import torch

export_dir = sys.argv[1]
reference_path = sys.argv[2] if len(sys.argv) > 2 else "-"
report = {"problems": []}
problem = report["problems"].append

from sglang.srt.distributed import parallel_state
from sglang.srt.distributed.parallel_state import init_distributed_environment, initialize_model_parallel
from sglang.srt.runtime_context import SpawnRanks, get_parallel, publish, reset_context
from sglang.srt.server_args import ServerArgs

init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo")
reset_context()
publish(ServerArgs(model_path="dummy", device="cpu", tp_size=1, ep_size=1, pp_size=1), role="test",
        ranks=SpawnRanks(world_rank=0))
if parallel_state._WORLD is not None:
    get_parallel().override_permanently(world_group=parallel_state._WORLD)
initialize_model_parallel(backend="gloo")

from sglang.srt.model_loader.weight_utils import safetensors_weights_iterator
from sglang.srt.models import llama_eagle3
from sglang.srt.utils.hf_transformers.config import get_config

config = get_config(export_dir, trust_remote_code=False)
arch = config.architectures[0]
classes = {cls.__name__: cls for cls in llama_eagle3.EntryClass}
if arch not in classes:
    problem(f"architecture {arch!r} is not an entry class of sglang.srt.models.llama_eagle3")
    print(json.dumps(report)); sys.exit(0)
model = classes[arch](config).eval()
report["architecture"] = arch
report["layers_to_capture_ids"] = config.eagle_config["eagle_aux_hidden_state_layer_ids"]

# Every parameter starts as NaN: afterwards a NaN element is one the file did not set.
params = dict(model.named_parameters())
with torch.no_grad():
    for p in params.values():
        p.fill_(float("nan"))

# Record which file key each weight_loader call came from.
current = {"key": None}
calls = []  # (file key, param name, shard id)
for name, p in params.items():
    original = getattr(p, "weight_loader", None)
    def wrapped(param, loaded, *shard, _orig=original, _name=name):
        calls.append((current["key"], _name, shard[0] if shard else None))
        if _orig is None:
            from sglang.srt.model_loader.weight_utils import default_weight_loader
            return default_weight_loader(param, loaded, *shard)
        return _orig(param, loaded, *shard)
    p.weight_loader = wrapped

weights_file = os.path.join(export_dir, "model.safetensors")
file_tensors = dict(safetensors_weights_iterator([weights_file]))
def stream():
    for key, tensor in safetensors_weights_iterator([weights_file]):
        current["key"] = key
        yield key, tensor
model.load_weights(stream())

consumed = {c[0] for c in calls}
skipped_by_design = {"t2d"}  # SGLang's load_weights `continue`s on it
for key in file_tensors:
    if key == "d2t":
        continue
    if key not in consumed and key not in skipped_by_design:
        problem(f"file tensor {key!r} was not consumed by load_weights")
report["calls"] = [[k, n, None if s is None else str(s)] for k, n, s in calls]

# Values: each loaded region equals the file tensor; only vocabulary padding rows stay NaN.
H = config.hidden_size
heads, kv = config.num_attention_heads, config.num_key_value_heads
D = getattr(config, "head_dim", None) or H // heads
q_size, kv_size, inter = heads * D, kv * D, config.intermediate_size
regions = {
    "q": (0, q_size), "k": (q_size, q_size + kv_size), "v": (q_size + kv_size, q_size + 2 * kv_size),
    0: (0, inter), 1: (inter, 2 * inter),
}
set_rows = {}
for key, name, shard in calls:
    src = file_tensors[key]
    dst = params[name].detach()
    if shard is None:
        lo, hi = 0, src.shape[0]
    else:
        lo, hi = regions[shard]
    if tuple(dst[lo:hi].shape) != tuple(src.shape) or not torch.equal(dst[lo:hi], src.to(dst.dtype)):
        problem(f"{name}[{lo}:{hi}] does not equal file tensor {key!r}")
    set_rows.setdefault(name, []).append((lo, hi))
unset = []
for name, p in params.items():
    nan_rows = torch.isnan(p.detach()).reshape(p.shape[0], -1).any(-1).nonzero().flatten()
    if nan_rows.numel() == 0:
        continue
    padding = name in ("model.embed_tokens.weight", "lm_head.weight")
    limit = config.vocab_size if name == "model.embed_tokens.weight" else config.draft_vocab_size
    if padding and int(nan_rows.min()) >= limit:
        report.setdefault("padding_rows", {})[name] = int(nan_rows.numel())
        continue
    unset.append(name)
    problem(f"parameter {name} was not (fully) set from the file ({int(nan_rows.numel())} rows unset)")
report["params"] = {n: list(p.shape) for n, p in params.items()}
report["unset_params"] = unset

# d2t -> hot_token_id; t2d must agree with it.
d2t, t2d = file_tensors["d2t"], file_tensors["t2d"]
hot = model.hot_token_id
if hot is None or not torch.equal(hot, d2t + torch.arange(d2t.shape[0])):
    problem("hot_token_id is not d2t + arange(draft_vocab_size)")
elif not bool(t2d[hot].all()) or int(t2d.sum()) != hot.numel():
    problem("t2d disagrees with hot_token_id")
report["hot_token_id"] = None if hot is None else hot.tolist()

# One forward of the head through SGLang's own modules (attention done by hand: RadixAttention
# needs a serving ForwardBatch), compared with the reference written by opdplug.
if reference_path != "-":
    from safetensors.torch import load_file
    ref = load_file(reference_path)
    m = model.model
    layer = m.layers[0]
    def norm(mod, x, residual=None):
        return mod.forward_native(x, residual) if residual is not None else mod.forward_native(x)
    with torch.no_grad():
        embeds = m.embed_tokens.weight[ref["tokens"]]  # the table SGLang serves with (target's copy)
        feats = ref["features"]
        # The feature norms SGLang's LlamaModel built from the config (EAGLE-3.1 variants), in
        # the order its forward applies them: the whole concatenation, then each feature.
        if getattr(m, "input_norm", None) is not None:
            feats = norm(m.input_norm, feats)
        if getattr(m, "fc_norm", None) is not None:
            chunks = feats.chunk(len(m.fc_norm), dim=-1)
            feats = torch.cat([norm(n, c) for n, c in zip(m.fc_norm, chunks)], dim=-1)
        report["variant_norms"] = {"input_norm": getattr(m, "input_norm", None) is not None,
                                   "fc_norm": getattr(m, "fc_norm", None) is not None,
                                   "norm_output": bool(getattr(m, "norm_output", False))}
        h = m.fc(feats)
        residual = h
        x = torch.cat([norm(layer.input_layernorm, embeds), norm(layer.hidden_norm, h)], dim=-1)
        qkv, _ = layer.self_attn.qkv_proj(x)
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q, k = layer.self_attn.rotary_emb.forward_native(ref["positions"], q, k)
        N = q.shape[0]
        qh = q.view(N, heads, D).transpose(0, 1)
        kh = k.view(N, kv, D).transpose(0, 1).repeat_interleave(heads // kv, dim=0)
        vh = v.view(N, kv, D).transpose(0, 1).repeat_interleave(heads // kv, dim=0)
        a = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=D ** -0.5)
        o, _ = layer.self_attn.o_proj(a.transpose(0, 1).reshape(N, heads * D))
        hidden, residual = norm(layer.post_attention_layernorm, o, residual)
        mlp = layer.mlp.down_proj(layer.mlp.act_fn(layer.mlp.gate_up_proj(hidden)[0]))[0]
        normed, aux = norm(m.norm, mlp, residual)
        if getattr(m, "norm_output", False):  # SGLang hands the normed state to the next step then
            aux = normed
        logits = normed @ model.lm_head.weight[: config.draft_vocab_size].t()
    report["max_abs_diff_logits"] = float((logits - ref["logits"]).abs().max())
    report["max_abs_diff_hidden"] = float((aux - ref["hidden"]).abs().max())
    if not (report["max_abs_diff_logits"] <= 1e-4 and report["max_abs_diff_hidden"] <= 1e-4):  # NaN fails too
        problem(f"SGLang's modules compute different logits ({report['max_abs_diff_logits']:.2e}) "
                f"or hidden states ({report['max_abs_diff_hidden']:.2e}) than opdplug's head")

print("REPORT " + json.dumps(report))
