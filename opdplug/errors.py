"""Errors that reach the user as one line: what is wrong and how to fix it."""


class OpdError(Exception):
    """Base class. The CLI prints ``opdplug: error: <message>`` and exits non-zero."""

    exit_code = 2


class ConfigError(OpdError):
    """A config file is malformed, has an unknown key, a wrong type, or names an unknown component."""


class PluginError(OpdError):
    """A plugin failed to load, registered a name twice, or implements a hook that does not exist."""


class PreflightError(OpdError):
    """A check before training failed (tokenizers differ, self-scoring is not ~0)."""


class TrainingError(OpdError):
    """Training cannot continue (non-finite loss, a stage returned nothing)."""

    exit_code = 3


class RemoteError(TrainingError):
    """A server (teacher, rollout engine) stayed unreachable or kept answering garbage after the
    retry budget was spent. The loop writes a checkpoint before stopping: rerunning resumes."""

    exit_code = 4

    def __init__(self, message: str, url: str = ""):
        super().__init__(message)
        self.url = url
