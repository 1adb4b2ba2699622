"""Combo values of the sampling nodes (kept free of imports so node modules load cheaply)."""

# k_sampling's SAMPLER_NAMES / SCHEDULER_NAMES (ComfyUI's names and order), written out so that the
# node modules load without torch; tests/test_k_sampling.py checks the two stay equal.
SAMPLER_NAMES = [
    "euler",
    "euler_ancestral",
    "heun",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_heun",
    "dpmpp_3m_sde",
    "ddpm",
    "lcm",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
]
SCHEDULER_NAMES = [
    "simple",
    "sgm_uniform",
    "karras",
    "exponential",
    "ddim_uniform",
    "beta",
    "normal",
    "linear_quadratic",
    "kl_optimal",
]
SAMPLING_TYPES = ["eps", "v_prediction", "lcm", "x0"]
MAX_SEED = 0xFFFFFFFFFFFFFFFF

# ComfyUI's resampling choices (nodes.py / comfy_extras/nodes_post_processing.py, 0.3.64)
LATENT_UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
IMAGE_UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CROP_METHODS = ["disabled", "center"]
MAX_RESOLUTION = 16384
