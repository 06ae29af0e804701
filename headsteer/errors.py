"""The errors headsteer raises on purpose: bad input, or a refused operation.

Every one derives from :class:`HeadsteerError` and says which file, flag,
pair or field is at fault. The command line turns exactly these into one
line on stderr and exit status 2; any other exception is a bug and keeps
its traceback. Each class also derives from the builtin it refines
(``ValueError``, ``FloatingPointError``, ...), so code that caught those
keeps working.
"""

from __future__ import annotations


class HeadsteerError(Exception):
    """Base class: a problem with the user's input or request, explained in the message."""


class ConfigError(HeadsteerError, ValueError):
    """A setting (a config field or a command-line flag) has a value headsteer cannot use."""


class TaskError(HeadsteerError, ValueError):
    """A task could not be found, read or split, or one of its pairs is unusable."""


class TemplateTokenizationError(TaskError):
    """A pair's prompt tokens are not a strict prefix of its prompt + answer tokens."""


class PromptTooLongError(TaskError):
    """A prompt (with its answer) is longer than the configured token limit."""


class ModelLoadError(HeadsteerError, ValueError):
    """A model could not be found or loaded (a wrong name, no network, a broken folder)."""


class ModelMismatchError(HeadsteerError, ValueError):
    """An intervention (or other steering object) was applied to a model it was not trained on."""


class ArtifactError(HeadsteerError, ValueError):
    """A saved intervention is missing, incomplete, malformed or internally inconsistent."""


class OutputPathError(HeadsteerError, ValueError):
    """An output location cannot be written (a directory in the way, no permission, ...)."""


class ResultsFileError(HeadsteerError, ValueError):
    """A results file belongs to other settings or data, has no settings, or is malformed."""


class NonFiniteLossError(HeadsteerError, FloatingPointError):
    """The task loss or its gradient became NaN or infinite during a fit."""


class DependencyError(HeadsteerError, RuntimeError):
    """Something outside Python that a command needs is missing (e.g. a Chromium for PNG export)."""
