#!/usr/bin/env python3
"""lazyfs: a FUSE file system for tests that forgets what was not synced, as a disk does when
its power is cut.

    python3 lazyfs.py MOUNTPOINT CONTROL_SOCKET

MOUNTPOINT holds one flat directory (no subdirectories: a spool needs none), kept in memory.
Every file has two contents: what its writers see, and what a power cut keeps (the "durable"
one). `fsync`/`fdatasync` of a file makes its durable content its current one; `fsync` of the
directory does the same for the directory's entries (created, renamed and deleted names). Until
then a write, a truncation, a new name, a rename or an unlink lives in the cache only.

The test drives it over CONTROL_SOCKET (a Unix socket), one line per command, one line back:

    cut P SEED   the power is cut: every file goes back to its durable content, except that
                 each 4 KiB page written since its last sync is kept with probability P (torn
                 and reordered writes: any subset of them, chosen with random.Random(SEED)),
                 and the directory goes back to its durable entries. Answers "ok N" with the
                 number of unsynced pages kept.
    stat         "ok FILES BYTES" of the current state.

Whoever cuts the power must have stopped the processes using the mount first (SIGKILL): what a
process holds open across a cut is not modelled. Test code, not a dependency of the gateway.
"""

import errno
import os
import random
import socket
import stat
import sys
import threading
import time

from mfusepy import FUSE, FuseOSError, Operations

PAGE = 4096


class Inode:
    def __init__(self, mode):
        self.mode = mode
        self.data = bytearray()
        # What a power cut keeps: the content as of the last fsync.
        self.durable = bytearray()
        self.mtime = time.time()


