"""CNI results and messages: pod IPs from a result, plugin errors, what each plugin is given."""

from __future__ import annotations

import json

import pytest

from linerd.cri.cni import (
    PodRef,
    PortMapping,
    capability_args,
    cni_args,
    parse_config_list,
    plugin_error,
    plugin_stdin,
    pod_network,
)
from linerd.errdefs import FailedPrecondition, Internal, InvalidArgument, NotFound, Unavailable

pytestmark = pytest.mark.unit

DUAL = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "cni0", "mac": "aa:bb:cc:dd:ee:00"},
        {"name": "veth1", "mac": "aa:bb:cc:dd:ee:01"},
        {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/run/netns/cni-x"},
        {"name": "net1", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/netns/cni-x"},
    ],
    "ips": [
        {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
        {"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 2},
        {"address": "10.99.0.7/24", "interface": 3},
        {"address": "10.88.0.6/16", "interface": 2},
    ],
}


def test_eth0_ipv4_first_then_the_rest_of_eth0() -> None:
    net = pod_network(DUAL)
    assert net.ip == "10.88.0.5"
    assert net.additional_ips == ("fd00::5", "10.88.0.6")  # net1's address is not the pod's


def test_ipv6_only_pod() -> None:
    result = {"interfaces": [{"name": "eth0", "sandbox": "/x"}], "ips": [
        {"address": "fd00::9/64", "interface": 0}]}  # fmt: skip
    assert pod_network(result).ip == "fd00::9"


def test_ips_without_interface_index_count_when_no_sandbox_eth0() -> None:
    result = {"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "192.168.1.4/24"}]}
    assert pod_network(result).ip == "192.168.1.4"


def test_a_0_2_0_result() -> None:
    result = {"cniVersion": "0.2.0", "ip4": {"ip": "10.1.2.3/24"}, "ip6": {"ip": "fd00::3/64"}}
    net = pod_network(result)
    assert (net.ip, net.additional_ips) == ("10.1.2.3", ("fd00::3",))


def test_no_addresses() -> None:
    assert pod_network({"cniVersion": "1.0.0"}).ip == ""
    assert pod_network({"ips": [{"address": "garbage"}]}).ip == ""


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (1, FailedPrecondition),
        (3, NotFound),
        (7, InvalidArgument),
        (11, Unavailable),
        (999, Internal),
    ],
)
def test_plugin_errors_map_by_code_and_keep_the_message(code: int, cls: type) -> None:
    out = json.dumps({"cniVersion": "1.0.0", "code": code, "msg": "no luck", "details": "why"})
    e = plugin_error("bridge", "ADD", 1, out.encode(), b"")
    assert type(e) is cls
    assert str(e) == "plugin type='bridge' failed (ADD): no luck: why"
    assert e.cni_code == code  # type: ignore[attr-defined]


def test_a_plugin_error_without_json_uses_stderr() -> None:
    e = plugin_error("portmap", "DEL", 2, b"", b"panic: boom\n")
    assert type(e) is Internal and str(e) == "plugin type='portmap' failed (DEL): panic: boom"
    assert "exit status 3" in str(plugin_error("x", "ADD", 3, b"", b""))


def test_port_mappings_skip_missing_host_ports() -> None:
    args = capability_args(
        [PortMapping(8080, 80, "TCP"), PortMapping(0, 81), PortMapping(53, 53, "udp", "127.0.0.1")],
        {"bandwidth": {"ingressRate": 1}},
    )
    assert args == {
        "bandwidth": {"ingressRate": 1},
        "portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
            {"hostPort": 53, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
        ],
    }
    assert capability_args([PortMapping(-1, 80)]) == {}


def test_cni_args_in_containerd_order() -> None:
    args = cni_args(PodRef("ns", "pod", "u-1"), "abc")
    assert ";".join(f"{k}={v}" for k, v in args) == (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod;"
        "K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1"
    )


def test_plugin_stdin_gets_name_version_declared_capabilities_and_prev_result() -> None:
    net = parse_config_list(
        b'{"cniVersion": "1.0.0", "name": "pods", "plugins": ['
        b'{"type": "bridge", "cniVersion": "0.1.0"},'
        b'{"type": "portmap", "capabilities": {"portMappings": true, "dns": false}}]}'
    )
    caps = {"portMappings": [{"hostPort": 1}], "dns": {"servers": []}, "bandwidth": {}}
    first = json.loads(plugin_stdin(net, net.plugins[0], None, caps))
    assert first == {"type": "bridge", "cniVersion": "1.0.0", "name": "pods"}
    prev = {"cniVersion": "1.0.0", "ips": []}
    second = json.loads(plugin_stdin(net, net.plugins[1], prev, caps))
    assert second == {
        "type": "portmap",
        "name": "pods",
        "cniVersion": "1.0.0",
        "runtimeConfig": {"portMappings": [{"hostPort": 1}]},
        "prevResult": prev,
    }
