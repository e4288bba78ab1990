"""User-facing error types.

Every error a user can cause (a bad file, a missing model, inconsistent inputs) is raised as an
``AnyTalkerError`` subclass with a message that names the input and what was expected, so that the
CLI and the ComfyUI nodes can show it verbatim instead of a stack trace from deep inside torch.
"""


class AnyTalkerError(Exception):
    """Base class of all errors caused by user input or missing files.

    ``exit_code`` is what the ``anytalker`` command exits with when this error stops it (see README
    "Exit codes"): 2 for bad input, 130 for an interruption, 1 for a run that failed on the way.
    """

    exit_code = 2


class CheckpointError(AnyTalkerError):
    """A model file is missing, unreadable, truncated, or not the expected model."""


class InputError(AnyTalkerError, ValueError):
    """An input (image, audio, mask, setting) is unusable; the message says which and why."""


class MissingModelError(AnyTalkerError, FileNotFoundError):
    """A model file the user must supply is absent; the message says where to put it."""


class Interrupted(AnyTalkerError):
    """A long job (sampling, training, preparation) was cancelled through its callback or a signal."""

    exit_code = 130


class OutputLocationError(InputError):
    """The output path cannot be written: an existing folder, a read-only location, a full disk."""


class DeviceError(InputError):
    """The requested torch device does not exist in this torch build or on this machine."""


class NonFiniteError(AnyTalkerError):
    """A model produced NaN or infinite values; the message names the stage or step (often bad weights)."""

    exit_code = 1
