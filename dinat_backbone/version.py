"""The package version and the oldest torch the core runs on (imported first by ``dinat_backbone``).

setup.cfg reads ``__version__`` from here (``version = attr: dinat_backbone.version.__version__``), so
the installed metadata and ``dinat_backbone.__version__`` are one string.
"""
import re

import torch

__version__ = "0.1.0"

#: The oldest torch the core runs on: the compiled kernel's op registration uses
#: ``torch.library.register_fake`` / ``register_autograd`` and the blocks
#: ``torch.is_autocast_enabled(device_type)``, all torch 2.4. setup.cfg's ``install_requires`` says the same.
MIN_TORCH = "2.4"


def torch_too_old(version: str):
    """The error message for a torch older than :data:`MIN_TORCH`, or None when ``version`` is new enough."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if found and tuple(map(int, found.groups())) >= tuple(map(int, MIN_TORCH.split("."))):
        return None
    return (f"dinat-backbone needs torch >= {MIN_TORCH} (torch.library.register_fake / register_autograd), "
            f"found torch {version}: pip install 'torch>={MIN_TORCH}' (or the CUDA build of your choice)")


if torch_too_old(torch.__version__):
    raise ImportError(torch_too_old(torch.__version__))
