"""One line for the user from an error, the same way everywhere (a run's exit, a sweep's failed job,
metrics.json's ``error``)."""
from hydra.errors import InstantiationException


def first_line(error: BaseException) -> str:
    """The first line of the error's message, or its type's name when it has none. Hydra wraps a
    constructor's error in InstantiationException: the user wants the constructor's line."""
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
