"""The compiled part of flaxlstm: the LSTM's time loop in C for the CPU (flaxlstm/native/),
with its XLA FFI handlers in C++ (the FFI's header comes with jaxlib: a build requirement).

Optional: it is built on x86-64 Linux only, and where it cannot be compiled there (no C
compiler, no glibc vector math) the package installs without it; every loop then runs on
jax.lax.scan and ``flaxlstm.native.why_not()`` says why. Everything else is in pyproject.toml.
"""

import os
import platform
import sys

import jaxlib
from setuptools import Extension, setup

# -march=x86-64: the library loads on every x86-64 CPU, whatever CPU builds it (a wheel built
# on one machine runs on another). The steps are compiled again for AVX2 + FMA and for
# AVX-512 inside the C file (#pragma GCC target), and the best the CPU runs is chosen when the
# library is loaded (flaxlstm/native/__init__.py).
# -ffast-math only while compiling (not linking, so the process's float modes are untouched):
# it lets gcc vectorise tanhf with glibc's vector math library.
# -fopenmp-simd: the `omp simd` loops only, no OpenMP runtime (threads are pthreads).
FLAGS = ["-O3", "-march=x86-64", "-mtune=generic", "-ffast-math", "-fopenmp-simd", "-pthread"]
LOOP = Extension(
    "flaxlstm.native._lstm_cpu",
    sources=["flaxlstm/native/_lstm_cpu.c", "flaxlstm/native/_lstm_cpu_ffi.cc"],
    depends=["flaxlstm/native/_lstm_cpu_steps.h"],
    include_dirs=[os.path.join(os.path.dirname(jaxlib.__file__), "include")],  # XLA's FFI
    # the jaxlib whose FFI header is compiled in (flaxlstm.native names it if jax refuses the loop)
    define_macros=[("FLAXLSTM_JAXLIB", f'"{jaxlib.__version__}"')],
    extra_compile_args=FLAGS,
    extra_link_args=["-pthread", "-lmvec", "-lm"],  # glibc's vector math (tanhf)
    optional=True,
)
ON_X86_64_LINUX = sys.platform == "linux" and platform.machine().lower() in ("x86_64", "amd64")

setup(ext_modules=[LOOP] if ON_X86_64_LINUX else [])
