"""The one exception type users see for bad inputs: its message says what is wrong and what to do."""


class OpenUniError(Exception):
    pass
