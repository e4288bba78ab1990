"""User-facing error types.

Every error a user can cause (a bad file, a missing model, inconsistent inputs) is raised as an
``AnyTalkerError`` subclass with a message that names the input and what was expected, so that the
CLI and the ComfyUI nodes can show it verbatim instead of a stack trace from deep inside torch.
"""


class AnyTalkerError(Exception):
    """Base class of all errors caused by user input or missing files."""


class CheckpointError(AnyTalkerError):
    """A model file is missing, unreadable, truncated, or not the expected model."""


class InputError(AnyTalkerError, ValueError):
    """An input (image, audio, mask, setting) is unusable; the message says which and why."""


class MissingModelError(AnyTalkerError, FileNotFoundError):
    """A model file the user must supply is absent; the message says where to put it."""


class Interrupted(AnyTalkerError):
    """A long job (sampling, training, preparation) was cancelled through its callback."""
