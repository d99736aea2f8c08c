"""EAGLE-3 features from a target served by SGLang equal the local target's.

``eagle3.served.sglang_capture`` asks an SGLang server (capture-only mode: aux hidden states
without a draft) for the auxiliary hidden states, the draft vocabulary's log-probs, the top-1 id
and each token's log-prob; the local reference here is a plain Hugging Face forward. Both are
compared to 1e-4 on targets of the three supported families; a head trained a few steps on the
served features follows the loss curve of the same head trained on the local ones to 1e-4
relative, by hand and through the core loop run from its config alone (``[drafter.eagle3]
features = "sglang"``, ``features_urls``); a server set up otherwise is refused before the run
starts. Runs against the in-process stand-in (default suite) and a real SGLang 0.5.23 server
(the ``sglang`` lane, ``make test-sglang``).
"""
import pytest
import torch

pytest.importorskip("opdplug_sglang")

from opdplug.errors import ConfigError, PreflightError  # noqa: E402
from opdplug_drafters.eagle3.config import sglang_layer_ids  # noqa: E402
from opdplug_drafters.eagle3.served import served_source, sglang_capture  # noqa: E402
from opdplug_drafters.eagle3.toy import arch_target, toy_head  # noqa: E402
from opdplug_sglang.testing.servers import SERVER_KINDS, serve  # noqa: E402

ARCHS = ["llama", "qwen2", "qwen3"]
AUX = (1, 2, 3)  # HF hidden-state indices of a 4-layer target; SGLang ids 0, 1, 2


@pytest.fixture(scope="module", params=ARCHS)
def target(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"served-{request.param}")
    model, tok = arch_target(request.param, root / "target")
    return request.param, root / "target", model, tok


@pytest.fixture(scope="module", params=SERVER_KINDS)
def server(request, target):
    _, target_dir, _, _ = target
    running = serve(request.param, target_dir, aux_layer_ids=sglang_layer_ids(AUX))
    yield running
    running.stop()


def _rows(tok, n_rows=5, seed=0):
    """Right-padded chat rows of different lengths; the loss mask covers each row's tail."""
    g = torch.Generator().manual_seed(seed)
    texts = ["Tom has 3 apples and buys 5 more.", "def add(a, b): return a + b", "The quick brown fox.",
             "A user asks a question and the assistant answers it.", "Numbers like 42 appear."]
    rows = []
    for i in range(n_rows):
        ids = tok.apply_chat_template([{"role": "user", "content": texts[i % len(texts)]}], add_generation_prompt=True,
                                      tokenize=True, return_dict=False)
        ids = list(ids) + torch.randint(0, len(tok), (3 + 4 * i,), generator=g).tolist()
        rows.append(ids)
    L = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    mask = torch.zeros_like(ids)
    loss = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, :len(r)], mask[b, :len(r)] = torch.tensor(r), 1
        loss[b, len(r) - 3 - 4 * b:len(r)] = 1
    return ids, mask, loss


@torch.no_grad()
def _local(model, ids, mask, draft_ids):
    """The reference: one plain forward of the local target."""
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    logp = torch.log_softmax(out.logits.float(), dim=-1)
    features = torch.cat([out.hidden_states[i] for i in AUX], dim=-1)
    token_lp = torch.cat([torch.zeros(ids.shape[0], 1), logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]], dim=1)
    return features, logp[..., draft_ids], logp.argmax(-1), logp.exp()[..., draft_ids].sum(-1), token_lp


def test_served_features_equal_the_local_target(target, server):
    arch, _, model, tok = target
    head = toy_head(model, draft_vocab_size=96, aux_layers=AUX, always=(tok.eos_token_id,))
    draft_ids = head.draft_to_target_Vd
    ids, mask, loss = _rows(tok)
    source = served_source([server.url], AUX, hidden_size=model.config.hidden_size, batch_size=2, vocab_size=len(tok))
    batch, token_lp = sglang_capture(source, ids, mask, loss, AUX, draft_ids, token_logprobs=True)
    features, logp_Vd, argmax, mass, want_lp = _local(model, ids, mask, draft_ids)
    real = mask.bool()
    assert int(real.sum()) > 60 and source.tokens == int(real.sum())
    torch.testing.assert_close(batch.features_B_L_A[real], features[real], atol=1e-4, rtol=0)
    # What the TTT loss reads: the distribution renormalised over the draft vocabulary.
    torch.testing.assert_close(torch.log_softmax(batch.target_logits_B_L_Vd, -1)[real],
                               torch.log_softmax(logp_Vd, -1)[real], atol=1e-4, rtol=0)
    torch.testing.assert_close(batch.target_logits_B_L_Vd[real], logp_Vd[real], atol=1e-4, rtol=0)
    assert torch.equal(batch.target_argmax_B_L[real], argmax[real])
    torch.testing.assert_close(batch.target_draft_mass_B_L[real], mass[real], atol=1e-4, rtol=0)
    torch.testing.assert_close(token_lp, want_lp * loss, atol=1e-4, rtol=0)
    assert torch.equal(batch.input_ids_B_L, ids) and torch.equal(batch.loss_mask_B_L, loss)


