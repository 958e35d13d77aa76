"""Builds the Cython DSP core (csrc/*.pyx) into pipeline._dsp.

`pip install .` and `pip install -e .` both run this; nothing else is needed on a machine with a C compiler.
"""

import os
import platform

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup


def _march() -> list[str]:
    """AVX2+FMA (x86-64-v3) when the building CPU has them, else the compiler's default.

    The extension is compiled on the machine that runs it (pip install), so probing the build CPU is right;
    DSP_MARCH overrides it (e.g. DSP_MARCH=x86-64-v2 for a wheel meant for older CPUs).
    """
    if "DSP_MARCH" in os.environ:
        return [f"-march={os.environ['DSP_MARCH']}"] if os.environ["DSP_MARCH"] else []
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return []
    return ["-march=x86-64-v3"] if {"avx2", "fma", "bmi2", "f16c", "movbe", "abm"} <= set(flags) else ["-march=x86-64-v2"]


extensions = [
    Extension(
        "pipeline._dsp",
        ["csrc/_dsp.pyx"],
        include_dirs=[np.get_include()],
        # -O3 lets gcc vectorise the FIR dot products (see _march for the instruction set). -ffast-math is deliberately NOT used so that
        # results stay bit-identical however the input is chunked.
        extra_compile_args=["-O3", *_march()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level="3",
        compiler_directives={
            # indices are checked by the Python facade before entering the kernel
            "boundscheck": False,
            "wraparound": False,
            # we divide only by validated, non-zero constants
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
