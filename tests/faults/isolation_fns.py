"""Row functions of the isolation tests: one row harms its worker, every row checks it.

``hazard`` does, on the rows listed in ``$ISO_ROWS``, the harm named by
``$ISO_MODE``, and on every row checks that nothing of an earlier row is left:
an empty working folder of its own, fds 1 and 2 captured, default signal
handlers, the environment, ``sys.path``, no stray thread. A leak fails the row
that sees it, so "exactly the harmful rows failed (or none)" is the promise.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

_KEEP: list[object] = []


def _harm(mode: str, row: int) -> None:
    if mode == "rmcwd":
        d = tempfile.mkdtemp()
        os.chdir(d)
        shutil.rmtree(d)
    elif mode == "tempdir":
        td = tempfile.TemporaryDirectory()
        os.chdir(td.name)
        del td  # collected: the folder goes, the row's cwd with it
    elif mode == "rmfolder":
        shutil.rmtree(os.getcwd())
    elif mode == "rmscratch":
        shutil.rmtree(os.environ["LOCALBATCH_SCRATCH"])
    elif mode == "files":
        with open("left.txt", "w") as fh:
            fh.write("x")
        os.mkdir("sub")
    elif mode == "closefd":
        os.close(1)
        os.close(2)
    elif mode == "dupfd":
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
    elif mode == "signals":
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda *a: None)
        signal.alarm(1)  # would kill the worker a second later
    elif mode == "environ":
        os.environ["ISO_POISON"] = "1"
        os.environ.pop("HOME", None)
    elif mode == "syspath":
        sys.path.insert(0, "/iso-poison")
    elif mode == "stdout":
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - left open on purpose
    elif mode == "thread":
        threading.Thread(target=threading.Event().wait, name="iso-left", daemon=False).start()
    elif mode == "child":
        proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
        _note_pid(proc.pid)
    elif mode == "grandchild":
        # A shell that leaves a daemonised sleep behind in its own session and exits.
        out = subprocess.run(["sh", "-c", "setsid sleep 300 >/dev/null 2>&1 & echo $!"],
                             capture_output=True, text=True, check=True).stdout
        _note_pid(int(out.strip()))
    elif mode == "closerange":  # as daemonising code does: the worker's own fds too
        os.closerange(3, 4096)
    elif mode == "umask":
        os.umask(0o777)
    elif mode == "setuid":  # cannot be undone: the worker retires
        os.setgroups([])
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
    elif mode == "interpreter":
        import gc

        sys.setrecursionlimit(60)
        gc.disable()
        sys.setprofile(lambda *a: None)
    elif mode == "cchdir":  # C code: no audit event, no wrapper sees it
        import ctypes

        ctypes.CDLL(None).chdir(b"/")


def _note_pid(pid: int) -> None:
    _note(f"pid-{pid}")


def _note(name: str) -> None:
    folder = os.environ.get("FAULT_LOG")
    if folder:
        with open(os.path.join(folder, name), "w"):
            pass


def _check(row: int) -> None:
    here = os.getcwd()
    assert here.startswith(os.environ["LOCALBATCH_SCRATCH"]), here
    assert not os.listdir("."), f"cwd {here} not empty: {os.listdir('.')}"
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert "ISO_POISON" not in os.environ and "HOME" in os.environ
    assert "/iso-poison" not in sys.path
    if os.environ.get("ISO_MODE") != "thread":  # the rest of its chunk runs beside it
        assert not [t for t in threading.enumerate() if t.name == "iso-left"]
    with open("/proc/self/status") as fh:  # reading the umask without setting it
        assert "Umask:\t0777" not in fh.read()
    import gc

    assert sys.getrecursionlimit() > 60 and gc.isenabled() and sys.getprofile() is None
    print(f"py{row}")
    os.write(1, f"fd1-{row}\n".encode())
    os.write(2, f"fd2-{row}\n".encode())


def hazard(a, b):
    row = int(a)
    _check(row)
    if str(row) in os.environ.get("ISO_ROWS", "").split(","):
        # Said on the console, not in a file: writing a file would itself make the
        # fast loop check this row, and the fast loop is what is tested.
        print(f"harm-{os.environ.get('LOCALBATCH_WATCH_ROWS', '')}")
        _harm(os.environ["ISO_MODE"], row)
    return a * 2 + b


def fd_writer(a, b):
    """Writes its own index to fd 1 and fd 2 (and, every 7th row, through C's printf)."""
    row = int(a)
    os.write(1, f"<o{row}>".encode())
    os.write(2, f"<e{row}>".encode())
    if row % 7 == 0:
        import ctypes

        ctypes.CDLL(None).printf(f"<c{row}>".encode())
    return a


def fd_binary(a, b):
    """Writes its own index to fd 1; row 1500 starts its output with the byte 0xFF."""
    row = int(a)
    os.write(1, (b"\xff" if row == 1500 else b"") + f"<o{row}>".encode())
    return a


def vector_fd(a, b):
    """Vectorised: writes the first row of each call to fd 1 (and fails on row 77)."""
    os.write(1, f"<v{int(a.iloc[0])}>".encode())
    if 77 in set(a.astype(int)):
        raise ValueError("row 77")
    return a * 2 + b


def hold_gil(a, b):
    """A catastrophic regex: holds the GIL for minutes (the owner is killed meanwhile)."""
    _note_pid(os.getpid())
    if b in (1, 2):  # a child in a session of its own
        proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
        _note_pid(proc.pid)
    if b == 2:
        time.sleep(300)  # GIL released
    re.match(r"(a+)+$", "a" * 40 + "b")
    return a


def slow_row(a, b):
    time.sleep(0.1)
    return a


def sleepy_child(a, b):
    """Starts a child in a session of its own, then sleeps (killed by row_timeout)."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    _note_pid(proc.pid)
    time.sleep(300)
    return a


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


def bad_str(a, b):
    if int(a) == 5:
        raise Unprintable()
    return a * 2 + b


def vector_hazard(a, b):
    """Vectorised (called with arrays, once per chunk): the first call deletes its cwd and
    pokes the environment; every call checks that nothing of an earlier call is left."""
    here = os.getcwd()
    assert not os.listdir("."), os.listdir(".")
    assert "ISO_POISON" not in os.environ and "/iso-poison" not in sys.path
    if list(a)[0] == 0:
        shutil.rmtree(here)
        os.environ["ISO_POISON"] = "1"
        sys.path.insert(0, "/iso-poison")
    return a * 2 + b


def reopens_stdout(a, b):
    """Writes its index to fd 1; rows 1500 and 2500 write through a fresh open of
    /dev/stdout ("w": truncates it), row 2000 through a shell's ``>`` redirection."""
    row = int(a)
    if row in (1500, 2500):
        with open("/dev/stdout", "w") as fh:
            fh.write(f"<r{row}>")
    elif row == 2000:
        subprocess.run(f"printf '<s{row}>' > /dev/stdout", shell=True, check=True)
    else:
        os.write(1, f"<o{row}>".encode())
    return a
