"""InternEvo plugin (work in progress)."""


def register() -> None:
    pass
