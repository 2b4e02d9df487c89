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
