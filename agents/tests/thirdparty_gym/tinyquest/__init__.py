"""TinyQuest: walk through a few rooms, take each room's key, open each door, find the treasure.

``gymnasium.make("TinyQuest-v0", rooms=2)``. Observations and actions are free text
("take the red key", "open the north door"); commands are matched case-insensitively, extra
words such as "the" are fine. ``info["won"]`` says the treasure was found and
``info["expert"]`` is the next command of a perfect player; ``reset``'s ``info["game"]`` is
the layout's number. Games come from a fixed pool of
``pool`` layouts (``reset(seed=s)`` plays layout ``s % pool``).
"""
import gymnasium

from .game import TinyQuestEnv

if "TinyQuest-v0" not in gymnasium.registry:
    gymnasium.register(id="TinyQuest-v0", entry_point="tinyquest.game:TinyQuestEnv", max_episode_steps=20)

__all__ = ["TinyQuestEnv"]
