"""Inside the sandbox: run as root in fresh network and mount namespaces by ``server/sandbox.py``.

``python -m server.sandbox_inner --socket S --uid U --home H [--expose P] [limits] -- COMMAND ...``

0. in its own mount namespace, covers ``HIDDEN`` folders (``/root``, ``/home``, ``/tmp``, ...)
   with empty tmpfs and binds back only ``--expose`` paths and its home;
1. brings up the namespace's own loopback (no other interface exists in it);
2. listens on 127.0.0.1 and forwards each connection to the Unix socket ``S`` (the
   runtime gate outside, which forwards only a ServerApp's Runtime API calls);
3. forks COMMAND with ``--runtime-api-address 127.0.0.1:PORT`` appended, as user ``U``
   with no groups, no new privileges, a clean environment and the given rlimits;
4. drops to ``U`` itself, forwards until COMMAND exits, and exits with its code.

Standard library only: it starts before anything else, in every run.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import resource
import socket
import struct
import sys
import threading

PR_SET_NO_NEW_PRIVS = 38
MS_BIND, MS_REC, MS_PRIVATE, MNT_DETACH = 4096, 16384, 1 << 18, 2
#: Hidden in the sandbox's own mount namespace (an empty tmpfs over each), except what it needs.
HIDDEN = ("/root", "/home", "/tmp", "/var/tmp", "/dev/shm", "/srv")
STAGE = "/mnt"
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """``ip link set lo up`` without the ip tool."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b""))


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    encoded = [x.encode() if x is not None else None for x in (source, target, fstype, data)]
    if libc.mount(encoded[0], encoded[1], encoded[2], ctypes.c_ulong(flags), encoded[3]) != 0:
        raise OSError(ctypes.get_errno(), f"mount {source} on {target} failed")


def private_view(expose: list[str]) -> None:
    """In this (new) mount namespace, an empty tmpfs over each of ``HIDDEN`` that exists,
    with only ``expose`` (the Python install, the code, the task's folder) bound back in."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    hidden = [h for h in HIDDEN if os.path.isdir(h) and not os.path.islink(h)]
    needed = sorted({os.path.realpath(e) for e in expose
                     if any(os.path.realpath(e).startswith(h + "/") for h in hidden)})
    _mount("tmpfs", STAGE, "tmpfs", 0, "mode=0700")
    for i, path in enumerate(needed):  # keep a handle on each before its parent is covered
        os.mkdir(f"{STAGE}/{i}")
        _mount(path, f"{STAGE}/{i}", None, MS_BIND | MS_REC, None)
    for folder in hidden:
        _mount("tmpfs", folder, "tmpfs", 0, "mode=1777" if "tmp" in folder or "shm" in folder
               else "mode=0755")
    for i, path in enumerate(needed):
        os.makedirs(path, exist_ok=True)
        _mount(f"{STAGE}/{i}", path, None, MS_BIND | MS_REC, None)
    ctypes.CDLL(None, use_errno=True).umount2(STAGE.encode(), MNT_DETACH)


def namespaces() -> str:
    """This process's mount and network namespaces, e.g. ``mnt:[4026531841],net:[4026531840]``."""
    return ",".join(os.readlink(f"/proc/self/ns/{kind}") for kind in ("mnt", "net"))


def become(uid: int) -> None:
    """This process as ``uid``: no groups, no way back, no new privileges through exec."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")


def limit(memory: int, cpu: int, processes: int, file_size: int, files: int = 256) -> None:
    """Hard rlimits the process and its children cannot raise."""
    for which, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu),
                         (resource.RLIMIT_NPROC, processes), (resource.RLIMIT_FSIZE, file_size),
                         (resource.RLIMIT_NOFILE, files), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(which, (value, value))


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _bridge(listener: socket.socket, unix_path: str) -> None:
    while True:
        inner, _ = listener.accept()
        outer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            outer.connect(unix_path)
        except OSError:
            inner.close()
            outer.close()
            continue
        for a, b in ((inner, outer), (outer, inner)):
            threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="server.sandbox_inner")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--home", required=True)
    parser.add_argument("--memory", type=int, required=True, help="bytes of address space")
    parser.add_argument("--cpu", type=int, required=True, help="CPU seconds")
    parser.add_argument("--processes", type=int, required=True, help="processes and threads")
    parser.add_argument("--file-size", type=int, required=True, help="largest file it may write")
    parser.add_argument("--expose", action="append", default=[],
                        help="a path under a hidden folder the command needs (repeatable)")
    parser.add_argument("--setenv", action="append", default=[], help="KEY=VALUE for the command")
    parser.add_argument("--outside", required=True,
                        help="the launcher's mount and net namespace ids, which this must not share")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = [c for c in args.command if c != "--"]
    if namespaces() == args.outside:  # never cover the launcher's own folders
        print("sandbox: not in namespaces of its own; refusing to start", file=sys.stderr)
        return 126
    private_view([*args.expose, args.home])
    loopback_up()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    env = {"PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin", "HOME": args.home,
           "FLWR_HOME": os.path.join(args.home, ".flwr"), "TMPDIR": args.home,
           "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "LANG": "C.UTF-8",
           "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1",
           **dict(item.split("=", 1) for item in args.setenv)}
    child = os.fork()
    if child == 0:
        try:
            listener.close()
            os.chdir(args.home)
            limit(args.memory, args.cpu, args.processes, args.file_size)
            become(args.uid)
            os.execve(command[0], [*command, "--runtime-api-address", f"127.0.0.1:{port}"], env)
        except BaseException as ex:
            print(f"sandbox: cannot start {command[0]}: {ex!r}", file=sys.stderr, flush=True)
        finally:
            os._exit(127)
    limit(2**31, args.cpu, args.processes, 0)
    become(args.uid)
    threading.Thread(target=_bridge, args=(listener, args.socket), daemon=True).start()
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
