"""cffi builder (API, out-of-line mode) for ``dmthin._dm_ffi``, the binding
to libdevmapper.

Used by setup.py (``cffi_modules=["csrc/build_dm.py:ffibuilder"]``); the
extension is ``optional`` so dmthin still installs, simulator only, when
``libdevmapper.h`` is missing.  For a source checkout run
``python3 csrc/build_dm.py`` to build ``dmthin/_dm_ffi*.so`` in place.
"""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


def _read(name: str) -> str:
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return f.read()


ffibuilder = FFI()
ffibuilder.cdef(_read("dm.cdef"))
ffibuilder.set_source(
    "dmthin._dm_ffi",
    "#include <libdevmapper.h>\n" + _read("dm_shim.c"),
    libraries=["devmapper"],
    optional=True,
)

if __name__ == "__main__":
    # Build in place: dmthin/_dm_ffi.*.so next to the package sources.
    os.chdir(os.path.dirname(HERE))
    ffibuilder.compile(tmpdir=".", verbose=True)
