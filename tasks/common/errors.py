"""The errors a user can cause.

Every bad input ends in one of these: the CLI prints its message as one line (no traceback unless
`--debug`) and exits non-zero. Anything else escaping a stage is a bug in chat-pipeline.
"""


class ChatpipeError(Exception):
    """A problem with the user's input or configuration, described in one line."""


class ConfigError(ChatpipeError):
    """params.yaml, an overlay or an override is invalid."""


class InputError(ChatpipeError):
    """An input file, directory or dataset cannot be used; the message names it (and the line)."""


class TrainingError(ChatpipeError):
    """Training cannot go on (a NaN or inf loss); the last good checkpoint is kept."""


class StageFailed(ChatpipeError):
    """A stage ran and its verdict is to stop the pipeline here (its summary says why)."""


class GateFailed(StageFailed):
    """The pilot run is not healthy enough to start the full run; metrics/gate.json says why."""
