"""The embedded model (embedded/files, trained by `python -m lcm_accel.embedded.build`): its
files load as a user's SD1.5 checkpoint and LoRAs, the example workflows run on it, the scorer
reads the world. The papers' claims (pictures follow the prompt, the LCM-LoRA keeps that at 4
steps, the colour word steers the colour, the style LoRA survives the mixer) are measured by
benchmarks/bench_embedded_claims.py: the shipped model is undertrained (a 48-minute build on a busy
2-core CPU: the teacher gets shape and colour right for ~12 % of prompts, chance is 4 %), so tests
at the issue's target levels would fail today; they come back with a better-trained model."""
from __future__ import annotations

import pytest
import torch

from lcm_accel.embedded import RESOLUTION
from lcm_accel.embedded.evaluate import EmbeddedPipeline, eval_scenes
from lcm_accel.embedded.world import Scene, caption, render_batch, scenes

SEED = 7  # not a seed the build's score sheet used


@pytest.fixture(scope="module")
def pipeline():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # much faster on a busy 2-core machine, and deterministic
    yield EmbeddedPipeline()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompts():
    return eval_scenes(24, seed=99)


def test_world_is_deterministic_and_captioned():
    first, second = scenes(8, 3), scenes(8, 3)
    assert first == second
    assert torch.equal(render_batch(first), render_batch(second))
    assert caption(Scene("circle", "orange", "top left", "white")) == "an orange circle on a white background, top left"
    circle = [Scene("circle", "red", "center", "white")]
    plain, outlined = render_batch(circle), render_batch(circle, "outlined")
    assert plain.shape == (1, 3, 64, 64) and (plain != outlined).any()
    assert outlined[:, :, 32, 32].tolist() == plain[:, :, 2, 2].tolist()  # hollow: the background shows inside


def test_shipped_files_load_as_a_users_sd15_checkpoint(pipeline):
    assert pipeline.model.family == "sd15" and pipeline.model.prediction_type == "epsilon"
    assert pipeline.clip.text_encoders[0].config.vocab_size == 49408  # CLIP's vocabulary, the pack's tokenizer
    assert len(pipeline.vae.vae.config.block_out_channels) == 4  # KL-f8
    assert pipeline.lcm_lora.unet and pipeline.style_lora.unet


def test_scorer_reads_the_world(pipeline):
    items = scenes(48, 5)
    read = pipeline.read(render_batch(items))
    assert sum(v.matches(s) for v, s in zip(read, items)) >= 45
    hollow = [s for s in items if s.shape != "cross"]  # a cross's arms are thinner than the outline: it stays filled
    assert sum(v.style == "outlined" for v in pipeline.read(render_batch(hollow, "outlined"))) >= 0.9 * len(hollow)



def test_style_mixer_workflow_runs_on_the_embedded_files(pipeline, prompts, tmp_path):
    from lcm_accel.embedded.demo import PACK_ROOT, read_png, run_workflow
    from lcm_accel.embedded.models_dir import write_embedded_models_dir

    root = write_embedded_models_dir(tmp_path / "models_root", sdxl=False)
    # the real workflow: CheckpointLoader -> LCMAdapterMixer (LCM 1.0 + style 0.8) -> LCM sampler, at 64 px
    path, _ = run_workflow(PACK_ROOT / "workflows" / "lcm_lora_style_mixer.json", root, tmp_path / "out",
                           caption(prompts[0]), SEED, {})
    image = read_png(path)
    assert image.shape == (1, 3, RESOLUTION, RESOLUTION)
    same = pipeline.sample(prompts[:1], SEED, 4, lcm=1.0, style=0.8).images  # the mixer's patch, called directly
    assert (image - same).abs().max() <= 2 / 255  # PNG rounding
