"""Name reservations: kubelet retries RunPodSandbox and CreateContainer after its deadline
while the first call may still run, so a name is taken before any work starts and given
back when the object is removed or its creation failed (containerd's registrar)."""

from __future__ import annotations

from linerd.errdefs import AlreadyExists


class Names:
    def __init__(self) -> None:
        self._by_name: dict[str, str] = {}

    def reserve(self, name: str, key: str) -> None:
        owner = self._by_name.get(name)
        if owner is not None and owner != key:
            raise AlreadyExists(f"name {name!r} is reserved for {owner!r}")
        self._by_name[name] = key

    def release_by_key(self, key: str) -> None:
        for name in [n for n, k in self._by_name.items() if k == key]:
            del self._by_name[name]