class LazyFS(Operations):
    def __init__(self):
        self.mutex = threading.RLock()
        self.names = {}  # name -> Inode: what is seen now
        self.durable_names = {}  # name -> Inode: what a cut keeps
        self.handles = {}  # fh -> Inode
        self.next_fh = 1
        self.root_mtime = time.time()

    # --- helpers -------------------------------------------------------------------------

    @staticmethod
    def name(path):
        name = path.lstrip("/")
        if "/" in name:
            raise FuseOSError(errno.ENOENT)
        return name

    def inode(self, path, fh=None):
        if fh is not None and fh in self.handles:
            return self.handles[fh]
        inode = self.names.get(self.name(path))
        if inode is None:
            raise FuseOSError(errno.ENOENT)
        return inode

    def handle(self, inode):
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = inode
        return fh

    # --- the power cut -------------------------------------------------------------------

    def cut(self, keep, seed):
        rng = random.Random(seed)
        kept = 0
        with self.mutex:
            inodes = {id(inode): inode for inode in list(self.names.values()) + list(self.durable_names.values())}
            for inode in inodes.values():
                data, durable = inode.data, inode.durable
                survived = bytearray(durable)
                for start in range(0, max(len(data), len(durable)), PAGE):
                    page = data[start:start + PAGE]
                    if page == durable[start:start + PAGE] or not page or rng.random() >= keep:
                        continue
                    if len(survived) < start:
                        survived.extend(bytes(start - len(survived)))
                    survived[start:start + len(page)] = page
                    kept += 1
                inode.data = survived
                inode.durable = bytearray(survived)
            self.names = dict(self.durable_names)
            self.handles.clear()
        return kept

    # --- the file system -----------------------------------------------------------------

    def getattr(self, path, fh=None):
        with self.mutex:
            if path == "/":
                return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, "st_size": 0,
                        "st_mtime": self.root_mtime, "st_ctime": self.root_mtime, "st_atime": self.root_mtime}
            inode = self.inode(path, fh)
            return {"st_mode": inode.mode, "st_nlink": 1, "st_size": len(inode.data),
                    "st_mtime": inode.mtime, "st_ctime": inode.mtime, "st_atime": inode.mtime}

    def readdir(self, path, fh):
        with self.mutex:
            return [".", ".."] + list(self.names)

    def opendir(self, path):
        return 0

    def fsyncdir(self, path, datasync, fh):
        with self.mutex:
            self.durable_names = dict(self.names)
        return 0

    def create(self, path, mode, fi=None):
        with self.mutex:
            name = self.name(path)
            inode = self.names.get(name)
            if inode is None:
                inode = Inode(stat.S_IFREG | (mode & 0o7777))
                self.names[name] = inode
                self.root_mtime = time.time()
            return self.handle(inode)

    def mknod(self, path, mode, dev):
        with self.mutex:
            name = self.name(path)
            if name in self.names:
                raise FuseOSError(errno.EEXIST)
            self.names[name] = Inode(mode)
            return 0

    def open(self, path, flags):
        with self.mutex:
            inode = self.inode(path)
            if flags & os.O_TRUNC:
                inode.data = bytearray()
            return self.handle(inode)

    def read(self, path, size, offset, fh):
        with self.mutex:
            return bytes(self.inode(path, fh).data[offset:offset + size])

    def write(self, path, data, offset, fh):
        with self.mutex:
            inode = self.inode(path, fh)
            if len(inode.data) < offset:
                inode.data.extend(bytes(offset - len(inode.data)))
            inode.data[offset:offset + len(data)] = data
            inode.mtime = time.time()
            return len(data)

    def truncate(self, path, length, fh=None):
        with self.mutex:
            inode = self.inode(path, fh)
            if length < len(inode.data):
                del inode.data[length:]
            else:
                inode.data.extend(bytes(length - len(inode.data)))
            inode.mtime = time.time()
            return 0

    def fsync(self, path, datasync, fh):
        with self.mutex:
            inode = self.inode(path, fh)
            inode.durable = bytearray(inode.data)
            return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        with self.mutex:
            self.handles.pop(fh, None)
            return 0

    def unlink(self, path):
        with self.mutex:
            if self.names.pop(self.name(path), None) is None:
                raise FuseOSError(errno.ENOENT)
            self.root_mtime = time.time()
            return 0

    def rename(self, old, new):
        with self.mutex:
            inode = self.names.pop(self.name(old), None)
            if inode is None:
                raise FuseOSError(errno.ENOENT)
            self.names[self.name(new)] = inode
            self.root_mtime = time.time()
            return 0

    def chmod(self, path, mode):
        with self.mutex:
            inode = self.inode(path)
            inode.mode = (inode.mode & ~0o7777) | (mode & 0o7777)
            return 0

    def chown(self, path, uid, gid):
        return 0

    def utimens(self, path, times=None):
        return 0

    def statfs(self, path):
        return {"f_bsize": PAGE, "f_frsize": PAGE, "f_blocks": 1 << 20, "f_bfree": 1 << 19,
                "f_bavail": 1 << 19, "f_files": 1 << 16, "f_ffree": 1 << 15, "f_namemax": 255}


def serve_control(fs, path):
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    while True:
        connection, _ = server.accept()
        with connection, connection.makefile("rw") as stream:
            for line in stream:
                words = line.split()
                if words[:1] == ["cut"] and len(words) == 3:
                    kept = fs.cut(float(words[1]), int(words[2]))
                    stream.write(f"ok {kept}\n")
                elif words == ["stat"]:
                    with fs.mutex:
                        total = sum(len(inode.data) for inode in fs.names.values())
                        stream.write(f"ok {len(fs.names)} {total}\n")
                else:
                    stream.write("error: cut P SEED | stat\n")
                stream.flush()


def main():
    mountpoint, control = sys.argv[1], sys.argv[2]
    fs = LazyFS()
    threading.Thread(target=serve_control, args=(fs, control), daemon=True).start()
    # No kernel caching of pages, attributes or names: after a cut, every read must come here.
    FUSE(fs, mountpoint, foreground=True, nothreads=False, direct_io=True, attr_timeout=0, entry_timeout=0,
         negative_timeout=0)


if __name__ == "__main__":
    main()
