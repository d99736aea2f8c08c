"""The toy backend of the kernel's tests (see ``toy_plugin``): a bigram student and teacher (an
embedding and an output head each), the toy tokenizer, and the student saved as safetensors."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from opdplug.hookspecs import hookimpl
from opdplug.types import LoadedModels, StudentOutputs
from toy_plugin import VOCAB, ToyOptions, ToyTokenizer


class Bigram(torch.nn.Module):
    """Predicts token t from token t - 1 alone."""

    def __init__(self, hidden: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.Parameter(torch.randn(VOCAB, hidden, generator=g))
        self.head = torch.nn.Parameter(torch.randn(VOCAB, hidden, generator=g) / hidden**0.5)

    def forward(self, input_ids_B_L: torch.Tensor) -> torch.Tensor:
        """Hidden states already shifted: row t predicts token t (row 0 is zeros)."""
        h = torch.tanh(self.embed[input_ids_B_L])
        return torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], 1)

    def next_logits(self, last_B: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.embed[last_B]) @ self.head.T


def load_weights(directory) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "model.safetensors"))


@hookimpl
def opd_load_models(ctx):
    opts = ctx.config.plugins.get("toy", ToyOptions())
    student = Bigram(opts.hidden, seed=ctx.config.student.init_seed).to(ctx.device)
    teacher = Bigram(opts.hidden, seed=opts.teacher_seed).to(ctx.device).requires_grad_(False)
    return LoadedModels(student=student, tokenizer=ToyTokenizer(), teacher=teacher)


@hookimpl
def opd_student_forward(ctx, batch):
    hidden = ctx.student(batch.input_ids_B_L.to(ctx.device))  # through the DDP wrapper, if any
    return StudentOutputs(hidden_B_L_H=hidden, lm_head_V_H=ctx.student_module().head,
                          temperature=ctx.config.rollout.temperature)


@hookimpl
def opd_save_model(ctx, directory):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in ctx.student_module().state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    return directory
