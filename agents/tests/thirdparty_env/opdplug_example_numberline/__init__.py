"""opdplug-example-numberline: what a third-party ``opdplug-agents`` plugin looks like.

* ``numberline`` (``env``): walk from one number to another, one ``up`` or ``down`` at a time,
  then ``stop``; ``horizon`` is the distance, so the expert needs ``horizon + 1`` calls.
* ``first_invalid`` (``locator``): the first student turn whose call the environment rejected
  (or that was cut off), for the ``agent_score`` sampler.

Both are registered by ``plugin`` through the hooks ``opdplug-agents`` declares
(``opd_register_environments``, ``opd_register_locators``), from the ``opdplug`` entry point.
"""
__version__ = "0.0.1"
