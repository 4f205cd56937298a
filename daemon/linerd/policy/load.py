"""Loading a policy and its registries.d together, off the event loop, for one generation."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from linerd.policy.evaluator import Evaluator
from linerd.policy.policyfile import load_policy
from linerd.policy.registriesd import RegistriesD, load_dir

if TYPE_CHECKING:
    from linerd.remotes.httpclient import HTTPClient


def load_evaluator_sync(
    policy_path: str,
    registries_d: str,
    generation: int,
    *,
    http_client: HTTPClient | None = None,
) -> Evaluator | None:
    """The evaluator for ``policy_path``; None when the path is empty (no policy: every image
    is accepted, as before policies existed). Raises PolicyError for a bad file."""
    if not policy_path:
        return None
    policy = load_policy(policy_path)
    registries = load_dir(registries_d) if registries_d else RegistriesD()
    return Evaluator(policy, registries, generation, http_client=http_client)


async def load_evaluator(
    policy_path: str,
    registries_d: str,
    generation: int,
    *,
    http_client: HTTPClient | None = None,
) -> Evaluator | None:
    """`load_evaluator_sync` in a thread (file reads and key parsing stay off the loop)."""
    return await asyncio.to_thread(
        load_evaluator_sync, policy_path, registries_d, generation, http_client=http_client
    )
