"""dmthin: device-mapper thin provisioning for Python.

The libdevmapper binding and the libext2fs binding (csrc/, cffi API mode) are
optional: without libdevmapper's header the package installs with the
simulator only and the kernel backend explains how to get it; without
libext2fs' (libext2fs-dev) the ext4 view (dmthin.extfs) says so.
DMTHIN_NO_EXT=1 skips both.
"""
import os

from setuptools import find_packages, setup

cffi_modules = []
_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
if not os.environ.get("DMTHIN_NO_EXT"):
    # libdevmapper (kernel backend) and libext2fs (the ext4 view, dmthin.extfs)
    # (and the metadata tools' hot loops, dmthin._tools_ffi: C++, optional)
    cffi_modules = [f"csrc/{name}.py:ffibuilder"
                    for name in ("build_dm", "build_ext2fs", "build_tools")
                    if os.path.exists(os.path.join(_CSRC, f"{name}.py"))]

setup(
    name="dmthin",
    version="0.1.0",
    description="Device-mapper thin provisioning: real and simulated thin pools, "
                "thin metadata tools",
    long_description=open("README.md").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["dmthin", "dmthin.*"]),
    package_data={"dmthin": ["py.typed"]},     # typed (PEP 561)
    setup_requires=["cffi>=1.15"],
    cffi_modules=cffi_modules,
    install_requires=[
        "cffi>=1.15",      # the libdevmapper and libext2fs bindings (API mode)
        "crc32c>=2.3",     # C-backed (SSE4.2) CRC-32C: every metadata block is checksummed
        "psutil>=5.9",     # mounts and holders before removing a device
        "pyudev>=0.24",    # waiting for device nodes when udevd runs
        "tqdm>=4.60",      # progress bars on long dumps, checks, restores, writes
    ],
    extras_require={
        # hypothesis: random operation sequences checked against models
        # (matplotlib too: the tests check the replay's plot); mypy and ruff:
        # tools/test type-checks dmthin/ (strict) and lints dmthin/, tests/ and
        # tools/ before the tests, with the stubs of the libraries that have them
        "test": ["pytest>=7", "hypothesis>=6.80", "matplotlib>=3.6", "mypy>=1.10",
                 "ruff>=0.6", "types-tqdm", "types-psutil", "types-cffi"],
        # matplotlib: the replay's usage plot (PNG)
        "plot": ["matplotlib>=3.6"],
    },
    entry_points={"console_scripts": [
        "dmthin = dmthin.cli.main:main",
        # named like thin-provisioning-tools' programs, for LVM's thin_*_executable
        *(f"dmthin-{tool} = dmthin.cli.tool_scripts:{tool}" for tool in (
            "thin_check", "thin_repair", "thin_dump", "thin_restore", "thin_ls", "thin_delta",
            "thin_rmap", "thin_metadata_size", "thin_trim", "thin_metadata_pack",
            "thin_metadata_unpack")),
    ]},
    classifiers=["Operating System :: POSIX :: Linux", "Topic :: System :: Filesystems"],
)
