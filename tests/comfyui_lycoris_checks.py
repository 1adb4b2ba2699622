"""Run in ComfyUI's Python: apply each LyCORIS case of a bundle with ComfyUI's own loader and
calculate_weight (CPU, fp32 intermediate) and save the resulting weights and biases.

    python tests/comfyui_lycoris_checks.py COMFYUI_PATH BUNDLE OUT '{"strength": s, "names": [...]}'
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    checkout, bundle_path, out_path, options = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    sys.path.insert(0, checkout)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.lora
    import comfy.model_management  # noqa: F401  (device setup before the adapters run)
    from safetensors.torch import load_file, save_file

    bundle = load_file(bundle_path)
    out = {}
    for name in options["names"]:
        lora = {k[len("lora.") :]: v for k, v in bundle.items() if k.startswith(f"lora.{name}.")}
        to_load = {name: f"{name}.weight"}
        patches = comfy.lora.load_lora(lora, to_load, log_missing=False)
        for key in (f"{name}.weight", f"{name}.bias"):
            weight = bundle[key].clone().float()
            if key in patches:
                patch = (options["strength"], patches[key], 1.0, None, None)
                weight = comfy.lora.calculate_weight([patch], weight, key)
            out[key] = weight.contiguous()
    save_file(out, out_path)


if __name__ == "__main__":
    main()
