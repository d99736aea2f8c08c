"""The TinyQuest environment (see the package docstring)."""
import random

import gymnasium
from gymnasium import spaces

COLOURS = ("red", "blue", "green", "gold", "white")
DIRECTIONS = ("north", "south", "east", "west")
ROOMS = ("hall", "kitchen", "cellar", "library", "tower", "garden")


class TinyQuestEnv(gymnasium.Env):
    metadata = {"render_modes": []}

    def __init__(self, rooms=2, pool=200):
        self.rooms, self.pool = int(rooms), int(pool)
        self.observation_space = spaces.Text(400)
        self.action_space = spaces.Text(100)
        self.layout = None

    def _describe(self):
        room = self.layout[self.at]
        door = "open" if self.opened else "locked"
        key = "" if self.has_key else f" A {room['key']} key lies here."
        return f"You are in the {room['name']}.{key} The {room['door']} door is {door}."

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.game = 0 if seed is None else seed % self.pool
        rng = random.Random(self.game)
        names = rng.sample(ROOMS, self.rooms)
        self.layout = [{"name": n, "key": rng.choice(COLOURS), "door": rng.choice(DIRECTIONS)} for n in names]
        self.at, self.has_key, self.opened = 0, False, False
        return "Find the treasure. " + self._describe(), {**self._info(False), "game": self.game}

    def _expert(self):
        room = self.layout[self.at]
        if not self.has_key:
            return f"take {room['key']} key"
        if not self.opened:
            return f"open {room['door']} door"
        return f"go {room['door']}"

    def _info(self, won):
        return {"won": won, "expert": None if won else self._expert()}

    def step(self, action):
        words = [w for w in str(action).lower().replace(".", " ").split() if w not in ("the", "a")]
        room = self.layout[self.at]
        if words == ["take", room["key"], "key"] and not self.has_key:
            self.has_key = True
            text = f"You take the {room['key']} key. " + self._describe()
        elif words == ["open", room["door"], "door"] and self.has_key and not self.opened:
            self.opened = True
            text = f"The {room['door']} door opens. " + self._describe()
        elif words == ["go", room["door"]] and self.opened:
            self.at += 1
            if self.at == self.rooms:
                return "You found the treasure!", 1.0, True, False, self._info(True)
            self.has_key = self.opened = False
            text = self._describe()
        else:
            text = "Nothing happens. " + self._describe()
        return text, 0.0, False, False, self._info(False)
