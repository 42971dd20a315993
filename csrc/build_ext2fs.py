"""cffi builder (API, out-of-line mode) for ``dmthin._ext2fs_ffi``, the
binding to e2fsprogs' libext2fs used by :mod:`dmthin.extfs`.

Used by setup.py (``cffi_modules``); the extension is ``optional`` so dmthin
still installs without ``ext2fs/ext2fs.h`` (Debian ``libext2fs-dev``) and
only the filesystem view says what is missing.  For a source checkout run
``python3 csrc/build_ext2fs.py`` to build ``dmthin/_ext2fs_ffi*.so`` in place.
"""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ("ext2fs_io.c", "ext2fs_ops.c", "ext2fs_data.c")


def _read(name: str) -> str:
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return f.read()


ffibuilder = FFI()
ffibuilder.cdef(_read("ext2fs.cdef"))
ffibuilder.set_source(
    "dmthin._ext2fs_ffi",
    "#include <stddef.h>\n#include <stdlib.h>\n#include <string.h>\n#include <errno.h>\n"
    "#include <ext2fs/ext2_fs.h>\n#include <ext2fs/ext2fs.h>\n#include <et/com_err.h>\n"
    + "".join(_read(name) for name in SOURCES),
    libraries=["ext2fs", "com_err"],
    extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
    optional=True,
)

if __name__ == "__main__":
    # Build in place: dmthin/_ext2fs_ffi.*.so next to the package sources.
    os.chdir(os.path.dirname(HERE))
    ffibuilder.compile(tmpdir=".", verbose=True)
