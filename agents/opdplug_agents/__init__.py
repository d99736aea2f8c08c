"""opdplug-agents: gymnasium text/tool environments for multi-turn agent distillation.

* ``opdplug_agents.tools``       the tool-call text format, its schema and a parser that never raises.
* ``opdplug_agents.calculator``  integer arithmetic by a hand-written parser (no ``eval``).
* ``opdplug_agents.envs``        the environments this plugin ships (``calc_lookup``, ``gridnav``,
  ``swapsort``), registered with gymnasium as ``opdplug/CalcLookup-v0``, ``opdplug/GridNav-v0``,
  ``opdplug/SwapSort-v0`` when imported, and ``ToolTextEnv`` for other plugins' environments.
* ``opdplug_agents.registries``  environments and locators by name, through the opdplug registry
  (this plugin's own and any other plugin's alike).
* ``opdplug_agents.textio``      the token layout of an episode (``<bos> obs ACT action <eos> ...``),
  observation/action encoding and action decoding.
* ``opdplug_agents.rollout``     batched multi-turn episodes (``run_episodes``); the data in
  ``episodes``, who acts in ``actors``, their ``RolloutBatch`` in ``batching``
  (``episodes_to_batch``: exact ids, producers, loss masks, turn ids).
* ``opdplug_agents.task``        the ``agent`` task: prompts are first observations of episodes.
* ``opdplug_agents.samplers``    the ``agent``, ``agent_teacher`` and ``agent_expert`` samplers.
* ``opdplug_agents.locators``    earliest-error locators (``expert``, ``teacher_logprob``,
  ``teacher_rollouts``, ``llm_judge``; one module each) behind ``locate(episodes, deps, start=None)``.
* ``opdplug_agents.correction``  the ``agent_score`` (SCoRe) and ``agent_dagger`` samplers.
* ``opdplug_agents.credit``      credit across turns: ``turn_level``, ``discounted_episode``.
* ``opdplug_agents.accounting``  per-step ``agent/*`` metrics: teacher calls, successes, first errors.
* ``opdplug_agents.hookspecs``   the registry kinds this plugin adds: ``environments``, ``locators``.
* ``opdplug_agents.validation``  ``opd_validate``: those names resolved before anything loads.
* ``opdplug_agents.plugin``      the ``opdplug`` entry point: registers the environments, the
  locators, the task, the samplers and the ``agent`` verifier by name.
"""
__version__ = "0.1.0"
