"""The one error a bad policy or registries.d file raises."""

from __future__ import annotations

from linerd import errdefs


class PolicyError(errdefs.InvalidArgument):
    """A policy.json or registries.d file that cannot be used, as one line naming the file."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")
