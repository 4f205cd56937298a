"""Extract a layer tar onto a directory, applying OCI whiteouts. Synchronous and pure.

Safety model: every path is resolved component by component from a directory fd of the
target, opening each directory with O_NOFOLLOW|O_DIRECTORY, and the final component is only
ever touched through its parent's fd with no-follow calls (or through an fd of a file we just
created with O_EXCL). So no entry can reach outside `target`: `..` that leaves the root, a
symlink in a parent component (of an entry or of a hard link's target) and whiteouts of `.`/`..`
are refused with InvalidArgument; a symlink as the *final* component is replaced, never followed.
On error the caller discards the whole target; nothing is rolled back.

Decisions:
- Names are cleaned lexically (leading `/` and `./` dropped, `a/../b` is `b`); a `..` that would
  leave the root is refused, not clamped (containerd clamps).
- Missing parent directories are created 0755 root:root (as containerd does); in overlay mode
  a parent that exists in a lower layer is copied up with its owner, mode, xattrs and mtime
  (as overlayfs copy-up would), and one that is a symlink in the merged view is refused, so
  both modes accept and refuse the same layers.
- Whiteouts only hide lower layers (OCI spec): a whiteout of a name this layer itself created
  is ignored. In overlay mode a directory entry that replaces a whiteout made by this layer
  becomes opaque, so the merged view matches the native one (containerd leaves it merging).
- Xattrs from PAX `SCHILY.xattr.*` are applied after chown (chown clears security.capability).
  `trusted.overlay.*` from a layer is dropped: it is overlayfs' own metadata, and would make
  the overlay result differ from the native one. ENOTSUP is ignored for every namespace (the
  filesystem cannot store it; containerd does the same); EPERM is ignored for `trusted.*`
  and `security.*` (unprivileged daemon) and for `user.*` on symlinks and special files (the
  kernel forbids those). Other failures raise InvalidArgument.
- Hard link headers' own metadata is ignored (GNU tar does the same); a hard link to a
  directory is refused.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from linerd.diff import tarstream
from linerd.diff.tarstream import Entry, TarReader
from linerd.errdefs import InvalidArgument

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK = 1 << 20
_IGNORED_XATTR_ERRNOS = {errno.ENOTSUP, errno.EOPNOTSUPP}

Parts = tuple[str, ...]
# What a lookup found in the merged view: (layer index, path relative to it, lstat).
_Found = tuple[int, str, os.stat_result]

_NODE_MODES = {
    tarstream.CHAR: stat.S_IFCHR,
    tarstream.BLOCKDEV: stat.S_IFBLK,
    tarstream.FIFO: stat.S_IFIFO,
}


def apply_tar(
    stream: BinaryIO, target: Path, *, overlay: bool, parents: Sequence[Path] = ()
) -> None:
    """Extract the tar read from `stream` onto the directory `target`.

    overlay=False: `target` is a full copy of the parent tree; whiteouts delete.
    overlay=True: `target` is an empty overlay upperdir over `parents` (lower dirs, top first);
    whiteouts become 0/0 character devices and opaque markers `trusted.overlay.opaque=y`.

    Reads `stream` only up to the tar's end-of-archive marker; the caller drains the rest.
    Raises InvalidArgument for malformed or hostile entries.
    """
    applier = _Applier(Path(target), overlay=overlay, parents=[Path(p) for p in parents])
    try:
        applier.run(stream)
    finally:
        applier.close()


def stage_tar(stream: BinaryIO, staging: Path, *, umask_zero: bool = False) -> list[Entry]:
    """Phase one of a staged apply, possible before the layer's parents exist: read the tar,
    writing each regular file, complete with owner, mode, xattrs and times, as
    `<staging>/<n>` (n: its index among the entries). Returns the entries for `apply_staged`.

    Everything costly (decompression, hashing, data) happens here; what is left needs the
    parents (whiteouts, copy-ups, links) and is cheap. Reads `stream` only up to the tar's end.
    `umask_zero`: the process's umask is 0, so a file is created with its mode.
    """
    reader = TarReader(stream)
    entries: list[Entry] = []
    dfd = os.open(staging, _DIR_FLAGS)
    try:
        # A new file is already ours (the directory is not setgid: `staging` is ours too), so
        # most files of a layer (root's) need no chown; with umask 0 most need no chmod.
        st = os.fstat(dfd)
        owner = (os.geteuid(), st.st_gid if st.st_mode & stat.S_ISGID else os.getegid())
        while (entry := reader.next()) is not None:
            parts = clean_name(entry.name)
            if parts is None:  # refused now rather than after all the work
                raise _bad(entry.name, "path escapes the root")
            whiteout = bool(parts) and parts[-1].startswith(WHITEOUT_PREFIX)
            if entry.type == tarstream.FILE and not whiteout:
                # Set-id and sticky bits only by chmod after the data: writes would clear them.
                mode = entry.mode & 0o7777
                at_create = umask_zero and not mode & 0o7000
                fd = os.open(
                    str(len(entries)), _CREATE_FLAGS, mode if at_create else 0o600, dir_fd=dfd
                )
                try:
                    _fill_file(fd, entry, reader, owner=owner, mode_set=at_create)
                finally:
                    os.close(fd)
            entries.append(entry)
    finally:
        os.close(dfd)
    return entries


def apply_staged(
    entries: Sequence[Entry],
    staging: Path,
    target: Path,
    *,
    overlay: bool,
    parents: Sequence[Path] = (),
) -> None:
    """Phase two: apply staged entries onto `target` exactly as `apply_tar` would the tar,
    moving the staged files into place (`staging` must be on the target's filesystem)."""
    applier = _Applier(
        Path(target), overlay=overlay, parents=[Path(p) for p in parents], staging=staging
    )
    try:
        applier.run_staged(entries)
    finally:
        applier.close()


def clean_name(name: str) -> Parts | None:
    """The components of a tar name relative to the root; None if `..` leaves the root."""
    # Most names are plain ("./usr/bin/", "usr/bin/x"): then splitting is all there is.
    plain = (name[2:] if name.startswith("./") else name).strip("/").split("/")
    if "" not in plain and "." not in plain and ".." not in plain:
        return tuple(plain)
    parts: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(comp)
    return tuple(parts)


def _bad(name: str, why: str) -> InvalidArgument:
    return InvalidArgument(f'layer entry "{name}": {why}')


def _is_whiteout_device(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


class _Applier:
    def __init__(
        self, target: Path, *, overlay: bool, parents: list[Path], staging: Path | None = None
    ) -> None:
        self.target = target
        self.overlay = overlay
        self.parents = parents
        self._layers = [str(target), *map(str, parents)]  # for lookups in the merged view
        self._parent_stats: dict[tuple[int, str], os.stat_result | None] = {}
        self._parent_opaque: dict[tuple[int, str], bool] = {}
        # Staged mode: the regular file of entry n waits, complete, as `<staging>/<n>`.
        self._staging_fd = os.open(staging, _DIR_FLAGS) if staging else -1
        self._index = 0
        try:
            self.root_fd = os.open(target, _DIR_FLAGS)
        except BaseException:
            if self._staging_fd >= 0:
                os.close(self._staging_fd)
            raise
        # The directory chain of the last entry's parent: components and open fds
        # (fds[0] is the root). Tars are mostly sorted, so most entries reuse it.
        self._chain: list[str] = []
        self._fds: list[int] = [self.root_fd]
        self._chain_key: Parts | None = ()  # the chain as a tuple, None while it changes
        # Every path this layer created or touched, including implicit parents: whiteouts
        # never hide these, and native opaque directories keep only these.
        self.created: set[Parts] = set()
        self._created_parent: Parts = ()  # the last parent added to `created` with its own
        self.opaque: list[Parts] = []
        self.dir_times: list[tuple[Parts, int, int]] = []
        self.whiteouts_made: set[Parts] = set()
        self.copied_up: list[Parts] = []  # overlay: lower files copied up for a hard link

    def close(self) -> None:
        self._truncate(0)
        os.close(self.root_fd)
        if self._staging_fd >= 0:
            os.close(self._staging_fd)

    # --- directory resolution -------------------------------------------------------------

    def _truncate(self, depth: int) -> None:
        """Keep only the first `depth` components of the cached chain."""
        if len(self._chain) > depth:
            self._chain_key = None
        while len(self._chain) > depth:
            self._chain.pop()
            os.close(self._fds.pop())

    def _forget(self, parts: Parts) -> None:
        """`parts` was removed or replaced: drop cached fds of it and below it."""
        n = len(parts)
        if n and tuple(self._chain[:n]) == parts:
            self._truncate(n - 1)

    def _dir(self, parts: Parts, entry: str, *, create: bool = True) -> int:
        """A (cached) fd of the directory `parts`, never through a symlink."""
        if parts == self._chain_key:  # the previous entry's: most entries of a tar
            return self._fds[-1]
        self._chain_key = None
        chain = self._chain
        common = 0
        limit = min(len(chain), len(parts))
        while common < limit and chain[common] == parts[common]:
            common += 1
        self._truncate(common)
        for i in range(common, len(parts)):
            fd = self._open_child(self._fds[-1], parts[: i + 1], entry, create=create)
            self._chain.append(parts[i])
            self._fds.append(fd)
        self._chain_key = parts
        return self._fds[-1]

    def _open_child(self, parent_fd: int, parts: Parts, entry: str, *, create: bool) -> int:
        name = parts[-1]
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                raise
            self._make_implicit_dir(parent_fd, parts, entry)
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise _bad(entry, f"path goes through a symlink ({'/'.join(parts)})") from None
            if create and self.overlay and parts in self.whiteouts_made:
                # A whiteout made by this layer, then something below it: the directory is
                # new, so it must not merge with the lower one.
                os.unlink(name, dir_fd=parent_fd)
                self._mkdir_new(parent_fd, parts)
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
                os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
                return fd
            raise _bad(entry, f"parent {'/'.join(parts)} is not a directory") from None

    def _mkdir_new(self, parent_fd: int, parts: Parts) -> None:
        os.mkdir(parts[-1], 0o755, dir_fd=parent_fd)
        os.chmod(parts[-1], 0o755, dir_fd=parent_fd)  # umask
        self.created.add(parts)
        self.whiteouts_made.discard(parts)

    def _make_implicit_dir(self, parent_fd: int, parts: Parts, entry: str) -> None:
        lower = self._lower_lookup(parts) if self.overlay else None
        if lower is None:
            self._mkdir_new(parent_fd, parts)
            return
        path, st = lower
        if stat.S_ISLNK(st.st_mode):
            raise _bad(entry, f"path goes through a symlink ({'/'.join(parts)})")
        if not stat.S_ISDIR(st.st_mode):
            raise _bad(entry, f"parent {'/'.join(parts)} is not a directory")
        # Copy up, as overlayfs would: the merged directory keeps its lower metadata.
        os.mkdir(parts[-1], 0o700, dir_fd=parent_fd)
        fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent_fd)
        try:
            self._copy_meta(path, st, fd)
        finally:
            os.close(fd)
        self.created.add(parts)
        self.dir_times.append((parts, st.st_atime_ns, st.st_mtime_ns))

    def _copy_meta(self, src: Path, st: os.stat_result, fd: int) -> None:
        os.fchown(fd, st.st_uid, st.st_gid)
        for key in os.listxattr(src, follow_symlinks=False):
            if not key.startswith("trusted.overlay."):
                value = os.getxattr(src, key, follow_symlinks=False)
                _setxattr_fd(fd, key, value, regular=True, entry=str(src))
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))

    def _lower_lookup(self, parts: Parts) -> tuple[Path, os.stat_result] | None:
        """The entry at `parts` in the merged view of target + parents, overlayfs' rules.

        Returns the topmost layer's path and lstat, or None if absent (or whited out).
        Walks component by component with lstat, so never through a symlink.
        """
        walk = list(self._walk(parts))
        found = walk[-1] if walk and len(walk) == len(parts) else None
        if found is None:
            return None
        layer, rel, st = found
        return Path(self._layers[layer], rel), st

    def _walk(self, parts: Parts) -> Iterator[_Found | None]:
        """What the merged view has at each prefix of `parts`, shortest first: the topmost
        layer's (index, relative path, lstat), or None (absent or whited out), which ends
        the walk, as a non-directory does. One walk answers for every prefix: lookups of
        each prefix in turn cost O(depth^2) lstats."""
        layers = list(range(len(self._layers)))  # indices in self._layers, 0 the target
        for i in range(len(parts)):
            rel = "/".join(parts[: i + 1])
            merged: list[int] = []
            found: _Found | None = None
            for layer in layers:
                st = self._lstat(layer, rel)
                if st is None:
                    continue
                if _is_whiteout_device(st):
                    break
                if not stat.S_ISDIR(st.st_mode):
                    if not merged:
                        found = (layer, rel, st)
                    break  # a non-directory ends the stack of merged directories
                if not merged:
                    found = (layer, rel, st)
                merged.append(layer)
                # An opaque marker of this layer hides the lower layers only at the layer's
                # end, as native mode prunes then: lookups meanwhile still see below.
                own = layer == 0 and parts[: i + 1] in self.opaque
                if self._opaque(layer, rel) and not own:
                    break
            yield found
            if found is None or not merged:
                return
            layers = merged

    def _lstat(self, layer: int, rel: str) -> os.stat_result | None:
        """lstat of `rel` in layer `layer` (0: the target), None if absent. The parents'
        answers are kept: this apply never changes them, and whiteouts and hard links ask
        for the same directories again and again (O(depth^2) lstats per lookup)."""
        key = (layer, rel)
        if layer and key in self._parent_stats:
            return self._parent_stats[key]
        try:
            st: os.stat_result | None = os.lstat(f"{self._layers[layer]}/{rel}")
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if layer:
            self._parent_stats[key] = st
        return st

    def _opaque(self, layer: int, rel: str) -> bool:
        key = (layer, rel)
        if layer and key in self._parent_opaque:
            return self._parent_opaque[key]
        opaque = _has_opaque(f"{self._layers[layer]}/{rel}")
        if layer:
            self._parent_opaque[key] = opaque
        return opaque

    # --- the main loop --------------------------------------------------------------------

    def run(self, stream: BinaryIO) -> None:
        # A zero-length stream is an empty layer, as in Go's tar reader.
        reader = TarReader(stream)
        while (entry := reader.next()) is not None:
            self._entry(reader, entry)
        self._finish()

    def run_staged(self, entries: Sequence[Entry]) -> None:
        for self._index, entry in enumerate(entries):
            self._entry(None, entry)
        self._finish()

    def _finish(self) -> None:
        self._truncate(0)
        if not self.overlay:
            for parts in self.opaque:
                self._prune_opaque(parts)
        else:
            self._drop_hidden_copies()
        for parts, atime, mtime in self.dir_times:
            self._set_dir_time(parts, atime, mtime)
        self._truncate(0)

    def _entry(self, reader: TarReader | None, m: Entry) -> None:
        name = m.name
        parts = clean_name(name)
        if parts is None:
            raise _bad(name, "path escapes the root")
        if parts and parts[-1].startswith(WHITEOUT_PREFIX):
            self._whiteout(name, parts)
            return
        kind = m.type
        if not parts:
            if kind != tarstream.DIR:
                raise _bad(name, "cannot replace the root with a non-directory")
            self._dir_meta(self.root_fd, m)
            self.dir_times.append(((), m.atime_ns, m.mtime_ns))
            return
        pfd = self._dir(parts[:-1], name)
        leaf = parts[-1]
        if kind == tarstream.FILE:
            self._file(reader, m, pfd, parts)
        elif kind == tarstream.DIR:
            self._directory(m, pfd, parts)
        elif kind == tarstream.SYMLINK:
            self._replace(pfd, parts, lambda: os.symlink(m.linkname, leaf, dir_fd=pfd))
            self._node_meta(pfd, leaf, m, symlink=True)
        elif kind == tarstream.HARDLINK:
            self._hardlink(m, pfd, parts)
        else:
            mode = _NODE_MODES[kind]
            dev = 0 if kind == tarstream.FIFO else os.makedev(m.devmajor, m.devminor)
            self._replace(pfd, parts, lambda: os.mknod(leaf, mode | 0o600, dev, dir_fd=pfd))
            self._node_meta(pfd, leaf, m, symlink=False)
        self.created.add(parts)
        # The directories it went into are this layer's too: a later whiteout or opaque
        # marker must not remove them (overlay mode has copied them up, so keeps them).
        # `created` only grows and entries come grouped by directory: once per directory.
        parent = parts[:-1]
        if parent != self._created_parent:
            self.created.update(parent[:i] for i in range(1, len(parts)))
            self._created_parent = parent

    def _replace(self, pfd: int, parts: Parts, make: Callable[[], object]) -> None:
        """Create a non-directory with `make()`, removing whatever is in the way first."""
        try:
            make()
        except FileExistsError:
            self._remove(pfd, parts)
            make()

    def _remove(self, pfd: int, parts: Parts) -> None:
        leaf = parts[-1]
        try:
            st = os.stat(leaf, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        self.whiteouts_made.discard(parts)
        if stat.S_ISDIR(st.st_mode):
            self._forget(parts)
            shutil.rmtree(leaf, dir_fd=pfd)
        else:
            os.unlink(leaf, dir_fd=pfd)

    def _file(self, reader: TarReader | None, m: Entry, pfd: int, parts: Parts) -> None:
        leaf = parts[-1]
        if reader is None:  # staged: the file is complete, only its place is missing
            staged = str(self._index)
            self.whiteouts_made.discard(parts)
            try:  # replaces any non-directory in the way (no lstat first: apply is waited for)
                os.rename(staged, leaf, src_dir_fd=self._staging_fd, dst_dir_fd=pfd)
            except IsADirectoryError:
                self._remove(pfd, parts)
                os.rename(staged, leaf, src_dir_fd=self._staging_fd, dst_dir_fd=pfd)
            return
        try:
            fd = os.open(leaf, _CREATE_FLAGS, 0o600, dir_fd=pfd)
        except FileExistsError:
            self._remove(pfd, parts)
            fd = os.open(leaf, _CREATE_FLAGS, 0o600, dir_fd=pfd)
        try:
            _fill_file(fd, m, reader)
        finally:
            os.close(fd)

    def _directory(self, m: Entry, pfd: int, parts: Parts) -> None:
        leaf = parts[-1]
        replaced_whiteout = False
        try:
            os.mkdir(leaf, 0o700, dir_fd=pfd)
        except FileExistsError:
            st = os.stat(leaf, dir_fd=pfd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):  # a directory over a directory merges
                # Over a whiteout or any other non-directory of this layer (which, natively,
                # removed a lower directory here): the new directory must not merge with it.
                replaced_whiteout = self.overlay
                self._remove(pfd, parts)
                os.mkdir(leaf, 0o700, dir_fd=pfd)
        fd = os.open(leaf, _DIR_FLAGS, dir_fd=pfd)
        try:
            if replaced_whiteout:
                os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
            self._dir_meta(fd, m)
        finally:
            os.close(fd)
        self.dir_times.append((parts, m.atime_ns, m.mtime_ns))

    def _dir_meta(self, fd: int, m: Entry) -> None:
        os.fchown(fd, m.uid, m.gid)
        _xattrs_fd(fd, m, regular=True)
        os.fchmod(fd, m.mode & 0o7777)

    def _node_meta(self, pfd: int, leaf: str, m: Entry, *, symlink: bool) -> None:
        """Owner, xattrs, mode and times of a symlink or special file, never following."""
        os.chown(leaf, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        xattrs = _xattrs(m)
        if xattrs:
            # No fd-based call can reach a symlink's xattrs; the /proc magic link is the
            # parent directory itself, and the leaf is not followed.
            path = f"/proc/self/fd/{pfd}/{leaf}"
            for key, value in xattrs:
                _setxattr(path, key, value, m.name)
        if not symlink:
            # We just created this node in pfd (mknod never follows), so it is no symlink.
            os.chmod(leaf, m.mode & 0o7777, dir_fd=pfd)
        os.utime(leaf, ns=(m.atime_ns, m.mtime_ns), dir_fd=pfd, follow_symlinks=False)

    def _hardlink(self, m: Entry, pfd: int, parts: Parts) -> None:
        name = m.name
        src = clean_name(m.linkname)
        if src is None:
            raise _bad(name, f'hard link target "{m.linkname}" escapes the root')
        if not src:
            raise _bad(name, "hard link to the root")
        if src == parts:
            return
        if src[: len(parts)] == parts:
            # Replacing `parts` would remove the directory holding the link's own source.
            raise _bad(name, f'hard link replaces a directory holding its target "{m.linkname}"')
        st = self._link_source(src, name)
        if st is None:
            raise _bad(name, f'hard link target "{m.linkname}" not found')
        if stat.S_ISDIR(st.st_mode):
            raise _bad(name, f'hard link target "{m.linkname}" is a directory')
        # The source's directory, resolved apart from the cached chain (both are needed).
        sfd = self._open_path(src[:-1], name)
        try:
            pfd = self._dir(parts[:-1], name)  # a copy-up may have reset the chain
            self._replace(
                pfd,
                parts,
                lambda: os.link(
                    src[-1], parts[-1], src_dir_fd=sfd, dst_dir_fd=pfd, follow_symlinks=False
                ),
            )
        finally:
            os.close(sfd)

    def _link_source(self, src: Parts, entry: str) -> os.stat_result | None:
        """lstat of a hard link's source in the target; in overlay mode, copied up if below."""
        try:
            sfd = self._open_path(src[:-1], entry)
        except FileNotFoundError:
            st = None
        else:
            try:
                st = os.stat(src[-1], dir_fd=sfd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            finally:
                os.close(sfd)
        if st is None and self.overlay:
            st = self._copy_up(src, entry)
        return st

    def _open_path(self, parts: Parts, entry: str) -> int:
        """A new fd (caller closes) of existing directory `parts`, never via a symlink."""
        fd = os.dup(self.root_fd)
        try:
            for i in range(len(parts)):
                child = self._open_child(fd, parts[: i + 1], entry, create=False)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _copy_up(self, parts: Parts, entry: str) -> os.stat_result | None:
        """Copy a lower-layer non-directory into the upper dir, for a hard link to it."""
        lower = self._lower_lookup(parts)
        if lower is None:
            return None
        path, st = lower
        if stat.S_ISDIR(st.st_mode):
            return st
        pfd = self._dir(parts[:-1], entry)
        leaf = parts[-1]
        self.copied_up.append(parts)
        if stat.S_ISREG(st.st_mode):
            src = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                fd = os.open(leaf, _CREATE_FLAGS, 0o600, dir_fd=pfd)
                try:
                    while os.sendfile(fd, src, None, _COPY_CHUNK):
                        pass
                    self._copy_meta(path, st, fd)
                finally:
                    os.close(fd)
            finally:
                os.close(src)
        else:
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(path), leaf, dir_fd=pfd)
            else:
                os.mknod(leaf, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev, dir_fd=pfd)
            os.chown(leaf, st.st_uid, st.st_gid, dir_fd=pfd, follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(leaf, stat.S_IMODE(st.st_mode), dir_fd=pfd)
            os.utime(leaf, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=pfd, follow_symlinks=False)
        return os.stat(leaf, dir_fd=pfd, follow_symlinks=False)

    # --- whiteouts --------------------------------------------------------------------------

    def _whiteout(self, name: str, parts: Parts) -> None:
        base = parts[-1]
        dir_parts = parts[:-1]
        if base == WHITEOUT_OPAQUE:
            # The marker's directory and those above it are this layer's (as an entry's
            # parents are): an opaque marker higher up must not remove them.
            self.created.update(dir_parts[:i] for i in range(len(dir_parts) + 1))
            if not self.overlay:
                try:
                    self._dir(dir_parts, name, create=False)  # refuses a symlinked path now
                except FileNotFoundError:
                    return
                self.opaque.append(dir_parts)
                return
            if self._missing_below(dir_parts):
                return  # as natively: no layer has this directory, nothing to hide
            pfd = self._dir(dir_parts, name)
            os.setxattr(pfd, OVERLAY_OPAQUE_XATTR, b"y")
            self.opaque.append(dir_parts)
            return
        if base.startswith(WHITEOUT_META_PREFIX):
            return  # AUFS bookkeeping (.wh..wh.plnk, .wh..wh.aufs): not content
        victim = base[len(WHITEOUT_PREFIX) :]
        if victim in ("", ".", ".."):
            raise _bad(name, "whiteout of the root or a parent directory")
        vparts = (*dir_parts, victim)
        if vparts in self.created:
            return  # a whiteout hides lower layers only, never this layer's own entries
        if self.overlay and self._missing_below(dir_parts):
            return  # as natively: no layer has this directory, nothing to hide
        try:
            # Native: nothing to delete in a directory that does not exist. Overlay: the
            # whiteout's directory may exist only below, so it is copied up.
            pfd = self._dir(dir_parts, name, create=self.overlay)
        except FileNotFoundError:
            return
        if self.overlay:
            if self._lower_lookup(vparts) is None:
                # Nothing below to hide. overlayfs lists a whiteout in a directory that has
                # no lower counterpart as a name that cannot be stat'ed, so none is made.
                return
            self._replace(pfd, vparts, lambda: os.mknod(victim, stat.S_IFCHR, 0, dir_fd=pfd))
            self.whiteouts_made.add(vparts)
        else:
            self._remove(pfd, vparts)

    def _drop_hidden_copies(self) -> None:
        """Overlay mode: a lower file copied up only to be a hard link's source, inside a
        directory this layer made opaque, goes (native mode prunes it; the link stays)."""
        for parts in self.copied_up:
            if parts in self.created:
                continue
            if not any(len(o) < len(parts) and parts[: len(o)] == o for o in self.opaque):
                continue
            try:
                fd = self._open_path_nocreate(parts[:-1])
            except OSError:
                continue
            try:
                st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(parts[-1], dir_fd=fd)
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)

    def _missing_below(self, parts: Parts) -> bool:
        """Overlay mode: directory `parts` is absent from the merged view (not created, so
        the upper dir gets no directory native mode would not have). A symlink or other
        non-directory on the way is not "absent": `_dir` refuses it, as native mode does."""
        for found in self._walk(parts):
            if found is None:
                return True
            if not stat.S_ISDIR(found[2].st_mode):
                return False
        return False

    def _prune_opaque(self, parts: Parts) -> None:
        """Native mode: an opaque directory keeps only what this layer put in it."""
        try:
            fd = self._open_path_nocreate(parts)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return  # replaced by a later entry of this layer: nothing left to prune
            raise
        try:
            self._prune(fd, parts)
        finally:
            os.close(fd)

    def _prune(self, fd: int, parts: Parts) -> None:
        with os.scandir(fd) as it:
            children = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for child, is_dir in children:
            cparts = (*parts, child)
            if cparts not in self.created:
                if is_dir:
                    shutil.rmtree(child, dir_fd=fd)
                else:
                    os.unlink(child, dir_fd=fd)
            elif is_dir:
                cfd = os.open(child, _DIR_FLAGS, dir_fd=fd)
                try:
                    self._prune(cfd, cparts)
                finally:
                    os.close(cfd)

    def _open_path_nocreate(self, parts: Parts) -> int:
        fd = os.dup(self.root_fd)
        try:
            for comp in parts:
                child = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _set_dir_time(self, parts: Parts, atime: int, mtime: int) -> None:
        # Through the cached chain: the times come in tar order, mostly sharing parents.
        try:
            fd = self._dir(parts, "", create=False)
        except (FileNotFoundError, InvalidArgument):
            return  # removed, or replaced by a non-directory, by a later entry
        os.utime(fd, ns=(atime, mtime))

    # --- metadata helpers --------------------------------------------------------------------


def _xattrs(m: Entry) -> list[tuple[str, bytes]]:
    return [(k, v) for k, v in m.xattrs if not k.startswith("trusted.overlay.")]


def _xattrs_fd(fd: int, m: Entry, *, regular: bool) -> None:
    for key, value in _xattrs(m):
        _setxattr_fd(fd, key, value, regular=regular, entry=m.name)


def _setxattr_fd(fd: int, key: str, value: bytes, *, regular: bool, entry: str) -> None:
    try:
        os.setxattr(fd, key, value)
    except OSError as e:
        _xattr_error(e, key, entry, regular=regular)


def _setxattr(path: str, key: str, value: bytes, entry: str) -> None:
    try:
        os.setxattr(path, key, value, follow_symlinks=False)
    except OSError as e:
        _xattr_error(e, key, entry, regular=False)


def _xattr_error(e: OSError, key: str, entry: str, *, regular: bool) -> None:
    if e.errno in _IGNORED_XATTR_ERRNOS:
        return
    if e.errno == errno.EPERM and (
        key.startswith(("trusted.", "security.")) or (key.startswith("user.") and not regular)
    ):
        return
    raise _bad(entry, f"cannot set xattr {key}: {e.strerror}") from None


def _fill_file(
    fd: int,
    m: Entry,
    reader: TarReader,
    *,
    owner: tuple[int, int] | None = None,
    mode_set: bool = False,
) -> None:
    """A new regular file's data and metadata, xattrs after chown (which clears caps).
    `owner`: the file's owner as created; `mode_set`: it was created with its mode."""
    if m.size:
        reader.copy_to(fd, m.name)
    if (m.uid, m.gid) != owner:
        os.fchown(fd, m.uid, m.gid)
    if m.xattrs:
        _xattrs_fd(fd, m, regular=True)
    if not mode_set:
        os.fchmod(fd, m.mode & 0o7777)
    os.utime(fd, ns=(m.atime_ns, m.mtime_ns))


def _has_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False
