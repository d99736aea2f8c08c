"""Earliest-error locators on episodes whose first mistake is known, and the env's optimality test."""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from agent_stubs import bad_student, candidates
from opdplug_local import tiny
from opdplug.errors import ConfigError
from opdplug_agents import textio
from opdplug_agents.envs import BUILTIN
from opdplug_agents.locators import (
    ExpertLocator,
    JudgeUnreachable,
    LLMJudgeLocator,
    LocatorDeps,
    TeacherLogprobLocator,
    TeacherRolloutsLocator,
    build_locator,
    judge_messages,
    parse_judge_reply,
    teacher_action_logprobs,
)
from opdplug_agents.registries import env_class
from opdplug_agents.rollout import ExpertActor, ModelActor, run_episodes
from opdplug_agents.tools import format_call

ALL = sorted(cls.name for cls in BUILTIN)


@pytest.fixture(scope="module")
def tok():
    return tiny.build_tokenizer(textio.agent_words(ALL))


def play(tok, specs, actor):
    return run_episodes(specs, actor, tok, max_action_tokens=40, temperature=1.0, generator=None)


def specs_for(name, n=3, horizon=5, **options):
    return [(name, seed, {"horizon": horizon, **options}) for seed in range(n)]


# ----------------------------------------------------------------------------- is_optimal
@pytest.mark.parametrize("name", ALL)
def test_expert_actions_are_optimal_and_mistakes_are_not(name):
    env = env_class(name)(horizon=4)
    for seed in range(4):
        env.reset(seed=seed)
        done = False
        while not done:
            expert = env.expert_action()
            assert env.is_optimal(expert)
            before, taken = env.optimal_cost(), list(env.actions)
            wrong = [a for a in candidates(env) if not env.is_optimal(a)]
            assert wrong and env.optimal_cost() == before and env.actions == taken  # state untouched
            assert not env.is_optimal('{"tool": "nope"}') and not env.is_optimal("garbage")
            _, _, terminated, truncated, info = env.step(expert)
            done = terminated or truncated
        assert info["success"]


def test_gridnav_ties_are_all_optimal():
    env = env_class("gridnav")(horizon=4, wall_density=0.0)
    tied = 0
    for seed in range(10):
        env.reset(seed=seed)
        good = [d for d in ("north", "east", "south", "west") if env.is_optimal(format_call("move", dir=d))]
        assert format_call("move", dir=good[0]) == env.expert_action()  # the expert's tie-break comes first
        tied += len(good) > 1
        assert env.actions == []
    assert tied >= 5  # open grids: two directions usually shorten the path


def test_swapsort_and_calc_lookup_costs():
    env = env_class("swapsort")(horizon=3)
    env.reset(seed=0)
    assert env.optimal_cost() == 4  # three swaps and done
    env = env_class("calc_lookup")(horizon=3)
    env.reset(seed=0)
    assert env.optimal_cost() == 5  # three lookups, one calc, the answer
    chain = env.episode.chain()
    distractor = next(n for i, n in enumerate(env.episode.names) if i not in chain)
    assert not env.is_optimal(format_call("lookup", name=distractor))
    assert env.is_optimal(format_call("lookup", name=env.episode.names[chain[0]].upper()))  # formatting aside
    assert env.is_optimal(format_call("answer", value=env.episode.total()))  # solving is always optimal


# ----------------------------------------------------------------------------- expert
@pytest.mark.parametrize("name", ALL)
def test_expert_locator_finds_the_scripted_mistake(tok, name):
    horizon = 4 if name != "calc_lookup" else 3
    deps = LocatorDeps(tokenizer=tok)
    clean = play(tok, specs_for(name, horizon=horizon), ExpertActor("student"))
    assert ExpertLocator().locate(clean, deps) == [None] * 3
    for bad in ({0}, {2}, {1, 3}):
        episodes = play(tok, specs_for(name, horizon=horizon), bad_student(bad))
        assert ExpertLocator().locate(episodes, deps) == [min(bad)] * 3
        # Searching from after the first mistake finds the next one; teacher turns are never flagged.
        assert ExpertLocator().locate(episodes, deps, start=min(bad) + 1) == [max(bad) if len(bad) > 1 else None] * 3
    teacher_made = play(tok, specs_for(name, horizon=horizon), bad_student({1}, producer="teacher"))
    assert ExpertLocator().locate(teacher_made, deps) == [None] * 3
    assert deps.stats["teacher_actions"] == 0 and deps.stats["located"] > 0


