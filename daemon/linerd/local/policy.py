"""The signature policy at the store's doors: every image entering the store passes here.

`PolicyGate` holds the loaded policy (`linerd.policy`) and its generation, and judges an image
before its record is created or retargeted: the local Transfer pull (liner's pull and the CRI's
PullImage, with the pull's own registry client fetching cosign attachments) and the local
Images create and update (the record ctr's client-side pull creates: attachments are fetched
from the image name's registry with the daemon's registry configuration). A refusal is
`PermissionDenied` naming the requirement, a `liner_policy_verdicts_total{verdict="rejected"}`
and a `/images/refused` event (`liner.events.ImageRefused`). Verdicts are cached by the
evaluator per (manifest digest, reference, generation), so an image verified once pays nothing
twice until the policy is reloaded.

With no policy configured nothing of `linerd.policy` (cryptography) is imported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from liner_api.liner.events import policy_pb2
from linerd import errdefs
from linerd.core.types import Descriptor
from linerd.local.events import Publisher
from linerd.remotes import reference as remote_reference

if TYPE_CHECKING:
    from linerd.metrics import Metrics
    from linerd.policy import Evaluator, Verdict
    from linerd.policy.refs import DockerRef
    from linerd.policy.sigstore import SignatureArtifacts
    from linerd.remotes.client import RegistryClient
    from linerd.remotes.hosts import HostsConfig

log = structlog.get_logger("linerd.policy")

REFUSED_TOPIC = "/images/refused"


class RegistryArtifacts:
    """`SignatureArtifacts` over a `RegistryClient`: the same hosts configuration, TLS and
    credentials as the pull it serves. Sizes are bounded by the caller's limits."""

    def __init__(self, client: RegistryClient) -> None:
        self._client = client

    async def manifest(
        self, repository: DockerRef, tag: str, max_bytes: int
    ) -> tuple[str, bytes] | None:
        ref = remote_reference.Reference(repository.host, repository.path, tag=tag)
        try:
            _, desc = await self._client.resolve(ref)
        except errdefs.NotFound:
            return None
        if desc.size > max_bytes:
            raise errdefs.InvalidArgument(
                f"signature manifest is {desc.size} bytes, over the {max_bytes}-byte limit"
            )
        data = await self._client.fetch_manifest(ref, desc, max_size=max_bytes)
        return desc.media_type, data

    async def blob(self, repository: DockerRef, digest: str, max_bytes: int) -> bytes:
        ref = remote_reference.Reference(repository.host, repository.path, digest=digest)
        # The descriptor's size is the layer's declared size (the caller checked it against
        # its limit): the client never reads past it and checks the digest.
        desc = Descriptor("application/octet-stream", digest, max_bytes)
        chunks: list[bytes] = []
        async with contextlib.aclosing(self._client.fetch_blob(ref, desc)) as stream:
            async for chunk in stream:
                chunks.append(chunk)
        return b"".join(chunks)


