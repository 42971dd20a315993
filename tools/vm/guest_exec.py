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
import os
import select
import subprocess
import sys
import termios
import tty

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


def pump(src, dst, proc):
    """Copy *src* to *dst* until the command has exited and *src* is dry."""
    exited = False
    while True:
        ready, _, _ = select.select([src], [], [], 0.2)
        if ready:
            chunk = os.read(src, 65536)
            if not chunk:
                return
            write_all(dst, chunk)
        elif exited:
            return  # a daemon kept the pipe open; the command itself is done
        elif proc.poll() is not None:
            exited = True  # one more pass drains what is already buffered


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
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except FileNotFoundError:
        write_all(out, b"vmrun: command not found in the guest: %s\n" % argv[0])
        return 127
    except PermissionError:
        write_all(out, b"vmrun: command not executable in the guest: %s\n" % argv[0])
        return 126
    pump(proc.stdout.fileno(), out, proc)
    rc = proc.wait()
    return 128 - rc if rc < 0 else rc


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
        tty.setraw(out)
    try:
        rc = run(ctl, out)
    except Exception as e:  # the host must get a status and a reason, not a hang
        write_all(out, ("vmrun: guest launcher failed: %r\n" % (e,)).encode())
        rc = RC_HARNESS
    if os.isatty(out):
        termios.tcdrain(out)
    with open(os.path.join(ctl, "rc"), "w") as f:
        f.write("%d\n" % rc)
        f.flush()
        os.fsync(f.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
