"""The official checkpoints' URLs (SHI Labs)."""

_BASE_URL = "https://shi-labs.com/projects/dinat/checkpoints"
CHECKPOINT_URLS = {
    "dinat_mini_in1k_224": f"{_BASE_URL}/imagenet1k/dinat_mini_in1k_224.pth",
    "dinat_tiny_in1k_224": f"{_BASE_URL}/imagenet1k/dinat_tiny_in1k_224.pth",
    "dinat_small_in1k_224": f"{_BASE_URL}/imagenet1k/dinat_small_in1k_224.pth",
    "dinat_base_in1k_224": f"{_BASE_URL}/imagenet1k/dinat_base_in1k_224.pth",
    "dinat_large_in22k_in1k_224": f"{_BASE_URL}/imagenet1k/dinat_large_in22k_in1k_224.pth",
    "dinat_large_in22k_in1k_384": f"{_BASE_URL}/imagenet1k/dinat_large_in22k_in1k_384.pth",
    "dinat_large_in22k_224": f"{_BASE_URL}/imagenet22k/dinat_large_in22k_224.pth",
    # DiNAT_s (names as in the authors' classification/dinats.py and detection / segmentation configs)
    "dinat_s_tiny_in1k_224": f"{_BASE_URL}/imagenet1k/dinat_s_tiny_in1k_224.pth",
    "dinat_s_small_in1k_224": f"{_BASE_URL}/imagenet1k/dinat_s_small_in1k_224.pth",
    "dinat_s_base_in1k_224": f"{_BASE_URL}/imagenet1k/dinat_s_base_in1k_224.pth",
    "dinat_s_large_in1k_224": f"{_BASE_URL}/imagenet1k/dinat_s_large_in1k_224.pth",
    "dinat_s_large_in1k_384": f"{_BASE_URL}/imagenet1k/dinat_s_large_in1k_384.pth",
    "dinat_s_large_in22k_224": f"{_BASE_URL}/imagenet22k/dinat_s_large_in22k_224.pth",
}
# NAT (every dilation 1), as listed in the README (CLS = ImageNet-1k classification)
CHECKPOINT_URLS.update({f"nat_{arch}_in1k_224": f"https://shi-labs.com/projects/nat/checkpoints/CLS/nat_{arch}.pth"
                        for arch in ("mini", "tiny", "small", "base")})

# the ImageNet-1k checkpoint of each (family, arch): what a model of that size should load
_IN1K_NAMES = {
    "DiNAT": {"mini": "dinat_mini_in1k_224", "tiny": "dinat_tiny_in1k_224", "small": "dinat_small_in1k_224",
              "base": "dinat_base_in1k_224", "large": "dinat_large_in22k_in1k_224"},
    "NAT": {arch: f"nat_{arch}_in1k_224" for arch in ("mini", "tiny", "small", "base")},
    "DiNAT_s": {"tiny": "dinat_s_tiny_in1k_224", "small": "dinat_s_small_in1k_224", "base": "dinat_s_base_in1k_224",
                "large": "dinat_s_large_in1k_224"},
}


def pretrained_url(model_name: str, arch: str):
    """The official ImageNet checkpoint URL for a model class name ('DiNAT', 'NAT', 'DiNAT_s'; the
    mm wrappers have the same names) and arch, or None when none is published."""
    name = _IN1K_NAMES.get(model_name, {}).get(arch)
    return CHECKPOINT_URLS[name] if name else None
