"""The CRI `streaming` handler group: Exec, Attach and PortForward answer a URL on the
streaming server; the request is kept with the URL's token and served when the client
connects (SPDY/3.1 or Kubernetes' WebSocket channel protocols, for all three).

CRI objects (which task runs a container, a pod's network namespace) are found through a
`Lookup` the CRI front door provides; the handler never reads their metadata itself.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from liner_api.runtime.v1 import api_pb2
from linerd.cri.streaming import channels, portforward, upgrade, wsportforward
from linerd.cri.streaming.lookup import RecordLookup
from linerd.cri.streaming.process import AttachSession, ExecSession
from linerd.cri.streaming.remotecommand import Options, Runner, serve_spdy
from linerd.cri.streaming.server import Request, Session, StreamServer
from linerd.cri.streaming.wsconn import serve_websocket
from linerd.errdefs import FailedPrecondition, InvalidArgument, LinerError
from linerd.runtime import TaskStatus

if TYPE_CHECKING:
    from linerd.assembly import Core
    from linerd.config import Config
    from linerd.local.containers import Containers
    from linerd.local.tasks import Tasks


class Lookup(Protocol):
    async def container(self, container_id: str) -> tuple[str, str]:
        """(containerd namespace, container id) of the task that runs the CRI container;
        raises NotFound."""
        ...

    async def sandbox_netns(self, sandbox_id: str) -> str | None:
        """The pod's network namespace path, None for host network; raises NotFound."""
        ...


def _options(request: api_pb2.ExecRequest | api_pb2.AttachRequest) -> Options:
    if not (request.stdin or request.stdout or request.stderr):
        raise InvalidArgument("one of stdin, stdout, or stderr must be set")
    if request.tty and request.stderr:
        raise InvalidArgument("tty and stderr cannot both be true")
    return Options(request.stdin, request.stdout, request.stderr, request.tty)


class StreamingHandler:
    def __init__(
        self,
        tasks: Tasks,
        containers: Containers,
        lookup: Lookup,
        state_dir: str | Path,
        address: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.tasks = tasks
        self.containers = containers
        self.lookup = lookup
        self.server = StreamServer(address, port)
        # One directory of FIFOs per exec session, removed when the session ends.
        self.fifo_dir = Path(state_dir) / "cri-streams"
        self._sweep: asyncio.Task[None] | None = None

    async def _url(self, kind: str, session: Session) -> str:
        if self._sweep is None:
            # What a previous daemon's sessions left (they ended with it), before any new one.
            self._sweep = asyncio.create_task(asyncio.to_thread(shutil.rmtree, self.fifo_dir, True))
        await asyncio.shield(self._sweep)
        return await self.server.url(kind, session)

    @classmethod
    def of(cls, core: Core, config: Config, lookup: Lookup | None = None) -> StreamingHandler:
        """The group as the daemon builds it: `[cri] stream_server_*`, CRI objects read from
        their records in k8s.io unless `lookup` is given."""
        return cls(
            core.local.tasks,
            core.local.containers,
            lookup or RecordLookup(core.local.containers, core.local.tasks),
            config.state,
            config.cri.stream_server_address,
            config.cri.stream_server_port,
        )

    async def start(self) -> None:
        await self.server.start()

    async def close(self) -> None:
        await self.server.close()

    async def _running(self, container_id: str) -> tuple[str, str]:
        if not container_id:
            raise InvalidArgument("container id must not be empty")
        namespace, task_id = await self.lookup.container(container_id)
        try:
            state = self.tasks.state(namespace, task_id)
        except LinerError:
            state = None
        if state is None or state.status != TaskStatus.RUNNING:
            raise FailedPrecondition(f"container {container_id} is not running")
        return namespace, task_id

    async def exec(self, request: api_pb2.ExecRequest) -> api_pb2.ExecResponse:
        options = _options(request)
        if not request.cmd:
            raise InvalidArgument("cmd must not be empty")
        namespace, task_id = await self._running(request.container_id)
        command = list(request.cmd)

        def runner() -> Runner:
            session = ExecSession(
                self.tasks, self.containers, self.fifo_dir, namespace, task_id, command
            )
            return session.run

        url = await self._url("exec", partial(self._remote, options, runner))
        return api_pb2.ExecResponse(url=url)

    async def attach(self, request: api_pb2.AttachRequest) -> api_pb2.AttachResponse:
        options = _options(request)
        namespace, task_id = await self._running(request.container_id)
        sock = self.tasks.runtime.attach_socket(namespace, task_id)

        def runner() -> Runner:
            return AttachSession(self.tasks, namespace, task_id, sock).run

        url = await self._url("attach", partial(self._remote, options, runner))
        return api_pb2.AttachResponse(url=url)

    async def port_forward(
        self, request: api_pb2.PortForwardRequest
    ) -> api_pb2.PortForwardResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod sandbox id must not be empty")
        path = await self.lookup.sandbox_netns(request.pod_sandbox_id)
        ports = list(request.port)
        url = await self._url("portforward", partial(self._portforward, path, ports))
        return api_pb2.PortForwardResponse(url=url)

    async def _remote(
        self,
        options: Options,
        runner: Callable[[], Runner],
        request: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        decision = upgrade.negotiate(
            request.method,
            request.headers,
            upgrade.REMOTECOMMAND_SPDY,
            channels.REMOTECOMMAND_PROTOCOLS,
        )
        if isinstance(decision, upgrade.Response):
            writer.write(decision.head())
            await writer.drain()
            return
        writer.write(decision.response.head())
        await writer.drain()
        run = runner()  # built now: a URL never used leaves nothing behind
        if decision.transport == "websocket":
            assert decision.channel_protocol is not None
            await serve_websocket(reader, writer, decision.channel_protocol, options, run)
        else:
            await serve_spdy(reader, writer, decision.protocol, options, run)

    async def _portforward(
        self,
        netns_path: str | None,
        requested_ports: list[int],
        request: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        decision = upgrade.negotiate(
            request.method, request.headers, upgrade.PORTFORWARD_SPDY, wsportforward.PROTOCOLS
        )
        ports: list[int] = []
        if isinstance(decision, upgrade.Upgrade) and decision.transport == "websocket":
            # The ports are fixed when a WebSocket session opens (SPDY names one per stream).
            try:
                ports = wsportforward.ports_of(requested_ports, request.query)
            except InvalidArgument as e:
                decision = upgrade.Response(400, (), f"{e}\n".encode())
        if isinstance(decision, upgrade.Response):
            writer.write(decision.head())
            await writer.drain()
            return
        writer.write(decision.response.head())
        await writer.drain()
        if decision.transport == "websocket":
            assert decision.channel_protocol is not None
            await wsportforward.serve(reader, writer, decision.channel_protocol, ports, netns_path)
        else:
            await portforward.serve(reader, writer, netns_path)
