"""The one exception type users see for bad inputs: its message says what is wrong and what to do."""


class OpenUniError(Exception):
    pass


def reason(error: BaseException, limit: int = 300) -> str:
    """A library's exception as one short line for an `OpenUniError` message (theirs often run over many)."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."
