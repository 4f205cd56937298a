"""The liner Policy API: messages to calls of the signature policy gate and back."""

from __future__ import annotations

import grpc

from liner_api.liner.services.policy.v1 import policy_pb2, policy_pb2_grpc
from linerd.local.policy import PolicyGate


class PolicyService(policy_pb2_grpc.PolicyServicer):
    def __init__(self, gate: PolicyGate) -> None:
        self._gate = gate

    async def Verify(
        self, request: policy_pb2.VerifyRequest, ctx: grpc.aio.ServicerContext
    ) -> policy_pb2.VerifyResponse:
        name, digest, verdict = await self._gate.verify(
            request.reference,
            plain_http=request.plain_http,
            username=request.credentials.username,
            secret=request.credentials.secret,
            public_key=request.public_key,
        )
        if verdict is None:
            return policy_pb2.VerifyResponse(
                accepted=True,
                requirement="no policy",
                reason="linerd has no signature policy: every image is accepted",
                name=name,
                digest=digest,
                policy=False,
                policy_generation=self._gate.generation,
            )
        return policy_pb2.VerifyResponse(
            accepted=verdict.accepted,
            requirement=verdict.requirement,
            reason=verdict.reason,
            scope=verdict.scope,
            name=name,
            digest=digest,
            policy=True,
            policy_generation=0 if request.public_key else self._gate.generation,
        )

    async def Check(
        self, request: policy_pb2.CheckRequest, ctx: grpc.aio.ServicerContext
    ) -> policy_pb2.CheckResponse:
        scopes = await self._gate.check(request.policy, request.name)
        return policy_pb2.CheckResponse(scopes=scopes)