class PolicyGate:
    """The loaded policy (None: accept anything) and the check every entry path makes."""

    def __init__(
        self,
        metrics: Metrics,
        publisher: Publisher,
        hosts: Callable[[], HostsConfig],
    ) -> None:
        self._metrics = metrics
        self._publisher = publisher
        self._hosts = hosts
        self._evaluator: Evaluator | None = None
        self.generation = 0
        self.path = ""

    @property
    def evaluator(self) -> Evaluator | None:
        return self._evaluator

    async def load(self, path: str, registries_d: str) -> None:
        """Load (or reload) the policy; raises PolicyError (the old policy stays) when the
        file or registries.d is bad. Every successful load is a new generation."""
        if path:
            from linerd.policy import load_evaluator

            evaluator = await load_evaluator(path, registries_d, self.generation + 1)
        else:
            evaluator = None
        self.generation += 1
        self._evaluator, self.path = evaluator, path
        log.info("policy loaded", path=path or None, generation=self.generation)

    async def admit(
        self,
        namespace: str,
        name: str | remote_reference.Reference,
        target: Descriptor,
        *,
        via: str,
        artifacts: SignatureArtifacts | None = None,
        manifest: bytes | None = None,
    ) -> None:
        """Return when the image may enter the store; raise PermissionDenied when the policy
        refuses it. ``artifacts`` fetches cosign attachments (default: a registry client for
        the image name's registry, which connects only if a requirement reads signatures)."""
        evaluator = self._evaluator
        if evaluator is None:
            return
        try:
            ref = name if isinstance(name, remote_reference.Reference) else _parse(name)
        except errdefs.InvalidArgument:
            self._refused(namespace, str(name), target.digest, via, None)
            raise errdefs.PermissionDenied(
                f"image {name!r}: not a registry reference, so the signature policy "
                f"({self.path}) cannot judge it"
            ) from None
        if artifacts is not None:
            verdict = await evaluator.evaluate(
                ref, target.digest, artifacts=artifacts, manifest=manifest
            )
        else:
            verdict = await self._evaluate_with_own_client(evaluator, ref, target, manifest)
        if verdict.accepted:
            self._metrics.observe_verdict(True)
            return
        self._refused(namespace, str(ref), target.digest, via, verdict)
        raise errdefs.PermissionDenied(
            f"image {ref} refused by the signature policy: {verdict.message}"
        )

    async def _evaluate_with_own_client(
        self,
        evaluator: Evaluator,
        ref: remote_reference.Reference,
        target: Descriptor,
        manifest: bytes | None,
    ) -> Verdict:
        """Images/Create and Update have no registry context: the image name's registry, as
        the daemon's registry configuration reaches it (a client made only when needed)."""
        from linerd.remotes.client import RegistryClient

        client = RegistryClient(self._hosts())
        try:
            return await evaluator.evaluate(
                ref, target.digest, artifacts=RegistryArtifacts(client), manifest=manifest
            )
        finally:
            await client.aclose()

    # -- questions without storing anything (the Policy API) ---------------------------------

    async def verify(
        self,
        reference: str,
        *,
        plain_http: bool = False,
        username: str = "",
        secret: str = "",
        public_key: bytes = b"",
    ) -> tuple[str, str, Verdict | None]:
        """The verdict on what ``reference`` names at its registry now: (name, digest,
        verdict), the verdict None when there is no policy (and no ``public_key``). With
        ``public_key`` (PEM) the judge is that cosign key alone (`sigstoreSigned` with
        signedIdentity matchRepository, the attachment in the image's repository)."""
        from linerd.remotes.client import RegistryClient

        ref = _parse(reference)
        evaluator = await _key_evaluator(public_key) if public_key else self._evaluator
        hosts = self._hosts().for_request(ref.host, plain_http, username, secret)
        async with RegistryClient(hosts) as client:
            name, root = await client.resolve(ref)
            if evaluator is None:
                return name, root.digest, None
            data = await client.fetch_manifest(ref, root)
            verdict = await evaluator.evaluate(
                ref, root.digest, artifacts=RegistryArtifacts(client), manifest=data
            )
        return name, root.digest, verdict

    @staticmethod
    async def check(data: bytes, name: str) -> list[str]:
        """Parse policy.json bytes as a load would (key files read here); one line per scope.
        Raises PolicyError naming ``name``."""
        import asyncio

        from linerd.policy import parse_policy

        policy = await asyncio.to_thread(parse_policy, data, name or "<policy>")

        def line(scope: str, requirements: tuple[Any, ...]) -> str:
            return f"{scope}: " + " and ".join(r.describe() for r in requirements)

        lines = [line("default", policy.default)]
        if policy.docker_default is not None:
            lines.append(line('docker ""', policy.docker_default))
        lines += [line(f"docker {scope!r}", reqs) for scope, reqs in policy.docker_scopes.items()]
        for transport, scopes in policy.other_transports.items():
            lines += [
                line(f"{transport} {scope!r} (not used by liner)", reqs)
                for scope, reqs in scopes.items()
            ]
        return lines

    def _refused(
        self, namespace: str, name: str, digest: str, via: str, verdict: Verdict | None
    ) -> None:
        self._metrics.observe_verdict(False)
        requirement = verdict.requirement if verdict is not None else "image name"
        reason = verdict.reason if verdict is not None else "not a registry reference"
        scope = verdict.scope if verdict is not None else ""
        log.warning(
            "image refused by the signature policy",
            namespace=namespace,
            image=name,
            digest=digest,
            via=via,
            requirement=requirement,
            reason=reason,
        )
        self._publisher.publish(
            namespace,
            REFUSED_TOPIC,
            policy_pb2.ImageRefused(
                name=name,
                digest=digest,
                requirement=requirement,
                reason=reason,
                scope=scope,
                via=via,
                policy_generation=self.generation,
            ),
        )


async def _key_evaluator(pem: bytes) -> Evaluator:
    """A one-off policy: the cosign key ``pem`` must have signed the image (any registry)."""
    import asyncio

    from linerd.policy import Evaluator, Policy, PolicyError, RegistriesD
    from linerd.policy.identity import MatchRepository
    from linerd.policy.policyfile import load_public_key
    from linerd.policy.registriesd import Namespace
    from linerd.policy.requirements import SigstoreSigned

    try:
        key = await asyncio.to_thread(load_public_key, pem, "the key")
    except Exception as e:  # policyfile's own error type: one line
        raise PolicyError("--key", str(e)) from None
    # matchRepository: cosign signs the repository name (no tag), as `cosign verify` checks.
    requirement = SigstoreSigned(key, "given with the request", MatchRepository())
    policy = Policy((requirement,), source="--key")
    registries = RegistriesD(default_docker=Namespace(use_sigstore_attachments=True))
    return Evaluator(policy, registries)


def _parse(name: str) -> remote_reference.Reference:
    # A bare digest (the CRI's image id record, `sha256:<config digest>`) would parse as
    # docker.io/library/sha256 with a tag: it names no registry.
    if name.startswith("sha256:"):
        raise errdefs.InvalidArgument(f"{name!r} is a digest, not a reference")
    return remote_reference.parse(name)


def is_reference(name: str) -> bool:
    """Whether an image name is a registry reference the policy can judge."""
    try:
        _parse(name)
    except errdefs.InvalidArgument:
        return False
    return True
