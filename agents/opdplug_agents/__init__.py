"""opdplug-agents: gymnasium text/tool environments for multi-turn agent distillation.

* ``opdplug_agents.tools``       the tool-call text format, its schema and a parser that never raises.
* ``opdplug_agents.calculator``  integer arithmetic by a hand-written parser (no ``eval``).
* ``opdplug_agents.envs``        the environments (``calc_lookup``, ``gridnav``, ``swapsort``),
  registered with gymnasium as ``opdplug/CalcLookup-v0``, ``opdplug/GridNav-v0``,
  ``opdplug/SwapSort-v0`` when imported.
* ``opdplug_agents.plugin``      the ``opdplug`` entry point: registers the environments by name.
"""
__version__ = "0.1.0"
