"""mmengine's DDP wrapper for CPU modules (gloo). Training infrastructure: registered in
``MODEL_WRAPPERS`` by :func:`dinat_backbone.mm.setup_training`; ``tools/train.py`` selects it for
distributed runs on machines without CUDA."""
from __future__ import annotations

from mmengine.model import MMDistributedDataParallel

__all__ = ["CPUDistributedDataParallel"]


class CPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` that also works for CPU modules (gloo).

    mmengine 0.10.7's runner always passes ``device_ids=[LOCAL_RANK]``; torch's DDP rejects
    ``device_ids`` for CPU modules. This drops them when the module lives on the CPU and is
    otherwise mmengine's wrapper unchanged.
    """

    def __init__(self, module, device_ids=None, **kwargs):
        on_cpu = all(p.device.type == "cpu" for p in module.parameters())
        if on_cpu:
            device_ids = None
            kwargs.pop("output_device", None)
        super().__init__(module=module, device_ids=device_ids, **kwargs)
