"""Cross-check the trainer's HPSv2 and ImageReward (training/reward_models.py) against the
authors' own scorers, `hpsv2.score` and `ImageReward.score`, at the real model sizes (OpenCLIP
ViT-H-14; BLIP ViT-L + BERT-base) with random weights. Nothing is downloaded.

Two steps in two Python environments (the authors' packages pin old dependencies; give them a
venv of their own: torch, `pip install hpsv2==1.2.0 open-clip-torch fairscale "transformers<5"
clint` and `pip install --no-deps image-reward==1.5`):

  1. <their venv>/bin/python benchmarks/crosscheck_reward_models.py package --out DIR
  2. python benchmarks/crosscheck_reward_models.py ours --out DIR        (this project's env)

Step 1 builds each model with its package (random init; biases and norms perturbed and
ImageReward's MLP head redrawn, so that the score depends on image and prompt), saves the
checkpoint in the layout the authors publish, writes test images (non-square ones, which each
scorer resizes its own way, and one at the input size) plus the tokenizer files our loaders
read, and records the package's scores. Step 2 loads the files with our loaders and prints the
largest difference per model. For ImageReward it also scores images pre-resized with PIL as the
package does, which isolates the 8-bit rounding of the package's PIL resize.
`--torchvision-without-ops`: for a torchvision wheel whose compiled ops do not match the
installed torch (PyPI's CUDA torchvision with a CPU torch); the scorers only use its transforms.
The hpsv2 1.2.0 wheel lacks the CLIP BPE file its tokenizer opens at import: copy
open_clip's `bpe_simple_vocab_16e6.txt.gz` into `hpsv2/src/open_clip/` (step 1 says so).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path

PROMPTS = ["a red circle on a blue square", "a photo of a cat", "green trees under a cloudy sky"]
SIZES = [(256, 320), (300, 240), (224, 224)]  # (height, width)
MED_CONFIG = {  # BERT-base with cross-attention to the ViT-L image tokens (ImageReward's med_config.json)
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30524,
    "encoder_width": 1024,
    "add_cross_attention": True,
}


def write_images(out: Path) -> list[str]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(SIZES):
        coarse = (rng.random((h // 16 + 1, w // 16 + 1, 3)) * 255).astype("uint8")
        Image.fromarray(coarse).resize((w, h), Image.BICUBIC).save(out / f"image{i}.png")
        paths.append(str(out / f"image{i}.png"))
    return paths


def perturb(model, generator) -> None:
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)


def package_imagereward(out: Path, paths: list[str], generator) -> dict:
    import torch
    import transformers
    from PIL import Image

    site = importlib.util.find_spec("ImageReward").submodule_search_locations[0]
    for name, sub in (("ImageReward", ""), ("ImageReward.models", "/models")):
        module = types.ModuleType(name)  # skip the package __init__s: they import the ReFL trainer's deps
        module.__path__ = [site + sub]
        sys.modules[name] = module
    folder = out / "imagereward"
    folder.mkdir(exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w for p in PROMPTS for w in p.split()})
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    # BLIP asks the hub for bert-base-uncased; give it the local vocabulary instead
    transformers.BertTokenizer.from_pretrained = classmethod(lambda cls, *a, **k: cls(str(folder / "vocab.txt")))
    (folder / "med_config.json").write_text(json.dumps(MED_CONFIG))
    from ImageReward.ImageReward import ImageReward

    model = ImageReward(str(folder / "med_config.json"), device="cpu").eval()
    perturb(model, generator)
    with torch.no_grad():
        for layer in model.mlp.layers:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0, layer.in_features**-0.5, generator=generator)
    torch.save(model.state_dict(), folder / "ImageReward.pt")
    with torch.no_grad():
        return {path: [float(model.score(prompt, Image.open(path))) for prompt in PROMPTS] for path in paths}


def package_hpsv2(out: Path, paths: list[str], generator) -> dict:
    import torch

    bpe = (
        Path(importlib.util.find_spec("hpsv2").submodule_search_locations[0])
        / "src/open_clip/bpe_simple_vocab_16e6.txt.gz"
    )
    if not bpe.is_file():
        import open_clip

        source = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
        sys.exit(f"the hpsv2 wheel lacks its tokenizer file: cp {source} {bpe}")
    import hpsv2.img_score as hps

    folder = out / "hpsv2"
    folder.mkdir(exist_ok=True)
    build = hps.create_model_and_transforms
    hps.create_model_and_transforms = lambda name, pretrained, **kw: build(name, None, **kw)  # no download
    model = build(
        "ViT-H-14",
        None,
        precision="fp32",
        device="cpu",
        jit=False,
        force_quick_gelu=False,
        force_custom_text=False,
        force_patch_dropout=False,
        force_image_size=None,
        pretrained_image=False,
        image_mean=None,
        image_std=None,
        light_augmentation=True,
        aug_cfg={},
        output_dict=True,
        with_score_predictor=False,
        with_region_predictor=False,
    )[0]
    perturb(model, generator)
    checkpoint = folder / "HPS_v2_compressed.pt"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    del model
    (folder / bpe.name).write_bytes(bpe.read_bytes())  # step 2 turns it into CLIPTokenizer's two files
    return {path: [float(hps.score(path, prompt, cp=str(checkpoint))[0]) for prompt in PROMPTS] for path in paths}


def run_package(out: Path, models: list[str], without_ops: bool) -> None:
    import torch

    if without_ops:
        torch.library.register_fake = lambda *a, **k: lambda f: f
    out.mkdir(parents=True, exist_ok=True)
    paths = write_images(out)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    scores = {}
    for name in models:
        scores[name] = (package_imagereward if name == "imagereward" else package_hpsv2)(out, paths, generator)
        print(f"{name}: package scores written")
    (out / "package_scores.json").write_text(json.dumps({"prompts": PROMPTS, "scores": scores}, indent=1))


def pil_resized_like_imagereward(path: str):
    """The image after torchvision's Resize(224) on a PIL image (shorter side 224, 8-bit)."""
    import numpy as np
    import torch
    from PIL import Image

    image = Image.open(path).convert("RGB")
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_long = int(224 * long / short)
    size = (224, new_long) if w <= h else (new_long, 224)
    image = image.resize(size, Image.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)


