"""Run the tools/vmrun command inside the guest (stdlib only, Python 3).

Started by the guest's /init, chrooted into the host root, as
``python -I -S guest_exec.py CTLDIR``.  CTLDIR is the control share written
by tools/vmrun on the host:

  argv      the command, each argument followed by a NUL byte
  env       its environment, NAME=VALUE entries each followed by a NUL byte
  cwd       its working directory (bytes, no newline)
  out       where its output goes: "port:NAME", the virtio serial port NAME
            that qemu connects to vmrun's stdout, or a device path

It writes ``started`` just before the command starts (the host reads its
mtime for the boot time) and ``rc`` (decimal exit status; 128+N when killed
by signal N) when it ends.  stdout and stderr of the command share one pipe
whose bytes are copied unchanged to the output device (a virtio port is no
tty; a tty is set to raw mode so that it neither translates newlines nor
echoes).  A blocking write to a virtio port returns once the host has taken
the data, so nothing is lost at power-off.
"""
import errno
import os
import select
import sys

#: exit status when vmrun's own guest side fails (as `timeout` and docker do)
RC_HARNESS = 125


def read(ctl, name):
    """Bytes of control file *name*."""
    with open(os.path.join(ctl, name), "rb") as f:
        return f.read()


def nul_list(data):
    """Split NUL-terminated entries."""
    items = data.split(b"\0")
    if items and items[-1] == b"":
        items.pop()
    return items


def write_all(fd, data):
    """Write every byte of *data* to *fd*."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def spawn(argv, env):
    """Fork and exec *argv*; return (pid, read end of its stdout+stderr pipe).

    Raises OSError when the exec fails.  (os.fork + execvpe rather than
    subprocess: importing subprocess costs a third of a second under TCG.)
    """
    rfd, wfd = os.pipe()
    err_r, err_w = os.pipe()  # close-on-exec: empty at EOF means exec worked
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rfd)
            os.close(err_r)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(wfd, 1)
            os.dup2(wfd, 2)
            os.execvpe(argv[0], argv, env)
        except OSError as e:
            os.write(err_w, b"%d" % e.errno)
        finally:
            os._exit(127)
    os.close(wfd)
    os.close(err_w)
    failed = os.read(err_r, 32)
    os.close(err_r)
    if failed:
        os.waitpid(pid, 0)
        os.close(rfd)
        raise OSError(int(failed), os.strerror(int(failed)))
    return pid, rfd


def pump(src, dst, pid):
    """Copy *src* to *dst* until command *pid* has exited and *src* is dry.

    Returns the wait status of *pid*.
    """
    status = None
    while True:
        ready, _, _ = select.select([src], [], [], 0.2)
        if ready:
            chunk = os.read(src, 65536)
            if not chunk:
                break
            write_all(dst, chunk)
        elif status is not None:
            break  # a daemon kept the pipe open; the command itself is done
        else:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st  # one more pass drains what is already buffered
    if status is None:
        status = os.waitpid(pid, 0)[1]
    return status


def run(ctl, out):
    """Start the command; return its exit status."""
    argv = nul_list(read(ctl, "argv"))
    env = {}
    for item in nul_list(read(ctl, "env")):
        name, _, value = item.partition(b"=")
        env[name] = value
    cwd = read(ctl, "cwd")
    try:
        os.chdir(cwd)
    except OSError as e:
        write_all(out, b"vmrun: cannot enter %s in the guest: %s (the guest's /tmp and "
                  b"/run are empty tmpfs; use --share to make a host directory visible)\n"
                  % (cwd, e.strerror.encode()))
        return RC_HARNESS
    with open(os.path.join(ctl, "started"), "wb"):
        pass
    try:
        pid, src = spawn(argv, env)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            write_all(out, b"vmrun: command not found in the guest: %s\n" % argv[0])
            return 127
        write_all(out, b"vmrun: cannot run %s in the guest: %s\n"
                  % (argv[0], e.strerror.encode()))
        return 126
    status = pump(src, out, pid)
    os.close(src)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def output_device(spec):
    """Path of the output device named by control file "out"."""
    if not spec.startswith("port:"):
        return spec
    name = spec[len("port:"):]
    base = "/sys/class/virtio-ports"
    for port in sorted(os.listdir(base)):
        try:
            with open(os.path.join(base, port, "name")) as f:
                if f.read().strip() == name:
                    return "/dev/" + port
        except OSError:
            continue
    raise RuntimeError("no virtio port named %s in %s" % (name, base))


def main():
    """Entry point: run, record the status, drain the output device."""
    ctl = sys.argv[1]
    out = os.open(output_device(read(ctl, "out").decode()), os.O_RDWR | os.O_NOCTTY)
    if os.isatty(out):
        import tty
        tty.setraw(out)
    try:
        rc = run(ctl, out)
    except Exception as e:  # noqa: BLE001 - the host must get a status and a reason, not a hang
        write_all(out, ("vmrun: guest launcher failed: %r\n" % (e,)).encode())
        rc = RC_HARNESS
    if os.isatty(out):
        import termios
        termios.tcdrain(out)
    with open(os.path.join(ctl, "rc"), "w") as f:
        f.write("%d\n" % rc)
        f.flush()
        os.fsync(f.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