# ----------------------------------------------------------------------------- teacher log-prob
def optimality_scorer(deps_envs=None):
    """A stand-in teacher: log-prob 0 on optimal actions, -3 per token on the others."""

    def score(episodes):
        out = []
        for e in episodes:
            env = env_class(e.env)(**e.options)
            env.reset(seed=e.seed)
            turns = []
            for t in e.turns:
                turns.append([0.0 if env.is_optimal(t.action_text) else -3.0] * len(t.action_ids))
                env.step(t.action_text)
            out.append(turns)
        return out

    return score


def test_teacher_logprob_locator_with_a_stub_teacher(tok):
    episodes = play(tok, specs_for("swapsort"), bad_student({2}))
    deps = LocatorDeps(tokenizer=tok, scorer=optimality_scorer())
    assert TeacherLogprobLocator(threshold=-1.0).locate(episodes, deps) == [2, 2, 2]
    assert TeacherLogprobLocator(threshold=-4.0).locate(episodes, deps) == [None] * 3
    assert TeacherLogprobLocator().locate(episodes, deps, start=3) == [None] * 3

    def shaped(eps):  # turn 1: one bad token (mean -1.33, min -4); turn 2: all -2
        return [[[0.0], [0.0, 0.0, -4.0], [-2.0, -2.0]] + [[0.0]] * (e.num_turns - 3) for e in eps]

    deps = LocatorDeps(tokenizer=tok, scorer=shaped)
    assert TeacherLogprobLocator(threshold=-1.5, reduce="mean").locate(episodes, deps) == [2, 2, 2]
    assert TeacherLogprobLocator(threshold=-1.5, reduce="min").locate(episodes, deps) == [1, 1, 1]


def test_teacher_logprob_scores_the_exact_ids_with_the_model(tok):
    """With the sampling model as the teacher, its scores are the recorded sampling log-probs."""
    model = tiny.build_model("tiny", tok, seed=0)
    specs = [("gridnav", s, {"horizon": 2, "max_turns": 3}) for s in range(3)]
    episodes = run_episodes(specs, ModelActor(model), tok, max_action_tokens=6, temperature=1.0, generator=torch.Generator().manual_seed(0))
    scores = teacher_action_logprobs(model, episodes, tok)
    for e, turns in zip(episodes, scores):
        assert len(turns) == e.num_turns
        for t, lps in zip(e.turns, turns):
            assert torch.allclose(torch.tensor(lps), torch.tensor(t.action_logprobs), atol=1e-4)
    deps = LocatorDeps(tokenizer=tok, teacher=model)
    found = TeacherLogprobLocator(threshold=-0.01).locate(episodes, deps)  # an untrained model is unsure
    assert found == [0, 0, 0] and deps.stats["teacher_scorings"] == 3
    with pytest.raises(ConfigError, match="teacher"):
        TeacherLogprobLocator().locate(episodes, LocatorDeps(tokenizer=tok))


# ----------------------------------------------------------------------------- teacher rollouts
def test_teacher_rollouts_locator_with_an_expert_teacher(tok):
    # A fatal mistake (done on an unsorted list) at turn 2: the teacher succeeds from every prefix
    # before it, and the episode fails after it.
    episodes = play(tok, specs_for("swapsort"), bad_student({2}, fatal=True))
    assert [e.num_turns for e in episodes] == [3] * 3 and not any(e.success for e in episodes)
    deps = LocatorDeps(tokenizer=tok, teacher=ExpertActor("teacher"), max_action_tokens=40)
    locator = TeacherRolloutsLocator(n=1, margin=0.5)
    assert locator.success_rates(episodes, deps, [0] * 3) == [[1.0, 1.0, 1.0, 0.0]] * 3
    assert deps.stats["teacher_actions"] == 3 * (6 + 5 + 4)  # one per teacher action, 3 prefixes each
    assert locator.locate(episodes, deps) == [2, 2, 2]
    # A wasted move under a tight turn limit: the teacher cannot finish after it.
    tight = play(tok, specs_for("swapsort", horizon=4, max_turns=5), bad_student({2}))
    assert locator.locate(tight, deps) == [2, 2, 2]
    # Without the limit the teacher recovers from the same mistake: no drop, nothing located.
    loose = play(tok, specs_for("swapsort", horizon=4), bad_student({2}))
    assert all(e.success for e in loose) and locator.locate(loose, deps) == [None] * 3
    with pytest.raises(ConfigError, match="teacher"):
        locator.locate(episodes, LocatorDeps(tokenizer=tok))