def write_clip_bpe_files_from_open_clip(folder: Path) -> None:
    """open_clip's BPE file as CLIPTokenizer's vocab.json + merges.txt (the same vocabulary)."""
    import gzip

    from lcm_accel.fixtures.tokenizer import write_clip_bpe_files

    lines = gzip.open(folder / "bpe_simple_vocab_16e6.txt.gz").read().decode("utf-8").split("\n")
    write_clip_bpe_files(folder, lines[1 : 49152 - 256 - 2 + 1])


def run_ours(out: Path) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from lcm_accel.training.rewards import load_reward

    recorded = json.loads((out / "package_scores.json").read_text())
    prompts = recorded["prompts"]
    for name, per_image in recorded["scores"].items():
        folder = out / name
        if name == "hpsv2":
            write_clip_bpe_files_from_open_clip(folder)
        model_file = folder / ("ImageReward.pt" if name == "imagereward" else "HPS_v2_compressed.pt")
        reward = load_reward(name, str(model_file), str(folder))
        worst = worst_pil = 0.0
        for path, theirs in per_image.items():
            image = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(
                2, 0, 1
            )
            with torch.no_grad():
                ours = reward(image[None].repeat(len(prompts), 1, 1, 1), prompts)
            gap = float((ours - torch.tensor(theirs)).abs().max())
            worst = max(worst, gap)
            line = f"  {Path(path).name} {tuple(image.shape[1:])}: package {[f'{v:.5f}' for v in theirs]} ours {[f'{v:.5f}' for v in ours.tolist()]}"
            if name == "imagereward":
                with torch.no_grad():
                    pil = reward(pil_resized_like_imagereward(path)[None].repeat(len(prompts), 1, 1, 1), prompts)
                worst_pil = max(worst_pil, float((pil - torch.tensor(theirs)).abs().max()))
            print(line)
        spread = float(torch.tensor(list(per_image.values())).std())
        print(
            f"{name}: max |ours - package| = {worst:.2e} (scores spread, std {spread:.3f})"
            + (f"; on PIL-resized input {worst_pil:.2e}" if name == "imagereward" else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("side", choices=("package", "ours"))
    parser.add_argument("--out", required=True, type=Path, help="folder for checkpoints, images and scores")
    parser.add_argument("--models", default="hpsv2,imagereward", help="comma-separated (package side)")
    parser.add_argument("--torchvision-without-ops", action="store_true")
    args = parser.parse_args()
    if args.side == "package":
        run_package(args.out, args.models.split(","), args.torchvision_without_ops)
    else:
        run_ours(args.out)


if __name__ == "__main__":
    main()
