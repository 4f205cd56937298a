"""The CRI `streaming` handler group: Exec, Attach and PortForward answer a URL on the
streaming server; the request is kept with the URL's token and served when the client
connects (SPDY/3.1 or Kubernetes' WebSocket channel protocols, for all three).

CRI objects (which task runs a container, a pod's network namespace) are found through a
`Lookup` the CRI front door provides; the handler never reads their metadata itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog

from liner_api.runtime.v1 import api_pb2
from linerd.cri import NAMESPACE
from linerd.cri.streaming.lookup import RecordLookup
from linerd.errdefs import FailedPrecondition, InvalidArgument, LinerError
from linerd.runtime import TaskStatus

# The protocols' modules (SPDY, WebSocket, the server: ~0.75 MB) are imported at the first
# Exec, Attach or PortForward: a node may never use them.

log = structlog.get_logger("linerd.cri.streaming")
LEFT_EXEC_WAIT = 10.0  # how long a SIGKILLed exec a previous daemon left may take to exit

if TYPE_CHECKING:
    from linerd.assembly import Core
    from linerd.config import Config
    from linerd.cri.streaming.remotecommand import Options, Runner
    from linerd.cri.streaming.server import Request, Session, StreamServer
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
    from linerd.cri.streaming.remotecommand import Options

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
        namespace: str = NAMESPACE,
    ) -> None:
        self.tasks = tasks
        self.containers = containers
        self.lookup = lookup
        self.namespace = namespace  # where the CRI's tasks, and so the sessions' execs, are
        self._listen = (address, port)
        self._server: StreamServer | None = None
        # One directory of FIFOs per exec session, removed when the session ends.
        self.fifo_dir = Path(state_dir) / "cri-streams"
        self._sweep: asyncio.Task[None] | None = None
        with contextlib.suppress(RuntimeError):  # built on the event loop: start now
            asyncio.get_running_loop()
            self._sweep = asyncio.create_task(self._clean_up_left())

    @property
    def server(self) -> StreamServer:
        if self._server is None:
            from linerd.cri.streaming.server import StreamServer

            self._server = StreamServer(*self._listen)
        return self._server

    async def _url(self, kind: str, session: Session) -> str:
        if self._sweep is None:
            self._sweep = asyncio.create_task(self._clean_up_left())
        await asyncio.shield(self._sweep)
        return await self.server.url(kind, session)

    async def _clean_up_left(self) -> None:
        """What a previous daemon's sessions left (they ended with it), before any new one:
        their FIFOs, and their exec processes, which outlive it (conmon keeps them; the
        runtime recovered them as the tasks' execs) and have no client any more."""
        await asyncio.to_thread(shutil.rmtree, self.fifo_dir, True)
        try:
            await self._end_left_execs()
        except Exception as e:  # no session may fail for it: the next restart tries again
            log.warning("execs a previous daemon left not looked for", error=repr(e))

    async def _end_left_execs(self) -> None:
        for state in self.tasks.list(self.namespace):
            if state.status != TaskStatus.RUNNING:
                continue
            try:
                pids = await self.tasks.pids(self.namespace, state.container_id)
            except LinerError:
                continue  # gone meanwhile
            for info in pids:
                if not info.exec_id:
                    continue
                from linerd.cri.streaming.process import EXEC_PREFIX

                if info.exec_id.startswith(EXEC_PREFIX):
                    await self._end_exec(state.container_id, info.exec_id)

    async def _end_exec(self, container_id: str, exec_id: str) -> None:
        log.warning("killing an exec a previous daemon left", container=container_id,
                    exec_id=exec_id)  # fmt: skip
        ns = self.namespace
        try:
            await self.tasks.kill(ns, container_id, signal.SIGKILL, exec_id=exec_id)
            await asyncio.wait_for(self.tasks.wait(ns, container_id, exec_id), LEFT_EXEC_WAIT)
            await self.tasks.delete_process(ns, container_id, exec_id)
        except (LinerError, TimeoutError) as e:
            log.warning("exec a previous daemon left not ended", exec_id=exec_id, error=str(e))

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
        """Ready to serve: what a previous daemon left cleaned up, the server listening."""
        if self._sweep is None:
            self._sweep = asyncio.create_task(self._clean_up_left())
        await asyncio.shield(self._sweep)
        await self.server.start()

    async def close(self) -> None:
        if self._sweep is not None and not self._sweep.done():
            self._sweep.cancel()
            with contextlib.suppress(BaseException):
                await self._sweep
        if self._server is not None:
            await self._server.close()

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
            from linerd.cri.streaming.process import ExecSession

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
            from linerd.cri.streaming.process import AttachSession

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
        from linerd.cri.streaming import channels, upgrade
        from linerd.cri.streaming.remotecommand import serve_spdy
        from linerd.cri.streaming.wsconn import serve_websocket

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
        from linerd.cri.streaming import portforward, upgrade, wsportforward

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