def _train(head, batches, steps=3, ttt_steps=3):
    """A few AdamW steps of the TTT soft cross-entropy (the loss the head trains with)."""
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for step in range(steps):
        b = batches[min(step // 2, len(batches) - 1)]  # a, a, b: the second step sees the first's batch again
        logits = head.ttt_forward(b.input_ids_B_L, b.features_B_L_A, b.attention_mask_B_L, ttt_steps)
        N = b.input_ids_B_L.shape[1] - 1
        loss = 0.0
        for j, draft in enumerate(logits):
            valid = torch.cat([b.loss_mask_B_L, torch.zeros_like(b.loss_mask_B_L)], 1)[:, 2 + j:2 + j + N].bool()
            tgt = torch.cat([b.target_logits_B_L_Vd, torch.zeros_like(b.target_logits_B_L_Vd)], 1)[:, 1 + j:1 + j + N]
            ce = -(torch.softmax(tgt, -1) * torch.log_softmax(draft.float(), -1)).sum(-1)
            loss = loss + 0.8 ** j * (ce * valid).sum() / valid.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_head_trained_on_served_features_follows_the_local_run(target, server):
    arch, _, model, tok = target
    ids_a, mask_a, loss_a = _rows(tok, seed=1)
    ids_b, mask_b, loss_b = _rows(tok, n_rows=3, seed=2)
    heads = [toy_head(model, draft_vocab_size=96, aux_layers=AUX, always=(tok.eos_token_id,), variant=v)
             for v in ("eagle3.1", "eagle3.1")]
    draft_ids = heads[0].draft_to_target_Vd
    source = served_source([server.url], AUX, hidden_size=model.config.hidden_size, vocab_size=len(tok))
    served = [sglang_capture(source, i, m, l, AUX, draft_ids)[0] for i, m, l in ((ids_a, mask_a, loss_a), (ids_b, mask_b, loss_b))]
    local = []
    for i, m, l in ((ids_a, mask_a, loss_a), (ids_b, mask_b, loss_b)):
        f, logp_Vd, argmax, mass, _ = _local(model, i, m, draft_ids)
        local.append(type(served[0])(i, m, l, f, logp_Vd, argmax, mass))
    want = _train(heads[0], local)
    got = _train(heads[1], served)
    assert len(got) == 3 and want[1] < want[0]  # it learns
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-6)


def test_a_server_without_capture_is_refused(tmp_path):
    from opdplug_sglang.testing.reference_server import ReferenceServer

    model, tok = arch_target("qwen3", tmp_path / "target")
    with ReferenceServer(str(tmp_path / "target")) as plain:
        with pytest.raises(PreflightError, match="does not return EAGLE-3 auxiliary hidden states") as info:
            served_source([plain.url], AUX, hidden_size=model.config.hidden_size)
        assert "\n" not in str(info.value) and "--enable-return-aux-hidden-states" in str(info.value)
    with ReferenceServer(str(tmp_path / "target"), aux_layer_ids=[0, 1, 2]) as other:
        with pytest.raises(PreflightError, match=r"captures layer ids \[0, 1, 2\], the head reads \[0, 1\]"):
            served_source([other.url], (1, 2), hidden_size=64)
        source = served_source([other.url], AUX, hidden_size=model.config.hidden_size)
        with pytest.raises(ConfigError, match="aux_layers"):
            sglang_capture(source, torch.ones(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long),
                           torch.ones(1, 4, dtype=torch.long), (0, 1, 2), torch.arange(8))


@pytest.fixture(scope="module")
def sumchain_target(tmp_path_factory):
    from opdplug_drafters.eagle3.toy import toy_target

    path = tmp_path_factory.mktemp("served-loop") / "target"
    toy_target(num_layers=4, directory=path)
    return path


@pytest.fixture(scope="module", params=SERVER_KINDS)
def sumchain_server(request, sumchain_target):
    running = serve(request.param, sumchain_target, aux_layer_ids=sglang_layer_ids(AUX))
    yield running
    running.stop()


def _loop_config(target, out, **options):
    from opdplug_drafters.eagle3 import eagle3_config

    return eagle3_config(
        target, out,
        run={"steps": 4, "batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "progress": False},
        options={"variant": "eagle3.1", "ttt_steps": 3, "draft_vocab_size": 20, "max_new_tokens": 8,
                 "vocab_prompts": 16, "eval_prompts": 4, "eval_every": 2, "aux_layers": list(AUX), **options},
        task={"name": "sumchain", "options": {"max_len": 4}},
    )


def test_core_loop_run_on_served_features_follows_the_local_run(sumchain_target, sumchain_server, tmp_path):
    """An EAGLE-3.1 head trained by the core loop with ``[drafter.eagle3] features = "sglang"``
    (the config alone: the score stage, the held-out proxies and the pre-flight check ask the
    server) follows the loss curve and the held-out proxies of the same run with the local
    capture to 1e-4 relative."""
    from opdplug_drafters.eagle3 import train_eagle3

    want = train_eagle3(_loop_config(sumchain_target, tmp_path / "local"))
    before = getattr(sumchain_server, "requests", None)
    got = train_eagle3(_loop_config(sumchain_target, tmp_path / "served", features="sglang",
                                    features_urls=[sumchain_server.url], features_batch_size=3))
    if before is not None:  # the stand-in counts its requests: the server did the scoring
        assert sumchain_server.requests > before
    losses = [[m["loss"] for m in r.history] for r in (want, got)]
    assert len(losses[1]) == len(losses[0]) == 4 and losses[0][-1] < losses[0][0]
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-4, atol=1e-6)
    evals = [[(e["loss"], e["accept_len"]) for e in r.evals] for r in (want, got)]
    assert len(evals[1]) == len(evals[0]) == 2
    torch.testing.assert_close(torch.tensor(evals[1]), torch.tensor(evals[0]), rtol=1e-4, atol=1e-6)


def test_served_features_are_checked_before_the_run_starts(sumchain_target, tmp_path):
    """A server that does not capture the head's layers, or no server at all, is one line
    before the target samples anything; nothing is written."""
    from opdplug.errors import RemoteError
    from opdplug_drafters.eagle3 import train_eagle3
    from opdplug_sglang.testing.reference_server import ReferenceServer

    with ReferenceServer(str(sumchain_target)) as plain:  # no aux capture
        out = tmp_path / "plain"
        with pytest.raises(PreflightError, match="does not return EAGLE-3 auxiliary hidden states") as info:
            train_eagle3(_loop_config(sumchain_target, out, features="sglang", features_urls=[plain.url]))
        assert "\n" not in str(info.value) and plain.requests == 0 and not out.exists()
    with ReferenceServer(str(sumchain_target), aux_layer_ids=[0, 1]) as other:  # other layers
        with pytest.raises(PreflightError, match=r"captures layer ids \[0, 1\], the head reads \[0, 1, 2\]"):
            train_eagle3(_loop_config(sumchain_target, tmp_path / "other", features="sglang", features_urls=[other.url]))
    out = tmp_path / "down"
    with pytest.raises(RemoteError) as info:  # nothing listens there
        train_eagle3(_loop_config(sumchain_target, out, features="sglang", features_urls=["http://127.0.0.1:9"],
                                  features_retry_budget_s=0.5))
    assert "\n" not in str(info.value) and not out.exists()


@pytest.mark.parametrize("options, message", [
    ({"features": "sglang"}, "features = 'sglang' needs features_urls"),
    ({"features": "sglang", "features_urls": ["ftp://host"]}, "'ftp://host' is not a server URL"),
    ({"features": "sglang", "features_urls": "http://127.0.0.1:30000"}, "features_urls must be a list"),
    ({"features_urls": ["http://127.0.0.1:30000"]}, "features_urls is given but features = 'local'"),
    ({"features": "remote"}, "features = 'remote' is not allowed"),
    ({"features": "sglang", "features_urls": ["http://h:1"], "features_batch_size": 0}, "features_batch_size must be >= 1"),
])
def test_bad_feature_options_are_one_line(options, message, tmp_path):
    config = tmp_path / "run.toml"
    table = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in options.items())
    config.write_text(f'[run]\noutput_dir = "{tmp_path / "out"}"\n[teacher]\npath = "{tmp_path}"\n'
                      f'[drafter]\nkind = "eagle3"\n[drafter.eagle3]\n{table}\n')
    from opdplug.cli import load_config
    from opdplug.manager import make_plugin_manager
    from opdplug.prepare import validate

    manager = make_plugin_manager()
    with pytest.raises(ConfigError, match=message) as info:
        validate(load_config(str(config), manager), manager)
    assert "\n" not in str(info.value) and "drafter.eagle3" in str(info.value) and not (tmp_path / "out").exists()
