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
    ext = CppExtension(
        "dinat_backbone._C",
        sources,
        extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=fast"],
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
