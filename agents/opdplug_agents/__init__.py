"""opdplug-agents: gymnasium text/tool environments for multi-turn agent distillation.

* ``opdplug_agents.tools``       the tool-call text format, its schema and a parser that never raises.
* ``opdplug_agents.calculator``  integer arithmetic by a hand-written parser (no ``eval``).
* ``opdplug_agents.envs``        the environments (``calc_lookup``, ``gridnav``, ``swapsort``),
  registered with gymnasium as ``opdplug/CalcLookup-v0``, ``opdplug/GridNav-v0``,
  ``opdplug/SwapSort-v0`` when imported.
* ``opdplug_agents.textio``      the token layout of an episode (``<bos> obs ACT action <eos> ...``),
  observation/action encoding and action decoding.
* ``opdplug_agents.rollout``     batched multi-turn episodes (``run_episodes``) and their
  ``RolloutBatch`` (``episodes_to_batch``): exact ids, producers, loss masks, turn ids.
* ``opdplug_agents.task``        the ``agent`` task: prompts are first observations of episodes.
* ``opdplug_agents.samplers``    the ``agent``, ``agent_teacher`` and ``agent_expert`` samplers.
* ``opdplug_agents.locators``    earliest-error locators by name (``expert``, ``teacher_logprob``,
  ``teacher_rollouts``, ``llm_judge``) behind ``locate(episodes, deps, start=None)``.
* ``opdplug_agents.correction``  the ``agent_score`` (SCoRe) and ``agent_dagger`` samplers.
* ``opdplug_agents.credit``      credit across turns: ``turn_level``, ``discounted_episode``.
* ``opdplug_agents.accounting``  per-step ``agent/*`` metrics: teacher calls, successes, first errors.
* ``opdplug_agents.plugin``      the ``opdplug`` entry point: registers the environments, the
  task, the samplers and the ``agent`` verifier by name.
"""
__version__ = "0.1.0"
