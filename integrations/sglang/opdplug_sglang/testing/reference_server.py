"""An in-process stand-in for an SGLang server, for tests where SGLang is not installed.

It answers the endpoints opdplug uses (``/generate`` for scoring and sampling,
``/get_model_info``, ``/update_weights_from_disk``, ``/health``) for a local Hugging Face model,
in the response layout recorded from SGLang 0.5.23 on this machine (``SGLANG_CPU_NOTES.md``):
``input_token_logprobs`` entries for positions ``logprob_start_len .. L-1`` whose first entry is
``[null, id, text]``; top-k and chosen-id lists with the same layout; ``output_ids`` and
``output_token_logprobs`` of the sampled tokens, at the sampling temperature. Two quirks of the
real server are reproduced on purpose, so the client's handling of them is tested here too: the
last vocabulary id is reported as 0 in ``input_token_logprobs`` (with the right log-prob), and
an id outside the vocabulary in ``token_ids_logprob`` is an HTTP 400.

This is NOT how opdplug knows the format is right: the ``sglang`` test lane runs the same client
tests against the real server. It lets the default suite exercise the plugin end to end fast.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

import torch


class ReferenceServer:
    """Serves ``model_dir`` on 127.0.0.1 (a free port) until ``stop``.

    With ``aux_layer_ids`` it also answers like a server started with SGLang's capture-only flags
    (``opdplug_sglang.features.server_flags``): ``return_hidden_states`` requests get the hidden
    states entering layers ``id + 1`` concatenated (``[L, n_aux * H]``, as one block, only when a
    token is generated), and ``/server_info`` reports those settings."""

    def __init__(self, model_dir: str, aux_layer_ids: Optional[list] = None):
        from opdplug_local.models import load_model, load_tokenizer

        self.model_path = str(model_dir)
        self.model = load_model(model_dir, "model").eval()
        self.tokenizer = load_tokenizer(model_dir)
        self.lock = threading.Lock()
        self.requests = 0
        self.aux_layer_ids = None if aux_layer_ids is None else [int(i) for i in aux_layer_ids]
        self._server: Optional[ThreadingHTTPServer] = None

    # ------------------------------------------------------------------ model
    @torch.no_grad()
    def _logprobs(self, ids: list[int]) -> torch.Tensor:
        """log_softmax of the logits predicting each position ([L, V]; row 0 is unused)."""
        logits = self.model(torch.tensor([ids])).logits[0].float()
        out = torch.zeros_like(logits)
        out[1:] = torch.log_softmax(logits[:-1], dim=-1)
        return out

    def _entry(self, lp: float, tok: int, with_text: bool) -> list:
        return [lp, tok, self.tokenizer.decode([tok]) if with_text else None]

    def _score(self, req: dict, i: int) -> dict:
        ids = req["input_ids"][i] if isinstance(req["input_ids"][0], list) else req["input_ids"]
        pick = lambda key, default=None: (req.get(key)[i] if isinstance(req.get(key), list) and key != "token_ids_logprob" else req.get(key, default))  # noqa: E731
        start = pick("logprob_start_len", -1)
        k = pick("top_logprobs_num", 0) or 0
        chosen = req.get("token_ids_logprob")
        if chosen and isinstance(chosen[0], list) or (chosen and chosen[0] is None):
            chosen = chosen[i]
        text = bool(pick("return_text_in_logprobs", False))
        lp_L_V = self._logprobs(ids)
        rng = range(max(start, 0), len(ids))
        tok_lp, tops, chosen_lp = [], [], []
        for n, t in enumerate(rng):
            if n == 0:  # nothing inside the request predicts the first requested position
                tok_lp.append([None, 0 if ids[t] == len(self.tokenizer) - 1 else ids[t], None])
                tops.append(None)
                chosen_lp.append(None)
                continue
            shown = 0 if ids[t] == len(self.tokenizer) - 1 else ids[t]  # SGLang 0.5.23's report of the last id
            tok_lp.append(self._entry(float(lp_L_V[t, ids[t]]), shown, text))
            if k:
                v, j = lp_L_V[t].topk(k)
                tops.append([self._entry(float(a), int(b), text) for a, b in zip(v, j)])
            if chosen:
                chosen_lp.append([self._entry(float(lp_L_V[t, c]), int(c), text) for c in chosen])
        meta = {"input_token_logprobs": tok_lp, "output_token_logprobs": [], "prompt_tokens": len(ids),
                "completion_tokens": 0, "finish_reason": {"type": "length", "length": 0}}
        if k:
            meta["input_top_logprobs"] = tops
        if chosen:
            meta["input_token_ids_logprobs"] = chosen_lp
        return {"text": "", "output_ids": [], "meta_info": meta}

    @torch.no_grad()
    def _sample(self, req: dict, i: int) -> dict:
        ids = list(req["input_ids"][i] if isinstance(req["input_ids"][0], list) else req["input_ids"])
        sp = req["sampling_params"][i] if isinstance(req["sampling_params"], list) else req["sampling_params"]
        T, n_max = sp.get("temperature", 1.0), sp["max_new_tokens"]
        stop = set(sp.get("stop_token_ids") or []) | {self.tokenizer.eos_token_id}
        g = torch.Generator().manual_seed(int(sp.get("sampling_seed", 0)))
        out, lps = [], []
        for _ in range(n_max):
            logits = self.model(torch.tensor([ids + out])).logits[0, -1].float()
            if T == 0:  # greedy, as SGLang; its log-probs then are those at temperature 1
                logp = torch.log_softmax(logits, dim=-1)
                tok = int(logits.argmax())
            else:
                logp = torch.log_softmax(logits / T, dim=-1)
                tok = int(torch.multinomial(logp.exp(), 1, generator=g))
            out.append(tok)
            lps.append(float(logp[tok]))
            if tok in stop:
                break
        finish = {"type": "stop", "matched": out[-1]} if out and out[-1] in stop else {"type": "length", "length": len(out)}
        meta = {"output_token_logprobs": [[lp, t, None] for lp, t in zip(lps, out)], "finish_reason": finish,
                "prompt_tokens": len(ids), "completion_tokens": len(out)}
        return {"text": self.tokenizer.decode(out), "output_ids": out, "meta_info": meta}

    @torch.no_grad()
    def _with_hidden_states(self, req: dict, i: int) -> dict:
        """A one-token generation that also returns input log-probs and the prompt's hidden
        states (the capture-only layout of SGLang 0.5.23: ``hidden_states = [[L rows]]``, the
        output rows' log-probs at the sampling temperature)."""
        ids = list(req["input_ids"][i] if isinstance(req["input_ids"][0], list) else req["input_ids"])
        sp = req["sampling_params"][i] if isinstance(req["sampling_params"], list) else req["sampling_params"]
        if sp.get("max_new_tokens") != 1:
            raise ValueError("the stand-in returns hidden states for max_new_tokens = 1 only")
        answer = self._score(req, i)
        out = self.model(torch.tensor([ids]), output_hidden_states=True)
        if self.aux_layer_ids is not None:
            hidden = torch.cat([out.hidden_states[k + 1][0] for k in sorted(self.aux_layer_ids)], dim=-1)
        else:
            hidden = out.hidden_states[-1][0]
        logp = torch.log_softmax(out.logits[0, -1].float() / sp.get("temperature", 1.0), dim=-1)
        g = torch.Generator().manual_seed(int(sp.get("sampling_seed", 0)))
        tok = int(torch.multinomial(logp.exp(), 1, generator=g))
        k = req.get("top_logprobs_num") or 0
        k = k[i] if isinstance(k, list) else k
        chosen = req.get("token_ids_logprob") or []
        chosen = chosen[i] if chosen and isinstance(chosen[0], list) else chosen
        meta = answer["meta_info"]
        meta.update(hidden_states=[hidden.tolist()], output_token_logprobs=[[float(logp[tok]), tok, None]],
                    completion_tokens=1, cached_tokens=0, finish_reason={"type": "length", "length": 1})
        if k:
            v, j = logp.topk(k)
            meta["output_top_logprobs"] = [[[float(a), int(b), None] for a, b in zip(v, j)]]
        if chosen:
            meta["output_token_ids_logprobs"] = [[[float(logp[c]), int(c), None] for c in chosen]]
        return {"text": self.tokenizer.decode([tok]), "output_ids": [tok], "meta_info": meta}

    def server_info(self) -> dict:
        """The ``/server_info`` keys opdplug reads."""
        aux = self.aux_layer_ids is not None
        return {"version": "0.5.23", "disable_radix_cache": True, "enable_return_hidden_states": True,
                "enable_return_aux_hidden_states": aux, "aux_hidden_state_capture": "eagle3" if aux else None,
                "return_aux_hidden_state_layer_ids": self.aux_layer_ids, "speculative_algorithm": None}

    def generate(self, req: dict):
        batched = isinstance(req["input_ids"][0], list)
        for row in (req["input_ids"] if batched else [req["input_ids"]]):
            chosen = req.get("token_ids_logprob") or []
            flat = [t for c in chosen for t in (c if isinstance(c, list) else [c]) if t is not None]
            bad = [t for t in list(row) + flat if not 0 <= t < len(self.tokenizer)]
            if bad:
                raise ValueError(f"The input_ids contains an invalid token id {bad[0]}; valid range is [0, {len(self.tokenizer)}).")
        n = len(req["input_ids"]) if batched else 1
        answers = []
        with self.lock:
            self.requests += 1
            for i in range(n):
                sp = req["sampling_params"][i] if isinstance(req["sampling_params"], list) else req["sampling_params"]
                if req.get("return_hidden_states") and sp.get("max_new_tokens", 1) > 0:
                    answers.append(self._with_hidden_states(req, i))
                else:
                    answers.append(self._score(req, i) if sp.get("max_new_tokens", 1) == 0 else self._sample(req, i))
        return answers if batched else answers[0]

    def update_weights(self, req: dict) -> dict:
        from opdplug_local.models import load_model

        try:
            model = load_model(req["model_path"], "model_path").eval()
        except Exception as exc:  # noqa: BLE001 - reported the way SGLang reports it
            return {"success": False, "message": str(exc)}
        with self.lock:
            self.model, self.model_path = model, req["model_path"]
        return {"success": True, "message": "Succeeded to update model weights."}

    # ------------------------------------------------------------------ HTTP
    def start(self) -> "ReferenceServer":
        ref = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, obj, status=200):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                if self.path.startswith("/get_model_info"):
                    self._send({"model_path": ref.model_path, "tokenizer_path": ref.model_path, "is_generation": True})
                elif self.path.startswith("/health"):
                    self._send({})
                elif self.path.startswith(("/server_info", "/get_server_info")):
                    self._send(ref.server_info())
                else:
                    self._send({"error": "not found"}, 404)

            def do_POST(self):  # noqa: N802
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.startswith("/generate"):
                    try:
                        self._send(ref.generate(req))
                    except ValueError as exc:
                        self._send({"error": {"message": str(exc)}}, 400)
                elif self.path.startswith("/detokenize"):
                    self._send({"text": ref.tokenizer.decode(req["tokens"])})
                elif self.path.startswith("/update_weights_from_disk"):
                    self._send(ref.update_weights(req))
                else:
                    self._send({"error": "not found"}, 404)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "ReferenceServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
