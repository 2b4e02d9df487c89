"""Build script: metadata lives in setup.cfg; this file only adds the compiled CPU kernel.

The kernel is a torch C++ extension (``dinat_backbone._C``), built the way mmcv builds its ops:
``pip install --no-build-isolation -e .`` compiles it against the installed torch. Set
``DINAT_BUILD_EXT=0`` to skip it; the op then falls back to its pure-PyTorch path with one warning.
"""
import os

from setuptools import setup


def extensions():
    if os.environ.get("DINAT_BUILD_EXT", "1") == "0":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    here = os.path.dirname(os.path.abspath(__file__))
    src = os.path.join("dinat_backbone", "csrc")
    sources = sorted(os.path.join(src, f) for f in os.listdir(os.path.join(here, src)) if f.endswith(".cpp"))
    # -O3 and OpenMP; no -march=native, so the wheel runs on any x86-64 / aarch64 machine.
    # ISA-specific code paths are selected at run time inside the kernel.
    compile_args, link_args = ["-O3", "-fopenmp", "-ffp-contract=fast"], ["-fopenmp"]
    # DINAT_SANITIZE=address: an AddressSanitizer build for tools/asan_check.sh (`make asan`), which
    # loads it with libasan preloaded; never for an installed package.
    sanitize = os.environ.get("DINAT_SANITIZE", "")
    if sanitize:
        flags = [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g"]
        # -O1: builds in a third of the time; the sweep's cost is its float64 reference anyway
        compile_args = ["-O1" if a == "-O3" else a for a in compile_args] + flags
        link_args = link_args + flags
    ext = CppExtension("dinat_backbone._C", sources, extra_compile_args=compile_args, extra_link_args=link_args)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
