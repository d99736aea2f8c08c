"""A fresh LoRA adapter's initial A comes from ``student.init_seed``, not from the global RNG, so
two processes (or two runs) of the same LoRA config train identically (B starts at zero, so a
random A shows only from step 1 on; the continual-learning bench found it that way)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")

from opdplug.config import ModelOptions  # noqa: E402
from opdplug_local import tiny  # noqa: E402
from opdplug_local.models import maybe_lora  # noqa: E402
from opdplug_local.tasks import SumChain  # noqa: E402


def lora_a(init_seed: int, global_seed: int) -> dict:
    torch.manual_seed(global_seed)
    model = tiny.build_model("tiny", SumChain().tokenizer, seed=1)
    model = maybe_lora(model, ModelOptions(tiny="tiny", lora_r=4, init_seed=init_seed))
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}


def test_initial_adapter_depends_on_init_seed_only():
    a, b = lora_a(0, global_seed=1), lora_a(0, global_seed=2)
    assert a and all(torch.equal(a[n], b[n]) for n in a)
    c = lora_a(1, global_seed=1)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_the_global_rng_is_left_alone():
    torch.manual_seed(5)
    want = torch.rand(3)
    torch.manual_seed(5)
    model = tiny.build_model("tiny", SumChain().tokenizer, seed=1)  # leaves the global RNG untouched
    maybe_lora(model, ModelOptions(tiny="tiny", lora_r=4))
    assert torch.equal(torch.rand(3), want)