# ----------------------------------------------------------------------------- LLM judge
class FakeJudge:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 answering from a table of prompts."""

    def __init__(self):
        self.answers: dict[str, int | None] = {}
        self.mode = "json"
        self.requests: list[dict] = []
        self.fail_next = 0
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.requests.append(body)
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                if judge.fail_next:
                    judge.fail_next -= 1
                    return self._send(500, {"error": "busy"})
                answer = judge.answers.get(body["messages"][-1]["content"], "unknown")
                content = {
                    "json": json.dumps({"first_error": answer}),
                    "fenced": "```json\n" + json.dumps({"first_error": answer}) + "\n```",
                    "prose": f"The first error is at step {answer}.",
                    "extra_key": json.dumps({"first_error": answer, "why": "x"}),
                    "out_of_range": json.dumps({"first_error": 99}),
                }.get(judge.mode, "")
                if judge.mode == "not_chat":
                    return self._send(200, {"result": content})
                self._send(200, {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/chat/completions"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def judge():
    server = FakeJudge()
    yield server
    server.close()


def test_llm_judge_against_a_fake_server(tok, judge):
    episodes = play(tok, specs_for("gridnav", horizon=4), bad_student({1}))
    episodes += play(tok, specs_for("swapsort", n=2), ExpertActor("student"))
    deps = LocatorDeps(tokenizer=tok)
    truth = ExpertLocator().locate(episodes, deps)
    assert truth == [1, 1, 1, None, None]
    for e, k in zip(episodes, truth):  # the fake judge answers what the expert locator found
        judge.answers[judge_messages(e)[-1]["content"]] = k
    locator = LLMJudgeLocator(url=judge.url, model="tiny-judge", retries=0)
    deps = LocatorDeps(tokenizer=tok)
    assert locator.locate(episodes, deps) == truth
    assert deps.stats["judge_calls"] == 5 and deps.stats["judge_failures"] == 0 and not deps.notes
    request = judge.requests[0]
    assert request["model"] == "tiny-judge" and request["messages"][0]["role"] == "system"
    user = request["messages"][1]["content"]
    assert "step 0: action: " in user and '{"first_error": N}' in user and episodes[0].turns[0].observation in user
    judge.mode = "fenced"
    assert locator.locate(episodes, LocatorDeps(tokenizer=tok)) == truth
    # A 500 is retried.
    judge.mode, judge.fail_next = "json", 1
    assert LLMJudgeLocator(url=judge.url, retries=1, retry_wait_s=0.0).locate(episodes[:1], LocatorDeps(tokenizer=tok)) == [1]


@pytest.mark.parametrize("mode,reason", [("prose", "not JSON"), ("extra_key", "exactly the key"),
                                         ("out_of_range", "outside steps"), ("not_chat", "not a chat completion")])
def test_llm_judge_malformed_replies_fall_back_to_none(tok, judge, mode, reason):
    episodes = play(tok, specs_for("gridnav", n=2, horizon=4), bad_student({1}))
    judge.mode = mode
    deps = LocatorDeps(tokenizer=tok)
    assert LLMJudgeLocator(url=judge.url, retries=0).locate(episodes, deps) == [None, None]
    assert deps.stats["judge_failures"] == 2 and len(deps.notes) == 2
    assert all(reason in note and "\n" not in note for note in deps.notes)


def test_llm_judge_refused_connection_is_a_one_line_error_naming_the_url(tok):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    episodes = play(tok, specs_for("gridnav", n=1, horizon=2), bad_student({0}))
    with pytest.raises(JudgeUnreachable) as info:
        LLMJudgeLocator(url=url, retries=1, retry_wait_s=0.0, timeout_s=5).locate(episodes, LocatorDeps(tokenizer=tok))
    message = str(info.value)
    assert url in message and "\n" not in message and "refused" in message.lower()


def test_parse_judge_reply_is_strict():
    assert parse_judge_reply('{"first_error": 2}', 4) == (2, "")
    assert parse_judge_reply(' {"first_error": null}\n', 4) == (None, "")
    for bad in ('{"first_error": true}', '{"first_error": "2"}', '{"first_error": 2.0}', "[2]", "2",
                'step 2 {"first_error": 2}', '{"first_error": -1}', None):
        index, reason = parse_judge_reply(bad, 4)
        assert index is None and reason


def test_locators_are_chosen_by_name_with_checked_options():
    from opdplug_agents.registries import installed_registry

    registry = installed_registry()
    assert {"expert", "teacher_logprob", "teacher_rollouts", "llm_judge"} <= set(registry.names("locators"))
    assert {registry.owners["locators"][name] for name in ("expert", "teacher_logprob", "llm_judge")} == {"agents"}
    assert build_locator("teacher_rollouts", {"n": 3}).n == 3
    for name, options, match in (("expret", {}, "unknown locator"), ("teacher_logprob", {"treshold": -1}, "unknown key"),
                                 ("teacher_logprob", {"threshold": 0.5}, "threshold"), ("teacher_rollouts", {"margin": 0.0}, "margin"),
                                 ("llm_judge", {"url": "localhost:1"}, "http")):
        with pytest.raises(ConfigError, match=match) as info:
            build_locator(name, options)
        assert "\n" not in str(info.value)
