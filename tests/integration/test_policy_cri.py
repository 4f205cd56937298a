"""The CRI's PullImage of an image the signature policy refuses fails as liner's pull does
(PERMISSION_DENIED naming the requirement) and leaves no image in `k8s.io`: the CRI pulls
through the local Transfer pull, where the policy is enforced. An accepted image gets
containerd's three records, the `sha256:<config>` one included (a name that is no reference,
admitted as another name of the accepted target).

Skipped where the CRI front door (linerd.cri.service) is not in the tree.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from imagebuild import BusyboxLayout
from registry import Registry
from support import Linerd, ns

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("linerd.cri.service") is None,
        reason="the CRI front door (linerd.cri.service) is not in this tree yet",
    ),
]


@pytest.fixture
def cri_daemon(tmp_path: Path, registry: Registry) -> Iterator[Linerd]:
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "default": [{"type": "insecureAcceptAnything"}],
                "transports": {"docker": {f"{registry.host}/cri-refused": [{"type": "reject"}]}},
            }
        )
    )
    config = tmp_path / "config.toml"
    config.write_text(f'[policy]\npath = "{policy}"\nregistries_d = ""\n[cri]\nenabled = true\n')
    daemon = Linerd(tmp_path / "d", ["--config", str(config)])
    daemon.start()
    yield daemon
    daemon.stop()


def test_cri_pull_of_a_refused_image_fails_as_liner_pull_does(
    cri_daemon: Linerd, registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    from liner_api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
    from liner_api.runtime.v1 import api_pb2, api_pb2_grpc

    ref = registry.push_layout(busybox_layout.path, "cri-refused/app:v1", tag="latest")
    with cri_daemon.channel() as channel:
        images = api_pb2_grpc.ImageServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "rejected by reject" in (refused.value.details() or "")
        listed = images_pb2_grpc.ImagesStub(channel).List(
            images_pb2.ListImagesRequest(), metadata=ns("k8s.io")
        )
        assert not [i.name for i in listed.images if "cri-refused" in i.name]


def test_cri_pull_of_an_accepted_image_records_its_three_names(
    cri_daemon: Linerd, registry: Registry
) -> None:
    from liner_api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
    from liner_api.runtime.v1 import api_pb2, api_pb2_grpc

    ref = registry.ref("library/busybox:latest")
    with cri_daemon.channel() as channel:
        pulled = api_pb2_grpc.ImageServiceStub(channel).PullImage(
            api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref))
        )
        names = {
            i.name
            for i in images_pb2_grpc.ImagesStub(channel)
            .List(images_pb2.ListImagesRequest(), metadata=ns("k8s.io"))
            .images
        }
    assert pulled.image_ref in names and ref in names
    assert any(n.startswith(f"{registry.host}/library/busybox@sha256:") for n in names)
