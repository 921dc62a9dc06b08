import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # the numpy reference in tests/reference.py
# No persistent compilation cache (flaxlstm's command keeps one in ~/.cache): each test
# compiles what it runs, in this process and in the processes it starts, as a new machine does.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "")

import jax  # noqa: E402

# The tests compare against float32/float64 numpy at 1e-5: on a GPU, JAX's default float32
# matrix products use TF32 (about 1e-3 relative), so ask for full float32 there.
jax.config.update("jax_default_matmul_precision", "highest")
