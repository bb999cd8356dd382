"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class AsrkitError(Exception):
    """Bad input from the user: the message names the thing and says how to fix it."""


class AudioError(AsrkitError):
    """An audio file that cannot be read or holds no samples."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.path, self.reason))
