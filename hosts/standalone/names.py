"""Combo values of the sampling nodes (kept free of imports so node modules load cheaply)."""

SAMPLER_NAMES = ["euler", "euler_ancestral", "dpmpp_2m", "lcm", "ddim"]
SCHEDULER_NAMES = ["normal", "karras", "exponential", "sgm_uniform", "simple"]
SAMPLING_TYPES = ["eps", "v_prediction", "lcm", "x0"]
MAX_SEED = 0xFFFFFFFFFFFFFFFF
