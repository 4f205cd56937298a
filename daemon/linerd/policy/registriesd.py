"""containers-registries.d(5): where signatures of a docker image are found.

Every ``*.yaml`` file of the directory is merged; a scope (or ``default-docker``) defined in two
files is refused, as containers/image does. For an image, the ``docker`` scopes are searched
from the most specific (the policy scopes' order); the first scope with a ``lookaside`` (or its
old name ``sigstore``) gives the lookaside base, falling back to ``default-docker``;
``use-sigstore-attachments`` is found the same way. Unlike containers/image, nothing configured
means no lookaside (containers/image would read /var/lib/containers/sigstore).
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from linerd.policy.errors import PolicyError
from linerd.policy.refs import DockerRef, scope_candidates

MAX_FILE_BYTES = 1 << 20
MAX_FILES = 256
_URL_KEYS = ("lookaside", "lookaside-staging", "sigstore", "sigstore-staging")


@dataclass(frozen=True, slots=True)
class Namespace:
    """One configuration section."""

    lookaside: str | None = None
    lookaside_staging: str | None = None
    use_sigstore_attachments: bool | None = None

    def read_url(self) -> str | None:
        return self.lookaside

    def write_url(self) -> str | None:
        return self.lookaside_staging or self.lookaside


@dataclass(frozen=True)
class RegistriesD:
    default_docker: Namespace | None = None
    docker: dict[str, Namespace] = field(default_factory=dict)

    def _sections(self, ref: DockerRef) -> list[Namespace]:
        found = [self.docker[s] for s in scope_candidates(ref) if s in self.docker]
        if self.default_docker is not None:
            found.append(self.default_docker)
        return found

    def lookaside_base(self, ref: DockerRef, *, write: bool = False) -> str | None:
        for section in self._sections(ref):
            url = section.write_url() if write else section.read_url()
            if url:
                return url
        return None

    def use_sigstore_attachments(self, ref: DockerRef) -> bool:
        for section in self._sections(ref):
            if section.use_sigstore_attachments is not None:
                return section.use_sigstore_attachments
        return False


def lookaside_url(base: str, ref: DockerRef, manifest_digest: str, index: int) -> str:
    """``<base>/<repository path>@<alg>=<hex>/signature-<index>`` (index from 1)."""
    algorithm, _, encoded = manifest_digest.partition(":")
    if not algorithm or not encoded or "/" in manifest_digest:
        raise ValueError(f"invalid manifest digest {manifest_digest!r}")
    return f"{base.rstrip('/')}/{ref.path}@{algorithm}={encoded}/signature-{index}"


def _section(value: Any, where: str) -> Namespace:
    if value is None:
        return Namespace()
    if not isinstance(value, dict):
        raise PolicyError(where, "a configuration section must be a mapping")
    urls: dict[str, str | None] = {}
    for key in _URL_KEYS:
        url = value.get(key)
        if url is None:
            urls[key] = None
            continue
        if not isinstance(url, str):
            raise PolicyError(where, f"{key} must be a URL string")
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("file", "http", "https"):
            raise PolicyError(where, f"{key} {url!r}: only file://, http:// and https:// URLs")
        if parsed.scheme == "file" and not parsed.path.startswith("/"):
            raise PolicyError(where, f"{key} {url!r}: a file:// URL needs an absolute path")
        urls[key] = url
    use = value.get("use-sigstore-attachments")
    if use is not None and not isinstance(use, bool):
        raise PolicyError(where, "use-sigstore-attachments must be true or false")
    return Namespace(
        lookaside=urls["lookaside"] or urls["sigstore"],
        lookaside_staging=urls["lookaside-staging"] or urls["sigstore-staging"],
        use_sigstore_attachments=use,
    )


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's error in one line: what is wrong and where."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
    return f"invalid YAML: {' '.join(str(error).split())}"


def parse_files(files: list[tuple[str, str]]) -> RegistriesD:
    """Merge ``(path, text)`` pairs; raise PolicyError naming the file and the problem."""
    default: Namespace | None = None
    default_from = ""
    docker: dict[str, Namespace] = {}
    docker_from: dict[str, str] = {}
    for path, text in files:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise PolicyError(path, _yaml_problem(e)) from None
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise PolicyError(path, "the file is not a YAML mapping")
        if "default-docker" in doc:
            if default is not None:
                raise PolicyError(path, f'"default-docker" is also defined in {default_from}')
            default = _section(doc.get("default-docker"), f"{path} default-docker")
            default_from = path
        scopes = doc.get("docker")
        if scopes is None:
            continue
        if not isinstance(scopes, dict):
            raise PolicyError(path, '"docker" must map scopes to configuration sections')
        for scope, value in scopes.items():
            if scope in docker:
                raise PolicyError(
                    path, f'"docker" scope {scope!r} is also defined in {docker_from[scope]}'
                )
            docker[scope] = _section(value, f"{path} docker {scope!r}")
            docker_from[scope] = path
    return RegistriesD(default, docker)


def load_dir(path: str | Path) -> RegistriesD:
    """Read every ``*.yaml`` file of ``path`` (blocking: call from a thread). A missing
    directory is an empty configuration, as in containers/image."""
    path = str(path)
    try:
        names = sorted(n for n in os.listdir(path) if n.endswith(".yaml"))
    except FileNotFoundError:
        return RegistriesD()
    except OSError as e:
        raise PolicyError(path, f"cannot list: {e.strerror or e}") from None
    if len(names) > MAX_FILES:
        raise PolicyError(path, f"more than {MAX_FILES} .yaml files")
    files: list[tuple[str, str]] = []
    for name in names:
        file_path = os.path.join(path, name)
        try:
            with open(file_path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            continue  # removed since listing
        except OSError as e:
            raise PolicyError(file_path, f"cannot read: {e.strerror or e}") from None
        if len(data) > MAX_FILE_BYTES:
            raise PolicyError(file_path, f"larger than {MAX_FILE_BYTES} bytes")
        try:
            files.append((file_path, data.decode("utf-8")))
        except UnicodeDecodeError:
            raise PolicyError(file_path, "not UTF-8") from None
    return parse_files(files)
