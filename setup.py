"""Builds the Cython DSP core (csrc/*.pyx) into pipeline._dsp.

`pip install .` and `pip install -e .` both run this; nothing else is needed on a machine with a C compiler.
"""

import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "pipeline._dsp",
        ["csrc/_dsp.pyx"],
        include_dirs=[np.get_include()],
        # -O3 lets gcc vectorise the FIR dot products; x86-64-v3 = AVX2 + FMA (the target machines have it;
        # set DSP_MARCH=x86-64-v2 to build for older CPUs). -ffast-math is deliberately NOT used so that
        # results stay bit-identical however the input is chunked.
        extra_compile_args=["-O3", f"-march={os.environ.get('DSP_MARCH', 'x86-64-v3')}"],
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
