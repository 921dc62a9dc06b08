"""The compiled part of flaxlstm: the LSTM's time loop in C for the CPU (flaxlstm/native.py),
with its XLA FFI handlers in C++ (the FFI's header comes with jaxlib: a build requirement).

Optional: where it cannot be compiled (no C compiler, no glibc vector math), the package
installs without it and every loop runs on jax.lax.scan. Everything else is in pyproject.toml.
"""

import os

import jaxlib
from setuptools import Extension, setup

# -march=native: built for the CPU it is installed on (AVX-512 where there is one).
# -ffast-math only while compiling (not linking, so the process's float modes are untouched):
# it lets gcc vectorise expf and tanhf with glibc's vector math library.
LOOP = Extension(
    "flaxlstm._lstm_cpu",
    sources=["flaxlstm/_lstm_cpu.c", "flaxlstm/_lstm_cpu_ffi.cc"],
    include_dirs=[os.path.join(os.path.dirname(jaxlib.__file__), "include")],  # XLA's FFI
    # -fopenmp-simd: the `omp simd` loops only, no OpenMP runtime (threads are pthreads).
    extra_compile_args=["-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-pthread"],
    extra_link_args=["-pthread", "-lmvec", "-lm"],  # glibc's vector math (expf, tanhf)
    optional=True,
)

setup(ext_modules=[LOOP])
